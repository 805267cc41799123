"""A tiny loss curve: a QWidget painting a polyline (no plotting library)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QSize
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot"]


class LossPlot(QWidget):
    """Loss against step, log-scaled when the range is wide; ``add(step, loss)``, ``clear()``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.setMinimumHeight(70)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss (cross-entropy on the painted pixels) per step")

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(240, 90)

    def clear(self) -> None:
        self.steps.clear()
        self.losses.clear()
        self.update()

    def add(self, step: int, loss: float) -> None:
        if loss is None or not math.isfinite(loss):
            return
        self.steps.append(int(step))
        self.losses.append(float(loss))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        try:
            p.setRenderHint(QPainter.RenderHint.Antialiasing)
            w, h = self.width(), self.height()
            fg = self.palette().text().color()
            p.fillRect(0, 0, w, h, QColor(0, 0, 0, 40))
            left, right, top, bottom = 6, 6, 16, 6
            pw, ph = max(w - left - right, 1), max(h - top - bottom, 1)
            if not self.losses:
                p.setPen(fg)
                p.drawText(6, 12, "loss: no training yet")
                return
            vals = self.losses
            lo, hi = min(vals), max(vals)
            use_log = lo > 0 and hi / lo > 20
            f = (lambda v: math.log10(v)) if use_log else (lambda v: v)
            flo, fhi = f(lo), f(hi)
            span = (fhi - flo) or 1.0
            s0, s1 = self.steps[0], self.steps[-1]
            sspan = (s1 - s0) or 1
            n = len(vals)
            stride = max(1, n // (2 * pw))
            pts = QPolygonF()
            for i in range(0, n, stride):
                x = left + pw * (self.steps[i] - s0) / sspan
                y = top + ph * (1.0 - (f(vals[i]) - flo) / span)
                pts.append(QPointF(x, y))
            if (n - 1) % stride:
                pts.append(QPointF(left + pw, top + ph * (1.0 - (f(vals[-1]) - flo) / span)))
            pen = QPen(QColor("#ffd500"))
            pen.setWidthF(1.5)
            p.setPen(pen)
            p.drawPolyline(pts)
            p.setPen(fg)
            scale = " (log)" if use_log else ""
            p.drawText(6, 12, f"loss {vals[-1]:.4g} at step {self.steps[-1]}  [{lo:.3g}..{hi:.3g}]{scale}")
        finally:
            p.end()


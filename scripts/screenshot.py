"""Take a real screenshot of napari with the MPF trainer docked, after training on a sample.

Run under an X server (Xvfb gives Mesa GL), e.g.::

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/screenshot.py [--sample surface_defects]

Writes ``docs/screenshot.png`` (``viewer.screenshot(canvas_only=False)``: the whole window).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _wait(app, condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.02)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", default="surface_defects", choices=["surface_defects", "membrane_em"])
    ap.add_argument("--spec", default=None, help="network (default: the widget's)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the widget's)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="napari-mpf")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1000)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mpf", "MPF trainer")
    viewer.open_sample("napari-mpf", args.sample)
    if args.spec:
        widget.spec_combo.setCurrentText(args.spec)
    if args.steps:
        widget.steps_spin.setValue(args.steps)
    _wait(app, lambda: widget.engine_ready, args.timeout)  # the widget prepares the engine on open
    if widget.train() is None:
        print("could not start training:", widget.messages[-1:], file=sys.stderr)
        return 1
    t0 = time.monotonic()
    done = _wait(app, lambda: widget._train_worker is None and widget._predict_worker is None, args.timeout)
    if not done:
        widget.stop()
        _wait(app, lambda: widget._train_worker is None and widget._predict_worker is None, 60)
    print(f"trained in {time.monotonic() - t0:.1f} s: {widget.status.text()}")
    name = viewer.layers[0].name
    if f"{name} segmentation" in viewer.layers:
        viewer.layers[f"{name} segmentation"].visible = False
    viewer.reset_view()
    _wait(app, lambda: False, 1.0)  # let the canvas and the dock settle
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False, flash=False)
    print(f"wrote {args.out}")
    widget.close_workers()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

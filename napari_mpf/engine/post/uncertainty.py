"""Where the model is unsure: the margin between its two most likely classes, the region a user
should paint next (benchmarks/loop.py measures what strokes placed there are worth), and how much
of what the user painted the preview still gets wrong."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Uncertain", "least_certain", "uncertainty", "unlearned_share"]


def uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """``1 - (p_first - p_second)`` per pixel of ``(K, H, W)`` (or ``(K, Z, H, W)``) probabilities:
    0 where one class is certain, 1 where the two most likely classes tie. float32."""
    p = np.asarray(probabilities, np.float32)
    if p.ndim < 3 or p.shape[0] < 2:
        raise ValueError(f"expected (K, ..., H, W) probabilities of at least 2 classes, got shape {p.shape}")
    top2 = np.partition(p, p.shape[0] - 2, axis=0)[-2:]
    return (1.0 - (top2[1] - top2[0])).astype(np.float32)


@dataclass(frozen=True)
class Uncertain:
    """The least certain region: its centre ``(y, x)``, its mean uncertainty there (0..1) and the
    share of the image whose uncertainty is above one half."""

    y: int
    x: int
    value: float
    unsure_share: float


def least_certain(probabilities: np.ndarray, size: int = 15, painted: np.ndarray | None = None) -> Uncertain:
    """The centre of the ``size`` x ``size`` window of ``(K, H, W)`` probabilities with the highest mean
    uncertainty, leaving out pixels already ``painted`` (non-zero labels ``(H, W)``)."""
    u = uncertainty(probabilities)
    if u.ndim != 2:
        raise ValueError(f"expected (K, H, W) probabilities, got shape {np.shape(probabilities)}")
    smooth = ndi.uniform_filter(u, size=max(1, int(size)), mode="nearest")
    if painted is not None:
        smooth = np.where(np.asarray(painted) != 0, -1.0, smooth)
    y, x = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return Uncertain(int(y), int(x), float(max(smooth[y, x], 0.0)), float(np.mean(u > 0.5)))


def unlearned_share(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """The share of painted pixels (``labels`` ``(H, W)``: 0 unpainted, k = class k - 1; labels above
    ``K`` are left out) whose most likely class in ``(K, H, W)`` ``probabilities`` is not the painted
    one; ``None`` if nothing is painted. After four rounds of corrections the default network leaves
    a sixth to a third of them (benchmarks/README.md)."""
    lab = np.asarray(labels)
    p = np.asarray(probabilities)
    if p.ndim != 3 or lab.shape != p.shape[1:]:
        raise ValueError(f"expected (K, H, W) probabilities and (H, W) labels, got {p.shape} and {lab.shape}")
    painted = (lab > 0) & (lab <= p.shape[0])  # a label of no class of the model says nothing
    n = int(painted.sum())
    if n == 0:
        return None
    return float(np.count_nonzero(np.argmax(p, axis=0)[painted] + 1 != lab[painted]) / n)

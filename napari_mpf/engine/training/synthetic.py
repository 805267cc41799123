"""A synthetic two-texture image with a few painted strokes, generated in code (no files).

Blob-shaped regions of a high-frequency texture (class 2, "textured") lie on a smooth background
(class 1, "smooth") of nearly the same mean brightness, so a pixel's value alone says little: the
classifier has to look at its neighbourhood. A few short strokes per class play the part of a
user's annotation; ``truth`` holds the full answer for scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["SyntheticSample", "two_texture_sample"]


@dataclass
class SyntheticSample:
    """``image`` (H, W) float32 in about [0, 1]; ``truth`` (H, W) uint8 classes 1..2 everywhere;
    ``strokes`` (H, W) uint8 with 0 = unpainted and 1..2 on the painted pixels."""

    image: np.ndarray
    truth: np.ndarray
    strokes: np.ndarray
    class_names: tuple[str, ...] = ("smooth", "textured")


def _line(r0: float, c0: float, r1: float, c1: float) -> tuple[np.ndarray, np.ndarray]:
    n = int(max(abs(r1 - r0), abs(c1 - c0))) + 1
    t = np.linspace(0.0, 1.0, n)
    return np.round(r0 + t * (r1 - r0)).astype(int), np.round(c0 + t * (c1 - c0)).astype(int)


def two_texture_sample(
    shape: tuple[int, int] = (160, 160),
    *,
    seed: int = 0,
    blob_fraction: float = 0.4,
    strokes_per_class: int = 4,
    stroke_length: int = 30,
    stroke_width: int = 2,
) -> SyntheticSample:
    """Make a :class:`SyntheticSample` (deterministic for a given ``seed``).

    Regions: a smoothed random field thresholded so that about ``blob_fraction`` of the pixels are
    textured. Strokes: ``strokes_per_class`` random line segments per class, kept only where they
    lie at least 3 pixels inside their class's region (so the annotation is correct).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    if h < 16 or w < 16:
        raise ValueError(f"the synthetic sample needs at least 16x16 pixels, got {h}x{w}")
    field = ndi.gaussian_filter(rng.standard_normal((h, w)), sigma=min(h, w) / 12, mode="wrap")
    textured = field > np.quantile(field, 1.0 - blob_fraction)
    truth = np.where(textured, 2, 1).astype(np.uint8)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    smooth = 0.5 + 0.08 * np.sin(yy / h * 2.3 + 0.7) * np.cos(xx / w * 1.9)
    smooth = smooth + 0.04 * ndi.gaussian_filter(rng.standard_normal((h, w)), 4.0) / 0.07
    texture = 0.5 + 0.16 * rng.standard_normal((h, w))
    image = np.where(textured, texture, smooth) + 0.02 * rng.standard_normal((h, w))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)

    strokes = np.zeros((h, w), np.uint8)
    for k in (1, 2):
        inside = ndi.distance_transform_edt(truth == k) >= 3
        candidates = np.argwhere(inside)
        if len(candidates) == 0:
            continue
        for _ in range(strokes_per_class):
            r0, c0 = candidates[rng.integers(len(candidates))]
            angle = rng.uniform(0, np.pi)
            r1 = np.clip(r0 + stroke_length * np.sin(angle), 0, h - 1)
            c1 = np.clip(c0 + stroke_length * np.cos(angle), 0, w - 1)
            rr, cc = _line(r0, c0, r1, c1)
            for d in range(stroke_width):
                r = np.clip(rr + d, 0, h - 1)
                keep = inside[r, cc]
                strokes[r[keep], cc[keep]] = k
    return SyntheticSample(image, truth, strokes)

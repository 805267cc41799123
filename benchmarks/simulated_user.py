"""A simulated user who paints strokes as a person does: short, a few pixels wide, in the middle of
regions and along thin structures, never across a boundary; then corrects what the preview shows.

Used by ``benchmarks/loop.py``. ``truth`` arrays hold classes ``1..K`` on every pixel; stroke labels
follow the engine (0 = unpainted, ``c`` = class ``c``). Nothing here changes its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_mpf.engine.post.uncertainty import uncertainty

__all__ = ["Brush", "first_strokes", "correction_strokes", "STROKE_LENGTH", "STROKE_WIDTH"]

#: a stroke's length in pixels (drawn uniformly) and width: what a person paints with a small brush
STROKE_LENGTH = (12, 24)
STROKE_WIDTH = 3
_SPACING = 12  # a new stroke starts at least this far from the strokes of the same round
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


@dataclass(frozen=True)
class Brush:
    """How the user paints: each stroke's length in pixels (drawn uniformly from ``length``) and width."""

    length: tuple[int, int] = STROKE_LENGTH
    width: int = STROKE_WIDTH


def _middle(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The middle of ``mask``'s regions (pixels at >= 60% of the largest distance to the region's
    edge nearby: the centre line of a thin structure, a band around the medial axis of a wide
    region) and the distance to the edge."""
    dist = ndi.distance_transform_edt(mask)
    local = ndi.maximum_filter(dist, size=15)
    return mask & (dist >= np.maximum(1.0, 0.6 * local)), dist


def _walk(start: tuple[int, int], allowed: np.ndarray, length: int, rng: np.random.Generator) -> list:
    """A smooth path of up to ``length`` pixels through ``allowed`` from ``start``: each step goes to
    the unvisited 8-neighbour closest to the current heading (a hand does not zig-zag)."""
    h, w = allowed.shape
    angle = rng.uniform(0, 2 * np.pi)
    heading = np.array([np.sin(angle), np.cos(angle)])
    path = [start]
    seen = {start}
    y, x = start
    while len(path) < length:
        best, best_score = None, -0.3  # never turn back on itself
        for dy, dx in _NEIGHBOURS:
            q = (y + dy, x + dx)
            if not (0 <= q[0] < h and 0 <= q[1] < w) or q in seen or not allowed[q]:
                continue
            score = (dy * heading[0] + dx * heading[1]) / np.hypot(dy, dx) + rng.normal(0, 0.1)
            if score > best_score:
                best, best_score = q, score
        if best is None:
            break
        step = np.array([best[0] - y, best[1] - x], float)
        heading = 0.7 * heading + 0.3 * step / np.linalg.norm(step)
        heading /= np.linalg.norm(heading)
        y, x = best
        seen.add(best)
        path.append(best)
    return path


def _paint(out: np.ndarray, path: list, cls: int, inside: np.ndarray, width: int) -> int:
    """Paint ``path`` ``width`` pixels wide with ``cls`` where ``inside`` and still unpainted."""
    stroke = np.zeros(out.shape, bool)
    ys, xs = np.array(path).T
    stroke[ys, xs] = True
    stroke = ndi.binary_dilation(stroke, np.ones((width, width), bool)) & inside & (out == 0)
    out[stroke] = cls
    return int(stroke.sum())


def _stroke_at(out, truth, region, rng, pick_best: bool, keep_out: np.ndarray | None, brush: Brush) -> bool:
    """One stroke in the middle of ``region`` (pixels of one true class), painted with that class.
    ``pick_best``: start at the region's deepest pixel, else at a random pixel of its middle."""
    middle, dist = _middle(region)
    if keep_out is not None:
        middle &= ~keep_out
    if not middle.any():
        return False
    if pick_best:
        flat = np.flatnonzero(middle)
        top = flat[np.argsort(dist.ravel()[flat])[-5:]]
        start = np.unravel_index(int(rng.choice(top)), region.shape)
    else:
        start = np.unravel_index(int(rng.choice(np.flatnonzero(middle))), region.shape)
    cls = int(truth[start])
    length = int(rng.integers(brush.length[0], brush.length[1] + 1))
    path = _walk((int(start[0]), int(start[1])), middle, length, rng)
    if len(path) < 4:
        path = _walk((int(start[0]), int(start[1])), region, length, rng)
    # a stroke stays inside its class, away from the class edge where a brush would spill over
    inside = truth == cls
    if dist.max() > 2:
        inside &= ndi.distance_transform_edt(inside) >= 1.5
    return _paint(out, path, cls, inside, brush.width) > 0


def _away_from(labels: np.ndarray) -> np.ndarray:
    """Pixels within ``_SPACING`` of a painted pixel."""
    if not labels.any():
        return np.zeros(labels.shape, bool)
    return ndi.distance_transform_edt(labels == 0) < _SPACING


def first_strokes(truth: np.ndarray, per_class: int | Sequence[int], rng: np.random.Generator,
                  classes: list[int] | None = None, brush: Brush = Brush()) -> np.ndarray:
    """Round 1: ``per_class`` short strokes per class (or one count per class, in the order of
    ``classes``: a user who paints one class more than the other), each in the middle of a region of
    its class (spread over the image, a spacing apart)."""
    truth = np.asarray(truth)
    classes = classes or [int(c) for c in np.unique(truth)]
    counts = [int(per_class)] if np.isscalar(per_class) else [int(n) for n in per_class]
    counts = counts * len(classes) if len(counts) == 1 else counts
    if len(counts) != len(classes):
        raise ValueError(f"{len(counts)} stroke counts for {len(classes)} classes")
    out = np.zeros(truth.shape, np.uint8)
    for cls, count in zip(classes, counts, strict=True):
        region = truth == cls
        for _ in range(count):
            if not _stroke_at(out, truth, region, rng, pick_best=False, keep_out=_away_from(out), brush=brush):
                break
    return out


def correction_strokes(truth: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, n: int,
                       rng: np.random.Generator, place: str = "error", brush: Brush = Brush()) -> np.ndarray:
    """Rounds 2...: ``labels`` plus ``n`` strokes, each in the largest region still unpainted where
    the preview is wrong (``place="error"``: what a user sees on the segmentation) or where it is
    least certain (``place="uncertain"``: the plugin's uncertainty above 0.5, what its layer shows),
    painted with the true class there. Each stroke starts at the deepest point of its region and
    later strokes of the round keep a spacing from it."""
    truth = np.asarray(truth)
    out = np.array(labels, np.uint8, copy=True)
    if place == "error":
        target = (np.argmax(probabilities, axis=0) + 1) != truth
    elif place == "uncertain":
        target = ndi.uniform_filter(uncertainty(probabilities), 5) > 0.5
    else:
        raise ValueError(f"place must be 'error' or 'uncertain', got {place!r}")
    target &= out == 0
    painted_before = out.copy()
    for _ in range(n):
        candidates = target & ~_away_from(out != painted_before)
        comps, count = ndi.label(candidates, np.ones((3, 3), bool))
        if count == 0:
            break
        sizes = np.bincount(comps.ravel())[1:]
        region = comps == (int(np.argmax(sizes)) + 1)
        # the true class holding most of the region, restricted to it
        cls = int(np.bincount(truth[region]).argmax())
        if not _stroke_at(out, truth, region & (truth == cls), rng, pick_best=True, keep_out=None, brush=brush):
            target &= ~region
    return out

"""Defect counting: connected objects of one class's probability map, with a table per object.

An *object* is a connected component (8-connected by default) of the pixels whose probability is
at least ``threshold``, keeping components of at least ``min_area`` pixels. An image is flagged
"defect present" when it has at least ``min_count`` objects, or (if ``min_pixels`` is given) at
least ``min_pixels`` pixels inside kept objects (the paper's pixel-count rule). A ``(Z, Y, X)``
stack is counted slice by slice; object labels are unique over the whole stack.

No napari, no Qt: plain NumPy/SciPy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = ["FEATURE_COLUMNS", "ObjectCounts", "count_objects", "defect_present"]

#: Columns of :attr:`ObjectCounts.features`, in order.
FEATURE_COLUMNS = (
    "label",
    "slice",
    "area",
    "centroid_y",
    "centroid_x",
    "mean_probability",
    "max_probability",
)


@dataclass
class ObjectCounts:
    """Objects found in a probability map (2D) or stack (3D, per slice).

    ``labels``: int32, same shape as the input, 0 = no object, objects numbered 1..count.
    ``features``: column name -> 1D array, one row per object (see :data:`FEATURE_COLUMNS`);
    ``slice`` is 0 for 2D input. ``counts``/``pixels``/``present``: one entry per slice
    (a single entry for 2D input).
    """

    labels: np.ndarray
    features: dict[str, np.ndarray]
    counts: np.ndarray
    pixels: np.ndarray
    present: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Total number of objects."""
        return int(self.counts.sum())

    @property
    def defect_present(self) -> bool:
        """True if any slice is flagged."""
        return bool(self.present.any())

    def summary(self) -> dict:
        """Plain-Python summary (JSON-friendly), e.g. for layer metadata."""
        return {
            "count": self.count,
            "defect_present": self.defect_present,
            "counts_per_slice": [int(c) for c in self.counts],
            "pixels_per_slice": [int(p) for p in self.pixels],
            "defect_present_per_slice": [bool(p) for p in self.present],
            **self.params,
        }


def defect_present(count: int, pixels: int, min_count: int | None = 1, min_pixels: int | None = None) -> bool:
    """The image-level rule: ``count >= min_count`` or ``pixels >= min_pixels`` (None disables a rule)."""
    by_count = min_count is not None and min_count > 0 and count >= min_count
    by_pixels = min_pixels is not None and min_pixels > 0 and pixels >= min_pixels
    return bool(by_count or by_pixels)


def _slice_objects(
    prob: np.ndarray, threshold: float, min_area: int, structure: np.ndarray
) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
    """Label one 2D slice; returns (labels int32 1..n, n, per-object columns without label/slice)."""
    mask = prob >= threshold
    lab, n = ndimage.label(mask, structure=structure)
    if n == 0:
        empty = np.zeros(0, np.float64)
        return lab.astype(np.int32), 0, dict(
            area=np.zeros(0, np.int64), centroid_y=empty, centroid_x=empty,
            mean_probability=empty, max_probability=empty,
        )
    flat = lab.ravel()
    area = np.bincount(flat, minlength=n + 1)
    keep = area >= max(int(min_area), 1)
    keep[0] = False
    # relabel the kept components 1..m in their original (raster) order
    new_id = np.zeros(n + 1, np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    lab = new_id[lab]
    m = int(keep.sum())
    if m == 0:
        empty = np.zeros(0, np.float64)
        return lab, 0, dict(
            area=np.zeros(0, np.int64), centroid_y=empty, centroid_x=empty,
            mean_probability=empty, max_probability=empty,
        )
    flat = lab.ravel()
    p = prob.ravel().astype(np.float64)
    yy, xx = np.indices(prob.shape)
    area = np.bincount(flat, minlength=m + 1)[1:]
    cy = np.bincount(flat, yy.ravel(), minlength=m + 1)[1:] / area
    cx = np.bincount(flat, xx.ravel(), minlength=m + 1)[1:] / area
    mean_p = np.bincount(flat, p, minlength=m + 1)[1:] / area
    max_p = np.asarray(ndimage.maximum(p.reshape(prob.shape), lab, index=np.arange(1, m + 1)), np.float64)
    cols = dict(
        area=area.astype(np.int64), centroid_y=cy, centroid_x=cx,
        mean_probability=mean_p, max_probability=max_p,
    )
    return lab, m, cols


def count_objects(
    probability: np.ndarray,
    threshold: float = 0.5,
    min_area: int = 1,
    min_count: int | None = 1,
    min_pixels: int | None = None,
    connectivity: int = 2,
) -> ObjectCounts:
    """Connected objects of ``probability >= threshold`` with at least ``min_area`` pixels.

    ``probability``: ``(Y, X)`` or ``(Z, Y, X)`` map of one class (e.g. ``predict_proba(...)[k]``).
    ``connectivity``: 1 (4-connected) or 2 (8-connected). Stacks are counted per slice (objects
    never connect across slices). See the module docstring for the "defect present" rule.
    """
    prob = np.asarray(probability)
    if prob.ndim not in (2, 3):
        raise ValueError(f"expected a (Y, X) or (Z, Y, X) probability map, got shape {prob.shape}")
    if not np.issubdtype(prob.dtype, np.floating) and not np.issubdtype(prob.dtype, np.integer) and prob.dtype != bool:
        raise ValueError(f"expected a numeric probability map, got dtype {prob.dtype}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity}")
    if min_area < 1:
        min_area = 1
    stack = prob if prob.ndim == 3 else prob[None]
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels = np.zeros(stack.shape, np.int32)
    counts = np.zeros(len(stack), np.int64)
    pixels = np.zeros(len(stack), np.int64)
    present = np.zeros(len(stack), bool)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in FEATURE_COLUMNS}
    offset = 0
    for z, sl in enumerate(stack):
        lab, m, cols = _slice_objects(sl, threshold, min_area, structure)
        if m:
            labels[z] = np.where(lab > 0, lab + offset, 0)
        counts[z] = m
        pixels[z] = int(cols["area"].sum())
        present[z] = defect_present(m, int(pixels[z]), min_count, min_pixels)
        columns["label"].append(np.arange(offset + 1, offset + m + 1, dtype=np.int64))
        columns["slice"].append(np.full(m, z, np.int64))
        for name, values in cols.items():
            columns[name].append(values)
        offset += m
    features = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in columns.items()}
    params = dict(
        threshold=float(threshold), min_area=int(min_area),
        min_count=None if min_count is None else int(min_count),
        min_pixels=None if min_pixels is None else int(min_pixels),
    )
    return ObjectCounts(
        labels=labels if prob.ndim == 3 else labels[0],
        features=features,
        counts=counts,
        pixels=pixels,
        present=present,
        params=params,
    )

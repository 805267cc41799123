"""OME-Zarr (NGFF) images as input: one resolution level of a multiscale image, seen in this
package's layout (``(Z, C, H, W)`` with the axes that are present), with its physical scale.

The metadata is read with the ``ome-zarr`` library (NGFF 0.4 on zarr v2 and 0.5 on zarr v3). Axes
must come in NGFF order (``t``, ``c``, ``z``, ``y``, ``x``, the last two spatial); a time axis (or
any other non-spatial axis) must have length 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..network.inputs import InputError

__all__ = ["NgffInfo", "NgffView", "ngff_metadata", "open_ngff"]


@dataclass(frozen=True)
class NgffInfo:
    """What the output of an NGFF input keeps: the level read, the spatial axes ``("z", "y", "x")``
    or ``("y", "x")``, their units, and the level's scale and translation along them."""

    level: int
    spatial: tuple[str, ...]
    units: tuple[str | None, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]

    @classmethod
    def from_scale(cls, scale, translation) -> NgffInfo:
        """Geometry without a file (e.g. a napari layer's ``scale`` and ``translate``, 2 or 3 values)."""
        spatial = ("z", "y", "x")[-len(scale):]
        return cls(0, spatial, (None,) * len(spatial), tuple(float(v) for v in scale), tuple(float(v) for v in translation))


def ngff_metadata(group) -> dict | None:
    """The OME metadata of a zarr group (``attrs["ome"]`` in 0.5, the attributes in 0.4), or None when
    the group is not an OME-Zarr image (no ``multiscales``)."""
    attrs = dict(group.attrs)  # (not through ome-zarr: importing it costs ~50 MB for every plain store)
    meta = attrs.get("ome", attrs) if group.metadata.zarr_format == 3 else attrs
    return meta if isinstance(meta, dict) and meta.get("multiscales") else None


def _transform(transforms: list[dict] | None, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale, shift = np.ones(ndim), np.zeros(ndim)
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            scale = scale * np.asarray(t["scale"], float)
        elif t.get("type") == "translation" and "translation" in t:
            shift = shift + np.asarray(t["translation"], float)
    return scale, shift


class NgffView:
    """One level of an NGFF image as an array in this package's layout: axes ``z``, ``c`` (if present,
    with more than one channel), ``y``, ``x`` in that order, other axes (``t``) fixed at 0. Only what
    the readers use: ``shape``, ``dtype``, ``ndim``, ``size`` and indexing by ints and slices."""

    def __init__(self, array, axes: list[str], info: NgffInfo):
        self.array, self.axes, self.ngff = array, list(axes), info
        one_channel = "c" in axes and array.shape[axes.index("c")] == 1  # read as grayscale
        self.view_axes = [a for a in ("z", "c") if a in axes and not (a == "c" and one_channel)] + ["y", "x"]
        self.channels_first = "c" in self.view_axes
        self.dtype = array.dtype
        self.shape = tuple(int(array.shape[axes.index(a)]) for a in self.view_axes)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))

    def __getitem__(self, index) -> np.ndarray:
        index = () if index is Ellipsis else index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        by_axis = dict(zip(self.view_axes, index, strict=True))
        source = tuple(by_axis.get(a, 0) for a in self.axes)
        out = np.asarray(self.array[source])
        kept = [a for a in self.axes if a in by_axis and not isinstance(by_axis[a], (int, np.integer))]
        want = [a for a in self.view_axes if a in kept]
        return np.transpose(out, [kept.index(a) for a in want]) if kept != want else out

    def __array__(self, dtype=None, copy=None):
        out = self[()]
        return out.astype(dtype) if dtype is not None else out


def open_ngff(path: str | Path, group, meta: dict, level: int | None, role: str = "image") -> tuple[NgffView, str]:
    """Level ``level`` (default 0, the full resolution) of the NGFF image ``group`` (at ``path``),
    as an :class:`NgffView` and a name for messages. Invalid metadata or a level that does not exist
    raises :class:`InputError`."""
    import zarr
    from ome_zarr.axes import Axes
    from ome_zarr.format import format_from_version

    ms = meta["multiscales"][0]
    version = str(meta.get("version") or ms.get("version") or "0.4")
    try:
        fmt = format_from_version(version)
        axes = Axes(ms.get("axes"), fmt=fmt).to_list()
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{role} {path} is not a valid OME-Zarr image ({version}): {exc}") from None
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    units = {a["name"]: a.get("unit") for a in axes if isinstance(a, dict)}
    datasets = ms.get("datasets") or []
    level = 0 if level is None else int(level)
    if not 0 <= level < len(datasets):
        raise InputError(f"{role} {path}: --level {level} does not exist; the image has level(s) 0..{len(datasets) - 1}")
    if names[-2:] != ["y", "x"]:
        raise InputError(f"{role} {path}: the last two axes must be y and x (got {', '.join(names)})")
    ds = datasets[level]
    try:
        array = group[ds["path"]]
    except KeyError:
        raise InputError(f"{role} {path}: level {level} names the array '{ds['path']}', which the store does not hold") from None
    if not isinstance(array, zarr.Array) or array.ndim != len(names):
        raise InputError(f"{role} {path}: level {level} ('{ds['path']}') is not an array with the {len(names)} axes {', '.join(names)}")
    for a, n in zip(names, array.shape, strict=True):
        if a not in ("c", "z", "y", "x") and n != 1:
            raise InputError(f"{role} {path}: axis '{a}' has length {n}; only one time point (or index) can be read, "
                             "extract it first")
    scale, shift = _transform(ds.get("coordinateTransformations"), len(names))
    outer_scale, outer_shift = _transform(ms.get("coordinateTransformations"), len(names))
    scale, shift = scale * outer_scale, shift * outer_scale + outer_shift
    spatial = tuple(a for a in ("z", "y", "x") if a in names)
    pick = [names.index(a) for a in spatial]
    info = NgffInfo(level, spatial, tuple(units.get(a) for a in spatial),
                    tuple(float(scale[i]) for i in pick), tuple(float(shift[i]) for i in pick))
    return NgffView(array, names, info), f"{path} (OME-Zarr level {level})"

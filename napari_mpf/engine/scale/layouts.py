"""Where a :class:`~napari_mpf.engine.scale.run.ZarrPrediction` puts its arrays: the plain store
(``*.zarr``) or an OME-Zarr image (``*.ome.zarr``, NGFF 0.5 on zarr v3).

Plain store: ``probabilities`` ``(Z, K, H, W)``, ``segmentation`` ``(Z, H, W)``, and the bookkeeping
arrays ``class_pixels`` and ``counts`` at the top (:mod:`.store`).

OME-Zarr: the store is an NGFF image of the probabilities, axes ``c`` (one channel per class,
named in ``omero``), ``z`` (a stack only), ``y``, ``x``, levels ``0``, ``1``, … each half the size of
the one before; the segmentation is its ``labels/segmentation`` label image (``image-label`` colours
and the class names as ``properties``) with the same levels. Level ``L`` holds every ``2**L``-th
pixel of level 0 (nearest-neighbour downsampling, so labels stay labels, and every level is written
by the task that writes the full-resolution chunk: chunk sides are divisible by ``2**(levels - 1)``
and level ``L``'s chunks are ``2**L`` times smaller). Scale, translation and units come from an NGFF
input (with the crop and slice step applied), else 1 per pixel. The bookkeeping arrays live in the
``napari_mpf`` subgroup. The metadata is written by the ``ome-zarr`` library.

Labels of the input (a path ``<image>/labels/<name>`` inside the OME-Zarr image that is predicted):
the segmentation only, as the label image ``<name>`` of that image, with the image's levels and
their shapes (halvings of the rows and columns, rounded either way), in the image's zarr format
(NGFF 0.4 or 0.5); the image's own arrays are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.ngff import ngff_metadata
from ..io.read import is_zarr
from ..io.volume import Volume
from ..network.inputs import InputError
from ..post.colors import class_color, class_rgba

__all__ = ["PlainLayout", "OmeLayout", "LabelsLayout", "layout_for", "is_ome_path", "is_labels_path", "auto_levels", "OME_SUFFIX"]

OME_SUFFIX = ".ome.zarr"


@dataclass(frozen=True)
class PlainLayout:
    """The plain store: one array per output, the stack axis first."""

    kind: str = "zarr"
    prefix: str = ""  # of the bookkeeping arrays

    def create(self, g, shape: tuple[int, int, int, int], chunks: tuple[int, int], prob_dtype, seg_dtype,
               volume: Volume | None = None, class_names=()) -> None:
        z, k, h, w = shape
        cy, cx = chunks
        g.create_array("probabilities", shape=(z, k, h, w), chunks=(1, k, cy, cx), dtype=prob_dtype, fill_value=0,
                       dimension_names=("z", "class", "y", "x"))
        g.create_array("segmentation", shape=(z, h, w), chunks=(1, cy, cx), dtype=seg_dtype, fill_value=0,
                       dimension_names=("z", "y", "x"))

    def write(self, arrays, z: int, box: tuple, probs: np.ndarray, seg: np.ndarray) -> None:
        y0, y1, x0, x1 = box
        arrays("probabilities")[z, :, y0:y1, x0:x1] = probs
        arrays("segmentation")[z, y0:y1, x0:x1] = seg

    def probabilities(self, arrays, z: int, k: int) -> np.ndarray:
        return np.asarray(arrays("probabilities")[z, k])


def auto_levels(shape_hw: tuple[int, int], chunks: tuple[int, int], smallest: int = 256, most: int = 8) -> int:
    """Pyramid levels: halve while the larger side stays at least ``smallest`` and the chunks divide."""
    n = 1
    while n < most and all(c % 2**n == 0 for c in chunks) and max(shape_hw) >> n >= smallest:
        n += 1
    return n


def _geometry(volume: Volume, stack: bool) -> tuple[list[dict], list[float], list[float]]:
    """Spatial NGFF axes (with units), scale and translation of level 0 of an output of ``volume``."""
    names = ("z", "y", "x") if stack else ("y", "x")
    info = getattr(volume, "ngff", None)
    scale = {a: 1.0 for a in names}
    shift = {a: 0.0 for a in names}
    units: dict = {}
    if info is not None:
        for a, s, t, u in zip(info.spatial, info.scale, info.translation, info.units, strict=True):
            scale[a], shift[a], units[a] = s, t, u
    oy, ox = volume.origin
    shift["y"] += oy * scale["y"]
    shift["x"] += ox * scale["x"]
    if stack:
        idx = list(volume.indices)
        steps = set(np.diff(idx).tolist())
        if len(steps) > 1:
            raise InputError("an OME-Zarr output needs evenly spaced slices (e.g. --slices 0:100:2), "
                             f"got {idx[:6]}{'…' if len(idx) > 6 else ''}; write a plain .zarr store instead")
        shift["z"] += idx[0] * scale["z"]
        scale["z"] *= steps.pop() if steps else 1
    axes = [{"name": a, "type": "space", **({"unit": units[a]} if units.get(a) else {})} for a in names]
    return axes, [scale[a] for a in names], [shift[a] for a in names]


def _datasets(volume: Volume, stack: bool, levels: int, channel: bool) -> tuple[list[dict], list[dict]]:
    """``(axes, datasets)`` of the multiscales metadata: level ``L`` is ``2**L`` times coarser in y, x."""
    axes, scale, shift = _geometry(volume, stack)
    c_scale, c_shift = ([1.0], [0.0]) if channel else ([], [])
    datasets = [{"path": str(lv), "coordinateTransformations": [
        {"type": "scale", "scale": c_scale + [v * (2**lv if a["name"] in "yx" else 1) for a, v in zip(axes, scale, strict=True)]},
        {"type": "translation", "translation": c_shift + shift},
    ]} for lv in range(levels)]
    return ([{"name": "c", "type": "channel"}] if channel else []) + axes, datasets


def _label_metadata(labels_group, label_group, name: str, class_names) -> None:
    """Make ``label_group`` (``labels_group[name]``) an NGFF label image: class colours and names,
    listed once in the ``labels`` of ``labels_group`` (what ome-zarr's ``write_label_metadata``
    writes, through the group objects the caller goes on using)."""
    from ome_zarr.writer import add_metadata, check_format, get_metadata

    fmt = check_format(label_group)
    add_metadata(label_group, {"image-label": {
        "colors": [{"label-value": i + 1, "rgba": class_rgba(i + 1)} for i in range(len(class_names))],
        "properties": [{"label-value": i + 1, "class": str(n)} for i, n in enumerate(class_names)],
        "source": {"image": "../../"},
        "version": fmt.version,
    }}, fmt=fmt)
    listed = list(get_metadata(labels_group).get("labels", []))
    add_metadata(labels_group, {"labels": listed + ([name] if name not in listed else [])}, fmt=fmt)
    if fmt.zarr_format == 3:  # 0.5 asks for the version on the labels group too
        add_metadata(labels_group, {"version": fmt.version}, fmt=fmt)


def _level_slices(box: tuple, lv: int, shape_hw: tuple[int, int] | None = None) -> tuple[slice, slice, int, int]:
    """Rows and columns of level ``lv`` that a level-0 chunk ``box`` covers (clipped to ``shape_hw``),
    and how many of the chunk's every-``2**lv``-th rows and columns they take."""
    y0, y1, x0, x1 = box
    s = 2**lv
    ya, xa = y0 // s, x0 // s
    yb, xb = ya + -(-(y1 - y0) // s), xa + -(-(x1 - x0) // s)
    if shape_hw is not None:
        yb, xb = min(yb, shape_hw[0]), min(xb, shape_hw[1])
    return slice(ya, yb), slice(xa, xb), yb - ya, xb - xa


@dataclass(frozen=True)
class OmeLayout:
    """An NGFF image of the probabilities with the segmentation as its label image (module doc)."""

    stack: bool
    levels: int
    kind: str = "ome-zarr"
    prefix: str = "napari_mpf/"

    LABELS = "labels/segmentation"

    def _index(self, z: int, *rest) -> tuple:
        return (z, *rest) if self.stack else tuple(rest)

    def create(self, g, shape, chunks, prob_dtype, seg_dtype, volume: Volume, class_names) -> None:
        from ome_zarr.writer import write_multiscales_metadata

        z, k, h, w = shape
        cy, cx = chunks
        lead = (z,) if self.stack else ()
        spatial = ("z", "y", "x") if self.stack else ("y", "x")
        labels = g.create_group("labels").create_group("segmentation")
        for lv in range(self.levels):
            s = 2**lv
            hl, wl = -(-h // s), -(-w // s)
            g.create_array(str(lv), shape=(k, *lead, hl, wl), chunks=(k, *(1,) * len(lead), cy // s, cx // s),
                           dtype=prob_dtype, fill_value=0, dimension_names=("c", *spatial))
            labels.create_array(str(lv), shape=(*lead, hl, wl), chunks=(*(1,) * len(lead), cy // s, cx // s),
                                dtype=seg_dtype, fill_value=0, dimension_names=spatial)
        top = float(np.iinfo(prob_dtype).max) if np.dtype(prob_dtype).kind == "u" else 1.0
        window = {"min": 0.0, "max": top, "start": 0.0, "end": top}
        omero = {"channels": [{"label": str(n), "color": class_color(i + 1).lstrip("#").upper(), "window": window,
                               "active": i > 0 or k == 1} for i, n in enumerate(class_names)]}
        axes, datasets = _datasets(volume, self.stack, self.levels, channel=True)
        write_multiscales_metadata(g, datasets, axes=axes, name="probabilities", metadata={"omero": omero})
        axes, datasets = _datasets(volume, self.stack, self.levels, channel=False)
        write_multiscales_metadata(labels, datasets, axes=axes, name="segmentation")
        _label_metadata(g["labels"], labels, "segmentation", class_names)

    def write(self, arrays, z: int, box: tuple, probs: np.ndarray, seg: np.ndarray) -> None:
        for lv in range(self.levels):
            s = 2**lv
            ys, xs, _, _ = _level_slices(box, lv)
            arrays(str(lv))[(slice(None), *self._index(z, ys, xs))] = probs[:, ::s, ::s]
            arrays(f"{self.LABELS}/{lv}")[self._index(z, ys, xs)] = seg[::s, ::s]

    def probabilities(self, arrays, z: int, k: int) -> np.ndarray:
        return np.asarray(arrays("0")[(k, *self._index(z))])


@dataclass(frozen=True)
class LabelsLayout:
    """The segmentation as a label image ``labels/<name>`` of the OME-Zarr image it is predicted
    from (no probabilities): one level per level of that image, each of the image's shape."""

    stack: bool
    shapes: tuple  # (rows, cols) of every level of the image
    zarr_format: int
    image: str  # the image's store
    name: str  # of the label image in its labels group
    kind: str = "ome-zarr-labels"
    prefix: str = "napari_mpf/"

    @property
    def levels(self) -> int:
        return len(self.shapes)

    def _index(self, z: int, *rest) -> tuple:
        return (z, *rest) if self.stack else tuple(rest)

    def create(self, g, shape, chunks, prob_dtype, seg_dtype, volume: Volume, class_names) -> None:
        import zarr
        from ome_zarr.writer import write_multiscales_metadata

        z = shape[0]
        cy, cx = chunks
        lead = (z,) if self.stack else ()
        spatial = ("z", "y", "x") if self.stack else ("y", "x")
        for lv, (hl, wl) in enumerate(self.shapes):
            named = {"dimension_names": spatial} if self.zarr_format == 3 else {}
            g.create_array(str(lv), shape=(*lead, hl, wl), chunks=(*(1,) * len(lead), cy >> lv, cx >> lv),
                           dtype=seg_dtype, fill_value=0, **named)
        axes, datasets = _datasets(volume, self.stack, self.levels, channel=False)
        write_multiscales_metadata(g, datasets, axes=axes, name=self.name)
        labels = zarr.open_group(str(Path(self.image) / "labels"), mode="a", zarr_format=self.zarr_format)
        _label_metadata(labels, g, self.name, class_names)

    def write(self, arrays, z: int, box: tuple, probs: np.ndarray, seg: np.ndarray) -> None:
        for lv, shape_hw in enumerate(self.shapes):
            s = 2**lv
            ys, xs, ny, nx = _level_slices(box, lv, shape_hw)
            arrays(str(lv))[self._index(z, ys, xs)] = seg[::s, ::s][:ny, :nx]

    def probabilities(self, arrays, z: int, k: int) -> np.ndarray:  # pragma: no cover - counting is refused
        raise InputError("a label image keeps no probabilities")


def is_ome_path(path) -> bool:
    """A store path named ``*.ome.zarr`` (an OME-Zarr image is written there)."""
    return str(path).lower().rstrip("/").endswith(OME_SUFFIX)


def is_labels_path(path) -> bool:
    """``<store>/labels/<name>``: a label image inside a zarr store (the OME-Zarr image predicted)."""
    p = Path(path)
    return p.parent.name == "labels" and is_zarr(p.parent.parent)


def labels_of_input(path, volume: Volume, chunks: tuple[int, int], levels: int | None):
    """A :class:`LabelsLayout` when ``path`` is ``<image>/labels/<name>`` of the OME-Zarr image that
    ``volume`` reads at full resolution, None when ``path`` is not inside a ``labels`` group."""
    import zarr

    if not is_labels_path(path):
        return None
    p = Path(path).resolve()
    try:
        image = zarr.open_group(str(p.parent.parent), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr group: an ordinary output path
        return None
    meta = ngff_metadata(image)
    if meta is None:
        return None
    info = getattr(volume, "ngff", None)
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in meta["multiscales"][0]["axes"]]
    datasets = meta["multiscales"][0]["datasets"]
    full = image[datasets[0]["path"]].shape
    whole = (volume.height, volume.width) == (full[axes.index("y")], full[axes.index("x")]) and \
        list(volume.indices) == list(range(full[axes.index("z")] if "z" in axes else 1))
    if info is None or Path(getattr(volume, "path", "")) != p.parent.parent or info.level != 0 or not whole:
        raise InputError(f"{path}: labels are added to the OME-Zarr image that is predicted, at --level 0, "
                         "without --crop or --slices; write a separate .ome.zarr store instead")
    if levels is not None:
        raise InputError(f"{path}: a label image has the levels of its image ({len(datasets)}); drop --levels")
    shapes = []
    for lv, ds in enumerate(datasets):
        shp = image[ds["path"]].shape
        h, w = shp[axes.index("y")], shp[axes.index("x")]
        if h not in (volume.height >> lv, -(-volume.height // 2**lv)) or w not in (volume.width >> lv, -(-volume.width // 2**lv)) \
                or ("z" in axes and shp[axes.index("z")] != volume.n_slices):
            raise InputError(f"{path}: level {lv} of the image is not a halving of its rows and columns, which a label "
                             "image written chunk by chunk needs; write a separate .ome.zarr store instead")
        shapes.append((int(h), int(w)))
    if any(c % 2 ** (len(shapes) - 1) for c in chunks):
        raise InputError(f"{path}: the image's {len(shapes)} levels need chunk sides divisible by {2 ** (len(shapes) - 1)} "
                         f"(got {chunks[0]}x{chunks[1]})")
    return LabelsLayout(stack=volume.stack, shapes=tuple(shapes), zarr_format=image.metadata.zarr_format,
                        image=str(p.parent.parent), name=p.name)


def layout_for(path, volume: Volume, chunks: tuple[int, int], levels: int | None):
    """The layout a store path asks for: ``<image>.ome.zarr/labels/<name>`` -> :class:`LabelsLayout`,
    ``*.ome.zarr`` -> :class:`OmeLayout`, else :class:`PlainLayout`."""
    labels = labels_of_input(path, volume, chunks, levels)
    if labels is not None:
        return labels
    if not is_ome_path(path):
        if levels is not None:
            raise InputError(f"pyramid levels apply to an OME-Zarr output (a store named *{OME_SUFFIX}), not {path}")
        return PlainLayout()
    if levels is None:
        levels = auto_levels((volume.height, volume.width), chunks)
    if levels < 1 or any(c % 2 ** (levels - 1) for c in chunks):
        raise InputError(f"{levels} pyramid level(s) need chunk sides divisible by {2 ** max(levels - 1, 0)} "
                         f"(got {chunks[0]}x{chunks[1]}); choose chunks such as 1024 or fewer levels")
    return OmeLayout(stack=volume.stack, levels=int(levels))

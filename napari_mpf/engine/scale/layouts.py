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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.volume import Volume
from ..network.inputs import InputError
from ..post.colors import class_color, class_rgba

__all__ = ["PlainLayout", "OmeLayout", "layout_for", "auto_levels", "OME_SUFFIX"]

OME_SUFFIX = ".ome.zarr"


@dataclass(frozen=True)
class PlainLayout:
    """The plain store: one array per output, the stack axis first."""

    kind: str = "zarr"
    prefix: str = ""  # of the bookkeeping arrays

    def create(self, g, shape: tuple[int, int, int, int], chunks: tuple[int, int], prob_dtype, seg_dtype) -> None:
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

    def outputs(self) -> tuple[str, str]:
        """Paths of the full-resolution probabilities and segmentation."""
        return "probabilities", "segmentation"


def auto_levels(shape_hw: tuple[int, int], chunks: tuple[int, int], smallest: int = 256, most: int = 8) -> int:
    """Pyramid levels: halve while the larger side stays at least ``smallest`` and the chunks divide."""
    n = 1
    while n < most and all(c % 2**n == 0 for c in chunks) and max(shape_hw) >> n >= smallest:
        n += 1
    return n


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
        from ome_zarr.writer import (
            add_metadata,
            get_metadata,
            write_label_metadata,
            write_multiscales_metadata,
        )

        z, k, h, w = shape
        cy, cx = chunks
        lead = (z,) if self.stack else ()
        labels = g.create_group("labels").create_group("segmentation")
        for lv in range(self.levels):
            s = 2**lv
            hl, wl = -(-h // s), -(-w // s)
            spatial = ("z", "y", "x") if self.stack else ("y", "x")
            g.create_array(str(lv), shape=(k, *lead, hl, wl), chunks=(k, *(1,) * len(lead), cy // s, cx // s),
                           dtype=prob_dtype, fill_value=0, dimension_names=("c", *spatial))
            labels.create_array(str(lv), shape=(*lead, hl, wl), chunks=(*(1,) * len(lead), cy // s, cx // s),
                                dtype=seg_dtype, fill_value=0, dimension_names=spatial)
        axes, scale, shift = self._geometry(volume)

        def datasets(channel: bool) -> list[dict]:
            c_scale, c_shift = ([1.0], [0.0]) if channel else ([], [])
            return [{"path": str(lv), "coordinateTransformations": [
                {"type": "scale", "scale": c_scale + [v * (2**lv if a["name"] in "yx" else 1) for a, v in zip(axes, scale, strict=True)]},
                {"type": "translation", "translation": c_shift + shift},
            ]} for lv in range(self.levels)]

        top = float(np.iinfo(prob_dtype).max) if np.dtype(prob_dtype).kind == "u" else 1.0
        window = {"min": 0.0, "max": top, "start": 0.0, "end": top}
        omero = {"channels": [{"label": str(n), "color": class_color(i + 1).lstrip("#").upper(), "window": window,
                               "active": i > 0 or k == 1} for i, n in enumerate(class_names)]}
        write_multiscales_metadata(g, datasets(True), axes=[{"name": "c", "type": "channel"}, *axes],
                                   name="probabilities", metadata={"omero": omero})
        write_multiscales_metadata(labels, datasets(False), axes=axes, name="segmentation")
        write_label_metadata(
            g["labels"], "segmentation",
            colors=[{"label-value": i + 1, "rgba": class_rgba(i + 1)} for i in range(k)],
            properties=[{"label-value": i + 1, "class": str(n)} for i, n in enumerate(class_names)],
            source={"image": "../../"},
        )
        add_metadata(g["labels"], {"version": get_metadata(g)["version"]})  # 0.5 asks for it; ome-zarr 0.18 omits it

    def _geometry(self, volume: Volume) -> tuple[list[dict], list[float], list[float]]:
        """Spatial axes (with units), scale and translation of level 0 of the output."""
        names = ("z", "y", "x") if self.stack else ("y", "x")
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
        if self.stack:
            idx = list(volume.indices)
            steps = set(np.diff(idx).tolist())
            if len(steps) > 1:
                raise InputError("an OME-Zarr output needs evenly spaced slices (e.g. --slices 0:100:2), "
                                 f"got {idx[:6]}{'…' if len(idx) > 6 else ''}; write a plain .zarr store instead")
            shift["z"] += idx[0] * scale["z"]
            scale["z"] *= steps.pop() if steps else 1
        axes = [{"name": a, "type": "space", **({"unit": units[a]} if units.get(a) else {})} for a in names]
        return axes, [scale[a] for a in names], [shift[a] for a in names]

    def write(self, arrays, z: int, box: tuple, probs: np.ndarray, seg: np.ndarray) -> None:
        y0, y1, x0, x1 = box
        for lv in range(self.levels):
            s = 2**lv
            ys, xs = slice(y0 // s, y0 // s + -(-(y1 - y0) // s)), slice(x0 // s, x0 // s + -(-(x1 - x0) // s))
            arrays(str(lv))[(slice(None), *self._index(z, ys, xs))] = probs[:, ::s, ::s]
            arrays(f"{self.LABELS}/{lv}")[self._index(z, ys, xs)] = seg[::s, ::s]

    def probabilities(self, arrays, z: int, k: int) -> np.ndarray:
        return np.asarray(arrays("0")[(k, *self._index(z))])

    def outputs(self) -> tuple[str, str]:
        return "0", f"{self.LABELS}/0"


def layout_for(path, volume: Volume, chunks: tuple[int, int], levels: int | None):
    """The layout a store path asks for: ``*.ome.zarr`` -> :class:`OmeLayout`, else :class:`PlainLayout`."""
    if not str(path).lower().rstrip("/").endswith(OME_SUFFIX):
        if levels is not None:
            raise InputError(f"pyramid levels apply to an OME-Zarr output (a store named *{OME_SUFFIX}), not {path}")
        return PlainLayout()
    if levels is None:
        levels = auto_levels((volume.height, volume.width), chunks)
    if levels < 1 or any(c % 2 ** (levels - 1) for c in chunks):
        raise InputError(f"{levels} pyramid level(s) need chunk sides divisible by {2 ** max(levels - 1, 0)} "
                         f"(got {chunks[0]}x{chunks[1]}); choose chunks such as 1024 or fewer levels")
    return OmeLayout(stack=volume.stack, levels=int(levels))

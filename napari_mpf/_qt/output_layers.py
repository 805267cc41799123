"""The output layers the trainer writes, found and updated in place by name: ``"<image> p(<class>)"``,
``"<image> segmentation"``, ``"<image> objects"``, ``"<image> uncertainty"``; for big or dask-backed
images, lazy (dask) layers and zarr stores instead. No Qt. A mixin of
:class:`~napari_mpf._qt.controller.Controller`, whose ``image_info``, ``current_slice`` and
``check_model_fits_image`` it uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Image, Labels

from .._layer_style import class_colormap, class_features
from ..engine import InputError, Model, segment
from ..engine.io.ngff import NgffInfo
from ..engine.io.volume import ArrayVolume
from ..engine.post.objects import ObjectCounts, count_objects
from ..engine.post.uncertainty import Uncertain, least_certain, uncertainty
from ..engine.scale import (
    CountSettings,
    ZarrPrediction,
    open_prediction,
    predict_dask,
    segment_dask,
)

__all__ = ["OUTPUT_KEY", "UserError", "OutputLayers", "full_resolution"]

#: metadata key marking layers written by this plugin (value: the role).
OUTPUT_KEY = "napari_mpf"

#: probability colormap per class label value (class 1, background, gets none).
PROB_COLORMAPS = {2: "yellow", 3: "red", 4: "green", 5: "magenta", 6: "cyan", 7: "blue"}


def full_resolution(image_layer):
    """The pixels of an Image layer; of a multiscale layer (e.g. an OME-Zarr pyramid), its full-resolution
    level, which the model reads (outputs sit at the layer's scale)."""
    return image_layer.data[0] if image_layer.multiscale else image_layer.data


class UserError(ValueError):
    """Something the user can fix; the message is shown as a napari notification."""


class OutputLayers:
    """Writing the plugin's output layers for one viewer (``self.viewer``)."""

    last_counts: ObjectCounts | None = None

    # ----------------------------------------------------------------- output layers
    def _output(self, name: str, role: str, kind: type, shape: tuple[int, ...], dtype, image_layer, **kwargs):
        """Find the output layer ``name`` (ours, right type and shape) or add it."""
        layers = self.viewer.layers
        if name in layers:
            layer = layers[name]
            if layer.metadata.get(OUTPUT_KEY) != role or not isinstance(layer, kind):
                raise UserError(
                    f"A layer named '{name}' already exists and was not made by napari-mpf; rename it."
                )
            if tuple(layer.data.shape) == tuple(shape):
                return layer
            layers.remove(layer)
        data = np.zeros(shape, dtype)
        scale = image_layer.scale[-len(shape):]
        translate = image_layer.translate[-len(shape):]
        meta = {OUTPUT_KEY: role, "image": image_layer.name}
        adder = self.viewer.add_image if kind is Image else self.viewer.add_labels
        active = layers.selection.active
        layer = adder(data, name=name, scale=scale, translate=translate, metadata=meta, **kwargs)
        if image_layer in layers:  # just above the image: the strokes stay on top, visible
            layers.move(layers.index(layer), layers.index(image_layer) + 1)
        if active is not None and active in layers:  # the user keeps painting where they were
            layers.selection.active = active
        return layer

    def prob_names(self, image_layer, class_names: list[str]) -> list[tuple[int, str]]:
        """``(class index k (0-based), layer name)`` of the probability layers (foreground classes)."""
        return [(k, f"{image_layer.name} p({class_names[k]})") for k in range(1, len(class_names))]

    def show_probabilities(
        self, image_layer, z: int | None, proba: np.ndarray, class_names: list[str],
        image_probabilities: np.ndarray | None = None,
    ) -> list[Image]:
        """Write ``proba`` ``(K, H, W)`` of slice ``z`` into the probability layers (in place).

        ``image_probabilities`` (``(K - 1,)``, from a model's image-level head) go to the layers'
        metadata ``"image_probability_per_slice"`` (one entry per slice, None = not known); without
        them the slice's entry becomes None. Large or dask-backed images have lazy output layers
        (:meth:`lazy_outputs`): nothing is written.
        """
        info = self.image_info(image_layer)
        if self.is_lazy(image_layer):
            return []
        out = []
        for k, name in self.prob_names(image_layer, class_names):
            layer = self._output(
                name, "probability", Image, info.spatial_shape, np.float32, image_layer,
                colormap=PROB_COLORMAPS.get(k + 1, "gray"), contrast_limits=(0.0, 1.0),
                blending="additive", opacity=0.7,
            )
            if z is None:
                layer.data[...] = proba[k]
            else:
                layer.data[z] = proba[k]
            done = set(layer.metadata.get("predicted_slices", []))
            done.add(-1 if z is None else int(z))
            layer.metadata["predicted_slices"] = sorted(done)
            layer.metadata["class"] = class_names[k]
            per_slice = list(layer.metadata.get("image_probability_per_slice") or [])
            n = info.n_slices if info.is_stack else 1
            per_slice = (per_slice + [None] * n)[:n]
            value = None if image_probabilities is None or k - 1 >= len(image_probabilities) else image_probabilities[k - 1]
            per_slice[0 if z is None else int(z)] = None if value is None else float(value)
            layer.metadata["image_probability_per_slice"] = per_slice
            layer.refresh()
            out.append(layer)
        return out

    def show_uncertainty(self, image_layer, z: int | None, proba: np.ndarray, painted=None) -> Uncertain | None:
        """Write the margin uncertainty of slice ``z`` (:func:`~napari_mpf.engine.post.uncertainty.uncertainty`)
        into ``'<image> uncertainty'`` (hidden when first made: the user shows it to see where to
        paint) and return the least certain region of the slice, leaving out ``painted`` pixels."""
        info = self.image_info(image_layer)
        if self.is_lazy(image_layer):
            return None
        layer = self._output(
            f"{image_layer.name} uncertainty", "uncertainty", Image, info.spatial_shape, np.float32, image_layer,
            colormap="magma", contrast_limits=(0.0, 1.0), blending="additive", opacity=0.6, visible=False,
        )
        u = uncertainty(proba)
        if z is None:
            layer.data[...] = u
        else:
            layer.data[z] = u
        layer.refresh()
        return least_certain(proba, painted=painted)

    def show_segmentation(self, image_layer, z: int | None, proba: np.ndarray, class_names: list[str]) -> Labels:
        """Write the argmax segmentation (labels 1..K) of slice ``z`` into ``'<image> segmentation'``."""
        info = self.image_info(image_layer)
        if self.is_lazy(image_layer):
            return None
        layer = self._output(
            f"{image_layer.name} segmentation", "segmentation", Labels, info.spatial_shape, np.uint8,
            image_layer, opacity=0.35, colormap=class_colormap(len(class_names)),
            features=class_features(class_names),
        )
        seg = segment(proba)
        if z is None:
            layer.data[...] = seg
        else:
            layer.data[z] = seg
        layer.metadata["class_names"] = list(class_names)
        if self.model is not None:
            layer.metadata["model"] = self.model.describe()
        layer.refresh()
        return layer

    def count(
        self,
        image_layer,
        class_index: int = 1,
        threshold: float = 0.5,
        min_area: int = 1,
        min_count: int | None = 1,
        min_pixels: int | None = None,
    ) -> ObjectCounts:
        """Objects of class ``class_index`` (0-based) from its probability layer -> ``'<image> objects'``."""
        prob_layer = self._probability_layer(image_layer, class_index)
        if prob_layer is None:
            raise UserError(f"No probability map for '{image_layer.name}' yet: train or apply a model first.")
        if not isinstance(prob_layer.data, np.ndarray):
            raise UserError(
                f"'{prob_layer.name}' is computed lazily, slice by slice: counting needs whole maps. "
                "Use 'Predict to zarr…', which counts the objects of every slice."
            )
        counts = count_objects(
            np.asarray(prob_layer.data), threshold, min_area, min_count=min_count, min_pixels=min_pixels
        )
        info = self.image_info(image_layer)
        layer = self._output(
            f"{image_layer.name} objects", "objects", Labels, info.spatial_shape, np.int32, image_layer,
            opacity=0.6,
        )
        features = {"index": counts.features["label"], **counts.features}
        layer.data = counts.labels
        layer.features = features
        summary = counts.summary()
        summary["class"] = prob_layer.metadata.get("class")
        if info.is_stack:
            summary["predicted_slices"] = prob_layer.metadata.get("predicted_slices", [])
        per_slice = prob_layer.metadata.get("image_probability_per_slice")
        for key in ("image_probability", "image_probability_per_slice"):
            layer.metadata.pop(key, None)
        if per_slice is not None and any(p is not None for p in per_slice):
            summary["image_probability_per_slice"] = list(per_slice)
            if not info.is_stack:
                summary["image_probability"] = per_slice[0]
        layer.metadata.update(summary)
        self.last_counts = counts
        return counts

    def image_probability(self, image_layer, class_index: int = 1, z: int | None = None) -> float | None:
        """The image-level head's p(class ``class_index`` present) for slice ``z`` (None for 2D) as
        last predicted into the probability layer, or None if not known."""
        layer = self._probability_layer(image_layer, class_index)
        if layer is None:
            return None
        per_slice = layer.metadata.get("image_probability_per_slice") or []
        i = 0 if z is None else int(z)
        return per_slice[i] if i < len(per_slice) else None

    def _probability_layer(self, image_layer, class_index: int):
        """The probability layer of class ``class_index`` (0-based) of ``image_layer``, or None."""
        names = self.model.class_names if self.model is not None else None
        for layer in self.viewer.layers:
            if (
                isinstance(layer, Image)
                and layer.metadata.get(OUTPUT_KEY) == "probability"
                and layer.metadata.get("image") == image_layer.name
                and (names is None or layer.metadata.get("class") == names[class_index])
            ):
                return layer
        return None

    # ----------------------------------------------------------------- big and dask-backed images
    #: images with more pixels than this, or not held in memory (dask, zarr…), get lazy outputs
    LAZY_PIXELS = 2**26
    #: output tile side (pixels) of lazy and zarr prediction
    LAZY_TILE = 2048
    #: memory for computed tiles kept for the lazy layers (several layers slice the same tiles)
    LAZY_CACHE_BYTES = 256 * 2**20

    def is_lazy(self, image_layer) -> bool:
        """Whether ``image_layer`` gets lazy (dask) outputs: large, or not a NumPy array (a pyramid too)."""
        data = full_resolution(image_layer)
        return not isinstance(data, np.ndarray) or data.size > self.LAZY_PIXELS

    def lazy_outputs(self, model: Model, image_layer) -> tuple[list[Image], Labels]:
        """Probability and segmentation layers as dask arrays, computed as napari shows slices."""
        import dask.array as da

        info = self.check_model_fits_image(model, image_layer)
        self._refuse_superpixel_branch(model, image_layer, "is large or not in memory, so it is predicted in tiles")
        data = full_resolution(image_layer)
        if not isinstance(data, da.Array):
            spatial = 3 if image_layer.rgb else 2
            own = getattr(data, "chunks", None)
            data = da.from_array(data, chunks=own if isinstance(own, tuple) else (1,) * (data.ndim - spatial) + (-1,) * spatial)
        if info.is_stack:
            data = data.rechunk({0: 1})
        tile = (min(info.shape[0], self.LAZY_TILE), min(info.shape[1], self.LAZY_TILE))
        tile_bytes = model.n_classes * tile[0] * tile[1] * 4
        cache = int(np.clip(self.LAZY_CACHE_BYTES // max(tile_bytes, 1), 2, 64))
        probs = predict_dask(model.copy(), data, chunks=tile, rgb=image_layer.rgb, cache_tiles=cache)
        return self._show_dask(image_layer, probs, segment_dask(probs), list(model.class_names), {"lazy": True})

    def zarr_job(self, model: Model, image_layer, path, prob_dtype: str = "uint8", counts: CountSettings | None = None,
                 overwrite: bool = False) -> ZarrPrediction:
        """A :class:`~napari_mpf.engine.scale.run.ZarrPrediction` of every slice of ``image_layer`` into
        the store ``path`` (``*.zarr``); a stopped run on the same path resumes. Run it in a worker."""
        self.check_model_fits_image(model, image_layer)
        self._refuse_superpixel_branch(model, image_layer, "would be predicted into zarr chunk by chunk")
        p = Path(path)
        if p.suffix.lower() != ".zarr":
            raise UserError(f"Choose a store whose name ends with .ome.zarr (OME-Zarr) or .zarr (got '{p.name}').")
        n = 2 + (image_layer.ndim - (3 if image_layer.rgb else 2))  # spatial axes: y, x and a stack's z
        geometry = NgffInfo.from_scale(image_layer.scale[-n:], image_layer.translate[-n:])
        try:
            volume = ArrayVolume(full_resolution(image_layer), rgb=image_layer.rgb, name=image_layer.name, ngff=geometry)
            return ZarrPrediction(model.copy(), volume, p, self.LAZY_TILE, prob_dtype, counts, overwrite)
        except InputError as exc:
            raise UserError(str(exc)) from exc

    @staticmethod
    def _refuse_superpixel_branch(model: Model, image_layer, why: str) -> None:
        if model.superpixels is not None:
            raise UserError(
                f"'{image_layer.name}' {why}, but the model has a superpixel branch, which needs whole slices: "
                "use a model without it for big images."
            )

    def zarr_outputs(self, image_layer, path) -> tuple[list[Image], Labels]:
        """Point the output layers of ``image_layer`` at a finished prediction store (read lazily)."""
        import dask.array as da

        info = self.image_info(image_layer)
        meta = open_prediction(path)
        scale = np.float32(meta.get("probability_scale", 1.0))
        levels = int(meta.get("signature", {}).get("levels", 0))
        if levels:  # OME-Zarr: every pyramid level, as a multiscale layer; probabilities (K, [Z,] H, W)
            probs = [da.moveaxis(da.from_zarr(str(path), component=str(lv)), 0, -3) for lv in range(levels)]
            seg = [da.from_zarr(str(path), component=f"labels/segmentation/{lv}") for lv in range(levels)]
        else:
            probs = [da.from_zarr(str(path), component="probabilities")]
            seg = [da.from_zarr(str(path), component="segmentation")]
            if not info.is_stack:
                probs, seg = [probs[0][0]], [seg[0][0]]
        probs = [p.astype(np.float32) / scale if scale != 1.0 else p for p in probs]
        return self._show_dask(image_layer, probs, seg, list(meta["class_names"]), {"lazy": True, "zarr": str(path)})

    def _show_dask(self, image_layer, probs, seg, class_names: list[str], meta: dict) -> tuple[list[Image], Labels]:
        """Output layers of dask arrays: probabilities ``([Z,] K, H, W)`` and labels, or lists of them
        (the levels of a pyramid, shown as multiscale layers)."""
        pyramid = isinstance(probs, list)
        probs, seg = (probs, seg) if pyramid else ([probs], [seg])
        stack = probs[0].ndim == 4

        def one(levels):
            return levels if len(levels) > 1 else levels[0]

        layers = []
        for k, name in self.prob_names(image_layer, class_names):
            layer = self._dask_layer(
                name, "probability", Image, one([p[:, k] if stack else p[k] for p in probs]), image_layer,
                colormap=PROB_COLORMAPS.get(k + 1, "gray"), contrast_limits=(0.0, 1.0), blending="additive", opacity=0.7,
            )
            layer.metadata.update(meta, **{"class": class_names[k]})
            layers.append(layer)
        seg_layer = self._dask_layer(
            f"{image_layer.name} segmentation", "segmentation", Labels, one(seg), image_layer,
            opacity=0.35, colormap=class_colormap(len(class_names)), features=class_features(class_names),
        )
        seg_layer.metadata.update(meta, class_names=list(class_names))
        if self.model is not None:
            seg_layer.metadata["model"] = self.model.describe()
        return layers, seg_layer

    def _dask_layer(self, name: str, role: str, kind: type, data, image_layer, **kwargs):
        """Replace the output layer ``name`` (ours) by one showing ``data`` (a dask array)."""
        layers = self.viewer.layers
        if name in layers:
            layer = layers[name]
            if layer.metadata.get(OUTPUT_KEY) != role or not isinstance(layer, kind):
                raise UserError(f"A layer named '{name}' already exists and was not made by napari-mpf; rename it.")
            layers.remove(layer)
        nd = (data[0] if isinstance(data, list) else data).ndim
        meta = {OUTPUT_KEY: role, "image": image_layer.name}
        adder = self.viewer.add_image if kind is Image else self.viewer.add_labels
        return adder(data, name=name, scale=image_layer.scale[-nd:], translate=image_layer.translate[-nd:], metadata=meta, **kwargs)

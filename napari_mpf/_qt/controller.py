"""The trainer's logic on napari layers, without Qt: gather strokes, build the trainer, write outputs.

:class:`Controller` is what :class:`~napari_mpf._qt.trainer_widget.TrainerWidget` calls; tests can
drive it directly (run its generators synchronously). Output layers are found and updated in place
by name: ``"<image> p(<class>)"``, ``"<image> segmentation"``, ``"<image> objects"``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Layer

from .. import __version__, recipe
from .._layer_style import (
    DEFAULT_CLASS_NAMES,
    class_colormap,
    class_features,
    class_names_from_features,
)
from ..engine import InputError, Model, SpecError, TrainConfig, Trainer, parse_spec, segment
from ..engine.io.volume import ArrayVolume
from ..engine.network.features import FILTER_BANKS, check_filters
from ..engine.network.heads import add_image_head, add_superpixel_branch
from ..engine.network.predict import predict, predict_proba, refine_with_superpixels
from ..engine.post.objects import ObjectCounts, count_objects
from ..engine.post.uncertainty import Uncertain, least_certain, uncertainty
from ..engine.scale import (
    CountSettings,
    ZarrPrediction,
    open_prediction,
    predict_dask,
    segment_dask,
)

__all__ = ["UserError", "TrainSettings", "ImageInfo", "TrainingSet", "Controller", "OUTPUT_KEY", "heads_text"]

_RECIPE = recipe.defaults()

#: metadata key marking layers written by this plugin (value: the role).
OUTPUT_KEY = "napari_mpf"

#: probability colormap per class label value (class 1, background, gets none).
PROB_COLORMAPS = {2: "yellow", 3: "red", 4: "green", 5: "magenta", 6: "cyan", 7: "blue"}


class UserError(ValueError):
    """Something the user can fix; the message is shown as a napari notification."""


def heads_text(model: Model) -> str:
    """One line on ``model``'s heads and input filters ('' without any)."""
    parts = []
    if model.filters:
        parts.append(f"input filters ({filters_name(model.filters)})")
    if model.superpixels is not None:
        parts.append(f"superpixel branch ({model.superpixels['pool']}, ~{model.superpixels['size']:g} px)")
    if model.image_head is not None:
        parts.append(f"image-level head (loss weight {model.image_head['loss_weight']:g})")
    if model.context is not None:
        parts.append(f"auto-context on a first stage ({model.context.spec.text})")
    return ", ".join(parts)


def filters_name(filters: dict | None) -> str:
    """The name of a named input filter bank ('none' without filters, 'custom' for another bank)."""
    if not filters:
        return "none"
    return next((name for name in FILTER_BANKS if check_filters(name) == filters), "custom")


@dataclass
class TrainSettings:
    """What the widget's controls say (see :class:`napari_mpf.engine.TrainConfig`)."""

    spec: str = _RECIPE["network"]
    activation: str = _RECIPE["activation"]
    optimizer: str = _RECIPE["optimizer"]
    steps: int = _RECIPE["steps"]
    lr: float | None = _RECIPE["lr"]
    augment: bool = _RECIPE["augment"]
    balance: bool = _RECIPE["balance"]
    step_size: int = _RECIPE["step_size"]
    seed: int = _RECIPE["seed"]
    preview_every: int = 10
    continue_training: bool = True
    class_names: list[str] | None = None
    #: a new network gets a superpixel branch (SLIC superpixels of about ``superpixel_size`` px)
    superpixel_branch: bool = False
    superpixel_size: float = 100.0  # the best size on the tiles (benchmarks/RESULTS_SEED_METHODS.md)
    superpixel_pool: str = "max"
    #: a new network gets an image-level "class present" head, trained with this loss weight
    image_head: bool = False
    image_head_weight: float = 1.0
    #: a new network gets these input filters (a name from ``engine.network.features.FILTER_BANKS`` or the
    #: settings of a bank; "none" = the image only)
    filters: str | dict = _RECIPE["filters"]
    #: a new network is followed by a second stage of this spec or preset (auto-context; "none" = one)
    context: str = "none"

    def recipe(self) -> dict:
        """The recipe values these settings hold (stored in the model's provenance)."""
        return {"network": self.spec, "activation": self.activation, "optimizer": self.optimizer,
                "steps": self.steps, "lr": self.lr, "augment": self.augment, "balance": self.balance,
                "step_size": self.step_size, "seed": self.seed,
                "filters": self.filters if isinstance(self.filters, str) else "custom"}


#: SLIC compactness of the superpixel branch and of the refinement (the engine's default)
SUPERPIXEL_COMPACTNESS = 0.3


@dataclass(frozen=True)
class ImageInfo:
    """How an Image layer maps to engine images: ``shape`` is (H, W), ``n_slices`` 0 for 2D."""

    shape: tuple[int, int]
    n_slices: int
    channels: int
    rgb: bool

    @property
    def is_stack(self) -> bool:
        return self.n_slices > 0

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return (self.n_slices, *self.shape) if self.is_stack else self.shape


@dataclass
class TrainingSet:
    """Copies of the painted slices, ready for the engine."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    origins: list[tuple[str, int | None]]
    layers: list[Layer]
    class_names: list[str]
    in_channels: int
    n_classes: int
    preview_index: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def n_painted(self) -> int:
        return int(sum(np.count_nonzero(lab) for lab in self.labels))


def _kind(layer) -> str:
    return type(layer).__name__


def _channels_word(c: int) -> str:
    return "grayscale (1 channel)" if c == 1 else ("RGB (3 channels)" if c == 3 else f"{c} channels")


class Controller:
    """Plain-Python logic of the trainer widget for one viewer."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.model: Model | None = None
        self.trainer = None
        self._recipe: dict | None = None  # the recipe of the last training run (for provenance)
        self.training_set: TrainingSet | None = None
        self.last_counts: ObjectCounts | None = None

    # ----------------------------------------------------------------- layers -> arrays
    def image_info(self, layer) -> ImageInfo:
        """Check that ``layer`` is an image this plugin can use and describe its geometry."""
        if layer is None:
            raise UserError("No image layer: open an image (or File > Open Sample > napari-mpf) and pick it as the image.")
        if not isinstance(layer, Image):
            raise UserError(f"'{layer.name}' is a {_kind(layer)} layer; pick an Image layer as the image.")
        if layer.multiscale:
            raise UserError(f"'{layer.name}' is a multiscale image; napari-mpf needs a single-resolution image.")
        shape = tuple(layer.data.shape)
        if layer.rgb:
            channels = 3
            spatial = shape[:-1]
        else:
            channels = 1
            spatial = shape
        if len(spatial) == 2:
            return ImageInfo(tuple(spatial), 0, channels, layer.rgb)
        if len(spatial) == 3:
            return ImageInfo(tuple(spatial[1:]), spatial[0], channels, layer.rgb)
        raise UserError(
            f"'{layer.name}' has shape {shape}; napari-mpf works on (Y, X) images, (Z, Y, X) stacks "
            "or RGB images (Y, X, 3)."
        )

    def slice_array(self, layer, z: int | None) -> np.ndarray:
        """A float32 ``(C, H, W)`` copy of one slice (``z=None`` for 2D) of an Image layer."""
        data = layer.data if z is None else layer.data[z]
        arr = np.array(data, dtype=np.float32, copy=True)
        if layer.rgb:
            arr = np.moveaxis(arr[..., :3], -1, 0)
        else:
            arr = arr[None]
        if not np.isfinite(arr).all():
            raise UserError(f"'{layer.name}' contains NaN or infinite values; napari-mpf cannot train on it.")
        return np.ascontiguousarray(arr)

    def current_slice(self, layer) -> int | None:
        """The slice of a stack layer shown in the viewer (None for 2D layers)."""
        info = self.image_info(layer)
        if not info.is_stack:
            return None
        z = layer.world_to_data(self.viewer.dims.point)[0]
        return int(np.clip(np.round(z), 0, info.n_slices - 1))

    def check_labels(self, image_layer, labels_layer) -> ImageInfo:
        """Check the ground-truth layer against the image; returns the image's info."""
        info = self.image_info(image_layer)
        if labels_layer is None:
            raise UserError(
                f"No labels layer for '{image_layer.name}': press 'New labels' and paint a few strokes per class."
            )
        if not isinstance(labels_layer, Labels):
            raise UserError(
                f"'{labels_layer.name}' is a {_kind(labels_layer)} layer; the strokes must be in a Labels layer "
                "(press 'New labels')."
            )
        if tuple(labels_layer.data.shape) != info.spatial_shape:
            raise UserError(
                f"Labels '{labels_layer.name}' have shape {tuple(labels_layer.data.shape)} but image "
                f"'{image_layer.name}' is {info.spatial_shape}: they must match pixel for pixel "
                "(press 'New labels' to create a matching layer)."
            )
        return info

    def class_names_of(self, labels_layer, n_classes: int, fallback: list[str] | None = None) -> list[str]:
        """Class names from the labels layer (features or metadata), else ``fallback``, padded."""
        names = class_names_from_features(getattr(labels_layer, "features", None), n_classes)
        if names is None:
            meta = labels_layer.metadata.get("class_names") if labels_layer is not None else None
            names = list(meta) if meta else None
        if names is None:
            names = list(fallback) if fallback else list(DEFAULT_CLASS_NAMES)
        names = [str(n) for n in names][:n_classes]
        names += [f"class {k}" for k in range(len(names) + 1, n_classes + 1)]
        return names

    def paired_labels(self, image_layer):
        """The Labels layer named ``'<image> labels'``, if any."""
        name = f"{image_layer.name} labels"
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def gather(
        self, image_layer, labels_layer, include_pairs: bool = False, class_names: list[str] | None = None
    ) -> TrainingSet:
        """Copy every painted slice of ``image_layer`` (and, optionally, of other image layers that
        have a matching ``'<image> labels'`` layer) into a :class:`TrainingSet`."""
        info = self.check_labels(image_layer, labels_layer)
        pairs = [(image_layer, labels_layer, info)]
        notes: list[str] = []
        if include_pairs:
            for layer in self.viewer.layers:
                if layer is image_layer or not isinstance(layer, Image):
                    continue
                lab = self.paired_labels(layer)
                if lab is None or lab is labels_layer:
                    continue
                try:
                    other = self.check_labels(layer, lab)
                except UserError as exc:
                    notes.append(f"skipped '{layer.name}': {exc}")
                    continue
                if other.channels != info.channels:
                    notes.append(
                        f"skipped '{layer.name}': it is {_channels_word(other.channels)} but "
                        f"'{image_layer.name}' is {_channels_word(info.channels)}"
                    )
                    continue
                pairs.append((layer, lab, other))
        images, labels, origins, used = [], [], [], []
        for img_layer, lab_layer, inf in pairs:
            data = lab_layer.data
            if inf.is_stack:
                flat = np.asarray(data).reshape(inf.n_slices, -1)
                slices = [int(z) for z in np.flatnonzero(flat.any(axis=1))]
            else:
                slices = [None] if np.any(np.asarray(data)) else []
            for z in slices:
                lab = np.array(data if z is None else data[z], copy=True)
                if lab.dtype.kind not in "iub":
                    raise UserError(f"Labels '{lab_layer.name}' do not hold integers (dtype {lab.dtype}).")
                images.append(self.slice_array(img_layer, z))
                labels.append(lab.astype(np.int32))
                origins.append((img_layer.name, z))
            if slices:
                used += [img_layer, lab_layer]
        if not labels:
            names = self.class_names_of(labels_layer, 2, class_names)
            raise UserError(
                f"No strokes in '{labels_layer.name}': paint a few strokes per class "
                f"(label 1 = {names[0]}, 2 = {names[1]}, ...) before training."
            )
        present = np.unique(np.concatenate([np.unique(lab) for lab in labels]))
        present = present[present > 0]
        if present.max() > 255:
            raise UserError(f"'{labels_layer.name}' uses label {int(present.max())}; at most 255 classes are supported.")
        if present.size < 2:
            k = int(present[0])
            names = self.class_names_of(labels_layer, max(k, 2), class_names)
            raise UserError(
                f"Only class {k} ({names[k - 1]}) is painted in '{labels_layer.name}': "
                "paint strokes of at least two classes."
            )
        n_classes = max(int(present.max()), 2)
        names = self.class_names_of(labels_layer, n_classes, class_names)
        # preview the shown slice if it is painted, else the nearest painted slice of this image
        z_now = self.current_slice(image_layer)
        own = [i for i, (name, _) in enumerate(origins) if name == image_layer.name]
        preview = min(own, key=lambda i: abs((origins[i][1] or 0) - (z_now or 0))) if own else 0
        return TrainingSet(images, labels, origins, used, names, info.channels, n_classes, preview, notes)

    # ----------------------------------------------------------------- model and trainer
    def describe_spec(self, text: str, n_classes: int = 2, in_channels: int = 1) -> tuple[tuple[int, int], int]:
        """``(window, n_params)`` of a spec or preset; raises :class:`UserError` for a bad spec."""
        try:
            spec = parse_spec(text, n_classes)
        except SpecError as exc:
            raise UserError(f"Bad network spec: {exc}") from exc
        n_in, params = in_channels, 0
        for layer in spec.layers:
            if layer.kind == "pool":
                continue
            params += layer.maps * (n_in * layer.size[0] * layer.size[1] + 1)
            n_in = layer.maps
        return spec.window, params

    def model_fits(self, model: Model, tset: TrainingSet, settings: TrainSettings) -> bool:
        """Whether training can continue from ``model`` for this data and these settings."""
        try:
            spec = parse_spec(settings.spec, tset.n_classes)
            second = None if settings.context == "none" else parse_spec(settings.context, tset.n_classes)
        except SpecError:
            return False
        if (model.context is None) != (second is None):
            return False
        if second is not None:  # a two-stage model: the second stage continues, the first is kept
            if model.spec.text != second.text:
                return False
            model = model.context
        return (
            model.in_channels == tset.in_channels
            and model.n_classes == tset.n_classes
            and model.spec.text == spec.text
            and model.activation == settings.activation
            and model.filters == check_filters(settings.filters)
            and self._heads_match(model, settings)
        )

    @staticmethod
    def _heads_match(model: Model, settings: TrainSettings) -> bool:
        """The model has the heads the settings ask for (the image head's loss weight may differ)."""
        sp = model.superpixels
        if (sp is not None) != bool(settings.superpixel_branch):
            return False
        if sp is not None and (round(sp["size"]) != round(float(settings.superpixel_size)) or sp["pool"] != settings.superpixel_pool):
            return False
        return (model.image_head is not None) == bool(settings.image_head)

    def add_heads(self, model: Model, settings: TrainSettings) -> Model:
        """Give a new ``model`` the heads the settings ask for (in place)."""
        try:
            if settings.superpixel_branch:
                add_superpixel_branch(model, float(settings.superpixel_size), SUPERPIXEL_COMPACTNESS, settings.superpixel_pool)
            if settings.image_head:
                add_image_head(model, float(settings.image_head_weight))
        except InputError as exc:
            what = "superpixel branch" if settings.superpixel_branch and model.superpixels is None else "image-level head"
            raise UserError(f"Cannot add the {what}: {exc}.") from exc
        return model

    def build_model(self, tset: TrainingSet, settings: TrainSettings) -> tuple[Model, bool]:
        """The model to train: a copy of the current one if it fits and continuing is asked, else new.

        Returns ``(model, continued)``.
        """
        if settings.continue_training and self.model is not None and self.model_fits(self.model, tset, settings):
            model = self.model.copy()
            model.class_names = list(tset.class_names)
            if model.image_head is not None:
                model.image_head["loss_weight"] = float(settings.image_head_weight)
            return model, True
        try:
            model = Model.for_data(
                tset.images, tset.labels, spec=settings.spec, activation=settings.activation,
                seed=settings.seed, class_names=tset.class_names, filters=settings.filters,
            )
        except SpecError as exc:
            raise UserError(f"Bad network spec: {exc}") from exc
        except InputError as exc:
            raise UserError(str(exc)) from exc
        return self.add_heads(model, settings), False

    def make_trainer(self, tset: TrainingSet, settings: TrainSettings):
        """A :class:`napari_mpf.engine.Trainer` for ``tset`` (not started)."""
        model, continued = self.build_model(tset, settings)
        config = TrainConfig(
            steps=int(settings.steps), optimizer=settings.optimizer, lr=settings.lr,
            augment=bool(settings.augment), balance=bool(settings.balance), crop=int(settings.step_size),
            seed=int(settings.seed),
            preview_every=int(settings.preview_every), preview_index=int(tset.preview_index),
            context=None if continued or settings.context == "none" else settings.context,
        )
        try:
            trainer = Trainer(model, tset.images, tset.labels, config)
        except (InputError, SpecError) as exc:
            raise UserError(str(exc)) from exc
        except ValueError as exc:
            raise UserError(f"Cannot train: {exc}") from exc
        self.trainer = trainer
        self.training_set = tset
        self._continued = continued
        self._recipe = settings.recipe()
        return trainer

    def adopt(self, model: Model, tset: TrainingSet | None = None) -> Model:
        """Make ``model`` (a trainer's last good weights) the current model, with provenance."""
        model = model.copy()
        if tset is not None:
            prov = dict(model.provenance)
            prov.setdefault("napari_mpf_version", __version__)
            prov["trained_on"] = sorted({name for name, _ in tset.origins})
            prov["painted_pixels"] = tset.n_painted
            prov["recipe"] = self._recipe
            prov["trained_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
            model.provenance = prov
        self.model = model
        return model

    def check_model_fits_image(self, model: Model, image_layer) -> ImageInfo:
        """Refuse images whose channels differ from the model's (RGB vs grayscale)."""
        info = self.image_info(image_layer)
        if info.channels != model.in_channels:
            raise UserError(
                f"The model expects {_channels_word(model.in_channels)} images but '{image_layer.name}' is "
                f"{_channels_word(info.channels)}."
            )
        return info

    # ----------------------------------------------------------------- prediction
    def predict_iter(
        self, model: Model, image_layer, slices: list[int | None], refine: float | None = None,
        augment: bool = False,
    ) -> Iterator[tuple[int | None, np.ndarray, np.ndarray | None]]:
        """Yield ``(z, probabilities (K, H, W), image-level probabilities (K - 1,) or None)`` per
        slice; run it in a worker. ``augment``: mean over the 8 rotations and flips (test-time
        augmentation); ``refine``: then average the probabilities over SLIC superpixels of about
        that many pixels (the image-level head's output is not changed by either)."""
        for z in slices:
            img = self.slice_array(image_layer, z)
            pred = predict(model, img)
            proba = predict_proba(model, img, augment=True) if augment else pred.probabilities
            if refine:
                proba = refine_with_superpixels(model, img, proba, float(refine), SUPERPIXEL_COMPACTNESS)
            yield z, proba, pred.image_probabilities

    def all_slices(self, image_layer) -> list[int | None]:
        info = self.image_info(image_layer)
        return list(range(info.n_slices)) if info.is_stack else [None]

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
        """Whether ``image_layer`` gets lazy (dask) outputs: large, or not a NumPy array."""
        data = image_layer.data
        return not isinstance(data, np.ndarray) or data.size > self.LAZY_PIXELS

    def lazy_outputs(self, model: Model, image_layer) -> tuple[list[Image], Labels]:
        """Probability and segmentation layers as dask arrays, computed as napari shows slices."""
        import dask.array as da

        info = self.check_model_fits_image(model, image_layer)
        self._refuse_superpixel_branch(model, image_layer, "is large or not in memory, so it is predicted in tiles")
        data = image_layer.data
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
            raise UserError(f"Choose a store whose name ends with .zarr (got '{p.name}').")
        try:
            volume = ArrayVolume(image_layer.data, rgb=image_layer.rgb, name=image_layer.name)
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
        probs = da.from_zarr(str(path), component="probabilities")
        scale = float(meta.get("probability_scale", 1.0))
        probs = probs.astype(np.float32) / np.float32(scale) if scale != 1.0 else probs
        seg = da.from_zarr(str(path), component="segmentation")
        if not info.is_stack:
            probs, seg = probs[0], seg[0]
        return self._show_dask(image_layer, probs, seg, list(meta["class_names"]), {"lazy": True, "zarr": str(path)})

    def _show_dask(self, image_layer, probs, seg, class_names: list[str], meta: dict) -> tuple[list[Image], Labels]:
        stack = probs.ndim == 4
        layers = []
        for k, name in self.prob_names(image_layer, class_names):
            layer = self._dask_layer(
                name, "probability", Image, probs[:, k] if stack else probs[k], image_layer,
                colormap=PROB_COLORMAPS.get(k + 1, "gray"), contrast_limits=(0.0, 1.0), blending="additive", opacity=0.7,
            )
            layer.metadata.update(meta, **{"class": class_names[k]})
            layers.append(layer)
        seg_layer = self._dask_layer(
            f"{image_layer.name} segmentation", "segmentation", Labels, seg, image_layer,
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
        nd = data.ndim
        meta = {OUTPUT_KEY: role, "image": image_layer.name}
        adder = self.viewer.add_image if kind is Image else self.viewer.add_labels
        return adder(data, name=name, scale=image_layer.scale[-nd:], translate=image_layer.translate[-nd:], metadata=meta, **kwargs)

    # ----------------------------------------------------------------- labels for the user
    def create_labels(self, image_layer, class_names: list[str]) -> Labels:
        """Add an empty ``'<image> labels'`` layer of the right shape with named classes, ready to paint."""
        info = self.image_info(image_layer)
        names = [n for n in (class_names or []) if n] or list(DEFAULT_CLASS_NAMES)
        if len(names) < 2:
            raise UserError("Give at least two class names, e.g. 'background, membrane'.")
        name = f"{image_layer.name} labels"
        if name in self.viewer.layers:
            existing = self.viewer.layers[name]
            if isinstance(existing, Labels) and tuple(existing.data.shape) == info.spatial_shape:
                self.viewer.layers.selection.active = existing
                return existing
        layer = self.viewer.add_labels(
            np.zeros(info.spatial_shape, np.uint8), name=name,
            scale=image_layer.scale[-len(info.spatial_shape):],
            translate=image_layer.translate[-len(info.spatial_shape):],
            features=class_features(names), colormap=class_colormap(len(names)),
            metadata={"class_names": names}, opacity=0.8,
        )
        layer.brush_size = 5
        layer.selected_label = 1
        layer.mode = "paint"
        return layer

"""The trainer's logic on napari layers, without Qt: read images and strokes, build and continue the
network, predict; the output layers are written by its :class:`~napari_mpf._qt.output_layers.OutputLayers`.

:class:`Controller` is what :class:`~napari_mpf._qt.trainer_widget.TrainerWidget` calls; tests can
drive it directly (run its generators synchronously).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from napari.layers import Image, Labels, Layer

from .. import __version__, recipe
from .._layer_style import (
    DEFAULT_CLASS_NAMES,
    class_colormap,
    class_features,
    class_names_from_features,
)
from ..engine import InputError, Model, SpecError, TrainConfig, Trainer, parse_spec
from ..engine.network.features import FILTER_BANKS, check_filters
from ..engine.network.heads import add_image_head, add_superpixel_branch
from ..engine.network.predict import predict, predict_proba, refine_with_superpixels
from ..engine.post.objects import ObjectCounts
from .output_layers import OUTPUT_KEY, OutputLayers, UserError, full_resolution

__all__ = ["UserError", "TrainSettings", "ImageInfo", "TrainingSet", "Controller", "OUTPUT_KEY", "heads_text"]

_RECIPE = recipe.defaults()

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


class Controller(OutputLayers):
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
        shape = tuple(full_resolution(layer).shape)
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
        data = full_resolution(layer)
        data = data if z is None else data[z]
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

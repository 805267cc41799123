"""The trainable network: a resolved spec plus weights, activation, classes and normalisation."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .features import apply_filters, check_filters, n_outputs
from .inputs import as_image, check_training_pairs
from .spec import DEFAULT_PRESET, NetworkSpec, SpecError, check_network_size, parse_spec

__all__ = ["Model"]


@dataclass
class Model:
    """An MPCNN: ``weights[n]`` is ``(Cout, Cin, kh, kw)`` for the n-th conv/FC layer, ``biases[n]`` ``(Cout,)``.

    Class ``k`` (0-based output ``k``) is label value ``k + 1``. Images are normalised per channel as
    ``(image - norm_mean) / norm_std`` before the first layer; with ``filters`` (see :mod:`.features`)
    the first layer then reads the normalised channels and their filtered versions.

    Optional heads on the features that feed the last (1x1) layer (see :mod:`.heads`):
    ``superpixels`` (a superpixel-pooling branch whose class scores add to every pixel's, Schuurmans
    et al. 2018, V3) and ``image_head`` (an image-level "class present" classifier, Haloi 2017).
    Their parameters follow the layers' in ``weights``/``biases`` (superpixel branch first).

    ``context`` (auto-context, Tu & Bai 2010): an earlier model of the same image channels and
    classes; its probabilities of classes ``2..K`` join the image's channels as this model's input
    (the *stage* channels, normalised as ``(p - 0.5) / 0.5``), so this stage sees the first stage's
    answer around every pixel. :meth:`stage_input` builds that input.
    """

    spec: NetworkSpec
    activation: str
    in_channels: int
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    class_names: list[str]
    norm_mean: np.ndarray
    norm_std: np.ndarray
    provenance: dict = field(default_factory=dict)
    superpixels: dict | None = None  # {"size", "compactness", "pool"}
    image_head: dict | None = None  # {"loss_weight"}
    filters: dict | None = None  # input filter bank {"smooth"/"gradient"/"hessian": sigmas}
    #: per filter output (channels after the first ``in_channels``): standardisation, as ``norm_*``
    filter_mean: np.ndarray | None = None
    filter_std: np.ndarray | None = None
    context: Model | None = None

    @property
    def stage_channels(self) -> int:
        """Channels of this stage's input: the image's, plus ``K - 1`` with a ``context`` model."""
        return self.in_channels + (0 if self.context is None else self.context.n_classes - 1)

    @property
    def net_in_channels(self) -> int:
        """Channels the first layer reads: the stage's, times the input filters' outputs."""
        return self.stage_channels * n_outputs(self.filters)

    def stage_input(self, image, probabilities: np.ndarray | None = None) -> np.ndarray:
        """The checked ``(C, H, W)`` image, followed with a ``context`` model by that model's
        probabilities of classes ``2..K`` (raw, before this model's normalisation).
        ``probabilities``: the context model's ``(K, H, W)`` for these pixels, needed with a
        ``context`` (:func:`~napari_mpf.engine.network.predict.staged_input` computes them)."""
        x = as_image(image, self.in_channels)
        if self.context is None:
            return x
        if probabilities is None:
            raise ValueError("a two-stage model's input needs its first stage's probabilities "
                             "(engine.network.predict.staged_input computes them)")
        return np.concatenate([x, probabilities[1:].astype(x.dtype)])

    @property
    def n_classes(self) -> int:
        return self.spec.n_classes

    @property
    def window(self) -> tuple[int, int]:
        return self.spec.window

    @property
    def n_layer_params(self) -> int:
        """Number of conv/FC layers (their parameters come first in ``weights``/``biases``)."""
        return sum(layer.kind != "pool" for layer in self.spec.layers)

    @property
    def n_features(self) -> int:
        """Maps that feed the last layer: what the heads see at every pixel."""
        return int(self.weights[self.n_layer_params - 1].shape[1])

    def head_params(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(weight, bias)`` of head ``"superpixels"`` or ``"image_head"``."""
        index = self.n_layer_params
        if name == "image_head" and self.superpixels is not None:
            index += 1
        if getattr(self, name) is None:
            raise KeyError(f"this model has no {name}")
        return self.weights[index], self.biases[index]

    @property
    def dtype(self) -> np.dtype:
        return self.weights[0].dtype

    @property
    def n_params(self) -> int:
        return int(sum(w.size for w in self.weights) + sum(b.size for b in self.biases))

    def copy(self) -> Model:
        return copy.deepcopy(self)

    def astype(self, dtype) -> Model:
        """A copy computing in ``dtype`` (float32 for speed, float64 for checks)."""
        out = self.copy()
        out.weights = [w.astype(dtype) for w in self.weights]
        out.biases = [b.astype(dtype) for b in self.biases]
        if self.context is not None:
            out.context = self.context.astype(dtype)
        return out

    def describe(self) -> str:
        h, w = self.window
        heads = ""
        if self.superpixels is not None:
            heads += f" | superpixel branch ({self.superpixels['pool']}, ~{self.superpixels['size']:g} px)"
        if self.image_head is not None:
            heads += f" | image-level head (weight {self.image_head['loss_weight']:g})"
        if self.filters:
            heads += " | input filters (" + ", ".join(f"{k} {v}" for k, v in self.filters.items() if v) + ")"
        if self.context is not None:
            heads += f" | auto-context on a first stage ({self.context.spec.text})"
        return (
            f"{self.spec.text} | {self.activation} | window {h}x{w} | "
            f"{self.in_channels} channel(s) -> {self.n_classes} classes{heads} | {self.n_params:,} parameters"
        )

    @classmethod
    def create(
        cls,
        spec: str | NetworkSpec,
        in_channels: int,
        n_classes: int,
        activation: str = "tanh",
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        dtype=np.float32,
        filters: dict | str | None = None,
        context: Model | None = None,
    ) -> Model:
        """A freshly initialised network (Glorot-uniform for tanh, He-normal for ReLU, zero biases);
        ``filters``: input filter bank (a name from ``features.FILTER_BANKS`` or its settings);
        ``context``: a trained first stage (auto-context, see :class:`Model`)."""
        if activation not in ("tanh", "relu"):
            raise SpecError(f"activation must be 'tanh' or 'relu', got {activation!r}")
        if in_channels < 1:
            raise SpecError(f"in_channels must be at least 1, got {in_channels}")
        if isinstance(spec, str):
            spec = parse_spec(spec, n_classes)
        elif spec.n_classes != n_classes:
            raise SpecError(f"the spec has {spec.n_classes} outputs but n_classes is {n_classes}")
        names = _class_names(class_names, n_classes)
        filters = check_filters(filters)
        check_network_size(spec, (in_channels + (n_classes - 1 if context is not None else 0)) * n_outputs(filters))
        n_context = 0
        if context is not None:
            if context.in_channels != in_channels or context.n_classes != n_classes:
                raise SpecError(
                    f"the first stage reads {context.in_channels} channel(s) into {context.n_classes} classes; "
                    f"this model {in_channels} into {n_classes}: they must match"
                )
            n_context = n_classes - 1
        rng = np.random.default_rng(seed)
        weights, biases = [], []
        n_stage = in_channels + n_context
        n_in = n_stage * n_outputs(filters)
        n_extra = n_in - n_stage
        for layer in spec.layers:
            if layer.kind == "pool":
                continue
            kh, kw = layer.size
            fan_in = n_in * kh * kw
            shape = (layer.maps, n_in, kh, kw)
            if activation == "relu":
                w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
            else:
                limit = np.sqrt(6.0 / (fan_in + layer.maps * kh * kw))
                w = rng.uniform(-limit, limit, size=shape)
            weights.append(w.astype(dtype))
            biases.append(np.zeros(layer.maps, dtype=dtype))
            n_in = layer.maps
        return cls(
            spec=spec,
            activation=activation,
            in_channels=in_channels,
            weights=weights,
            biases=biases,
            class_names=names,
            norm_mean=np.concatenate([np.zeros(in_channels), np.full(n_context, 0.5)]).astype(np.float32),
            norm_std=np.concatenate([np.ones(in_channels), np.full(n_context, 0.5)]).astype(np.float32),
            provenance={"seed": int(seed), "steps": 0},
            filters=filters,
            filter_mean=None if filters is None else np.zeros(n_extra, np.float32),
            filter_std=None if filters is None else np.ones(n_extra, np.float32),
            context=context,
        )

    @classmethod
    def for_data(
        cls,
        images,
        labels,
        spec: str | NetworkSpec = DEFAULT_PRESET,
        activation: str = "tanh",
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        filters: dict | str | None = None,
        context: Model | None = None,
    ) -> Model:
        """A new network sized for these (image, labels) pairs, with normalisation from the images
        (``context``: a trained first stage, see :class:`Model`)."""
        imgs, labs = check_training_pairs(images, labels)
        n_classes = max(int(lab.max()) for lab in labs)
        if context is not None:
            n_classes = max(n_classes, context.n_classes)
        model = cls.create(spec, imgs[0].shape[0], n_classes, activation, seed, class_names, filters=filters,
                           context=context)
        c = model.in_channels
        model.norm_mean[:c], model.norm_std[:c] = normalisation_from(imgs)
        if model.filters and context is not None:
            raise SpecError("input filters on a second stage need its first stage's predictions: train it with "
                            "TrainConfig(context=...) instead")
        model.fit_filter_statistics(imgs)
        return model

    def fit_filter_statistics(self, stage_inputs: Iterable[np.ndarray]) -> None:
        """Set ``filter_mean``/``filter_std`` from ``(C, H, W)`` stage inputs (the images; with a
        ``context`` model, :meth:`stage_input`), after ``norm_*`` is set: every filter output then
        enters the first layer with zero mean and unit variance (without it, a tanh network on the
        magnetic tiles did not learn: training loss 0.56 against 0.24)."""
        if not self.filters:
            return
        mean, std = self.norm_mean[:, None, None], self.norm_std[:, None, None]
        c = self.stage_channels
        self.filter_mean, self.filter_std = normalisation_from(
            apply_filters((as_image(np.asarray(x, np.float32), c) - mean) / std, self.filters)[c:]
            for x in stage_inputs
        )

def normalisation_from(images: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over ``(C, H, W)`` images (std 1 for constant
    channels); ``images`` may be a generator, so a data set can be streamed one image at a time."""
    total = total_sq = 0.0
    count = 0
    for img in images:
        flat = img.reshape(img.shape[0], -1).astype(np.float64)
        total = total + flat.sum(axis=1)
        total_sq = total_sq + (flat**2).sum(axis=1)
        count += flat.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std[std < 1e-6 * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def _class_names(names: Sequence[str] | None, n_classes: int) -> list[str]:
    if names is None:
        return [f"class {k + 1}" for k in range(n_classes)]
    names = [str(n) for n in names]
    if len(names) != n_classes:
        raise SpecError(f"{len(names)} class name(s) given for {n_classes} classes")
    return names

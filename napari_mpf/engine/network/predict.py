"""Dense prediction for images of any size, tiled so that memory stays bounded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dihedral import dihedral, undo_dihedral
from .features import apply_filters
from .heads import PooledFeatures, has_heads
from .inputs import InputError, as_image
from .model import Model
from .mpf import forward, forward_features
from .padding import pad_image, padded_size
from .superpixels import refine_probabilities, slic_superpixels, sp_broadcast

__all__ = [
    "DEFAULT_TILE",
    "Prediction",
    "logits_from_padded",
    "normalise",
    "predict",
    "predict_from_padded",
    "predict_logits",
    "predict_proba",
    "refine_with_superpixels",
    "segment",
    "sigmoid",
    "softmax",
]

#: Output tile side (pixels) for prediction; rounded to a multiple of the pooling factor.
DEFAULT_TILE = 512


def staged_input(model: Model, image) -> np.ndarray:
    """:meth:`Model.stage_input` of ``image``, the first stage's probabilities computed here."""
    x = as_image(image, model.in_channels)
    return model.stage_input(x, None if model.context is None else predict_proba(model.context, x))


def normalise(model: Model, image, extended: bool = False, staged: bool = False) -> np.ndarray:
    """The first layer's input: the checked ``(C, H, W)`` image (with a ``context`` model, its
    stage input, :func:`staged_input`) normalised with the model's
    statistics, in the model's dtype, followed by its input filters' outputs (standardised with
    ``filter_mean``/``filter_std``) when the model has them; the first ``C`` channels stay the
    normalised image. ``extended``: ``image`` is a region
    that holds the filters' context (:func:`~napari_mpf.engine.network.features.radius` pixels each side),
    which the result drops. ``staged``: ``image`` already is the stage input (required with
    ``extended`` for a model with a ``context``, whose probabilities need the whole image)."""
    if model.context is not None and not staged:
        if extended:
            raise ValueError("a region of a two-stage model needs its stage input (staged=True)")
        image = staged_input(model, image)
    x = as_image(image, model.stage_channels)
    dtype = model.dtype
    mean = model.norm_mean.astype(dtype)[:, None, None]
    std = model.norm_std.astype(dtype)[:, None, None]
    with np.errstate(over="ignore", invalid="ignore"):
        x = apply_filters((x.astype(dtype) - mean) / std, model.filters, extended)
        if model.filters:
            c = model.stage_channels
            x[c:] -= model.filter_mean.astype(dtype)[:, None, None]
            x[c:] /= model.filter_std.astype(dtype)[:, None, None]
    if not np.isfinite(x).all():
        raise InputError(
            "normalised with the model's mean and standard deviation, the image's values exceed the float32 "
            "range the network computes in; rescale the image (or check the model)"
        )
    return x


@dataclass
class Prediction:
    """Class scores ``(K, H, W)`` of every pixel; with an image-level head also its logits
    ``(K - 1,)`` ("class k + 1 present"); with a superpixel branch the superpixels used."""

    logits: np.ndarray
    image_logits: np.ndarray | None = None
    segments: np.ndarray | None = None

    @property
    def probabilities(self) -> np.ndarray:
        return softmax(self.logits.astype(np.float32))

    @property
    def image_probabilities(self) -> np.ndarray | None:
        return None if self.image_logits is None else sigmoid(self.image_logits)


def predict(model: Model, image, tile: int = DEFAULT_TILE) -> Prediction:
    """Everything the model says about an ``(H, W)`` or ``(C, H, W)`` image (see :class:`Prediction`)."""
    x = normalise(model, image)
    _, h, w = x.shape
    py, px = model.spec.pool_factor
    segments = None
    if model.superpixels is not None:
        segments = slic_superpixels(x[: model.in_channels], model.superpixels["size"], model.superpixels["compactness"])
    padded = pad_image(x, model.window, (padded_size(h, py), padded_size(w, px)))
    return predict_from_padded(model, padded, (h, w), tile, segments)


def predict_logits(model: Model, image, tile: int = DEFAULT_TILE) -> np.ndarray:
    """Class scores ``(K, H, W)`` for every pixel of an ``(H, W)`` or ``(C, H, W)`` image."""
    return predict(model, image, tile).logits


def logits_from_padded(model: Model, padded: np.ndarray, shape: tuple[int, int], tile: int = DEFAULT_TILE) -> np.ndarray:
    """Class scores ``(K, h, w)`` from a normalised input that holds the window's margins and
    covers at least ``(padded_size(h), padded_size(w))`` outputs, evaluated in tiles of at most
    ``tile`` outputs (rounded to the pooling factor). For a part of an image (chunks): a model with
    a superpixel branch needs the whole image and is refused; an image-level head is ignored."""
    if model.superpixels is not None:
        raise InputError(
            "a model with a superpixel branch needs the whole image at once; "
            "predict in memory (chunked prediction is not available for it)"
        )
    return predict_from_padded(model, padded, shape, tile, None, heads=False).logits


def predict_from_padded(
    model: Model, padded: np.ndarray, shape: tuple[int, int], tile: int = DEFAULT_TILE,
    segments: np.ndarray | None = None, heads: bool = True,
) -> Prediction:
    """:class:`Prediction` of a whole image from its padded normalised input, in tiles; the heads'
    poolings are combined over the tiles, so the result does not depend on ``tile``."""
    h, w = shape
    py, px = model.spec.pool_factor
    wh, ww = model.window
    th, tw = padded_size(max(tile, py), py), padded_size(max(tile, px), px)
    oh, ow = padded_size(h, py), padded_size(w, px)
    out = np.empty((model.n_classes, h, w), model.dtype)
    use_heads = heads and has_heads(model)
    pooled = PooledFeatures()
    n_segments = int(segments.max()) + 1 if segments is not None and segments.size else 0
    for y0 in range(0, h, th):
        ty = min(th, oh - y0)
        for x0 in range(0, w, tw):
            tx = min(tw, ow - x0)
            part = padded[:, y0 : y0 + ty + wh - 1, x0 : x0 + tx + ww - 1]
            vh, vw = min(ty, h - y0), min(tx, w - x0)
            if use_heads:
                logits, feats, _ = forward_features(model, part)
                tile_segments = None
                if segments is not None:
                    tile_segments = np.full((ty, tx), -1, np.int32)
                    tile_segments[:vh, :vw] = segments[y0 : y0 + vh, x0 : x0 + vw]
                pooled.add(model, feats, tile_segments, n_segments, (vh, vw))
            else:
                logits, _ = forward(model, part)
            out[:, y0 : y0 + vh, x0 : x0 + vw] = logits[:, :vh, :vw]
    prediction = Prediction(out, segments=segments if use_heads else None)
    if use_heads and model.superpixels is not None:
        out += sp_broadcast(pooled.superpixel_scores(model), np.ascontiguousarray(segments, np.int32))
    if not np.isfinite(out).all():  # never hand on NaN scores: they would make NaN probabilities
        raise InputError("the model's class scores for this image are not finite (they overflow float32); "
                         "the model file or the image's values are unusable")
    if use_heads and model.image_head is not None:
        prediction.image_logits = pooled.image_logits(model, out)
    return prediction


def refine_with_superpixels(model: Model, image, probabilities: np.ndarray, size: float,
                            compactness: float = 0.3) -> np.ndarray:
    """Superpixel post-processing (Schuurmans et al. 2018, V1): every class probability averaged
    over each SLIC superpixel of mean area ``size`` pixels (computed on the normalised image)."""
    x = as_image(image, model.in_channels)  # the image channels only: no filters, no first stage
    c, dtype = model.in_channels, model.dtype
    mean, std = model.norm_mean[:c].astype(dtype)[:, None, None], model.norm_std[:c].astype(dtype)[:, None, None]
    segments = slic_superpixels((x.astype(dtype) - mean) / std, size, compactness)
    return refine_probabilities(probabilities, segments)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the first axis."""
    z = logits - logits.max(axis=0, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=0, keepdims=True)
    return z


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)


def predict_proba(model: Model, image, tile: int = DEFAULT_TILE, augment: bool = False) -> np.ndarray:
    """Class probabilities ``(K, H, W)`` (float32) for every pixel.

    With ``augment`` (test-time augmentation) they are the mean over the 8 rotations and flips of
    the image, each mapped back: 8 times the work.
    """
    if not augment:
        return softmax(predict_logits(model, image, tile).astype(np.float32))
    x = as_image(image, model.in_channels)
    total = None
    for k in range(8):
        p = undo_dihedral(softmax(predict_logits(model, dihedral(x, k), tile).astype(np.float32)), k)
        total = p.copy() if total is None else total + p
    return total / np.float32(8)


def segment(probabilities: np.ndarray) -> np.ndarray:
    """Labels ``(H, W)`` with values ``1..K`` (argmax of the probabilities + 1)."""
    k = probabilities.shape[0]
    dtype = np.uint8 if k < 255 else np.uint16
    return (np.argmax(probabilities, axis=0) + 1).astype(dtype)

"""Dense prediction for images of any size, tiled so that memory stays bounded."""

from __future__ import annotations

import numpy as np

from .inputs import as_image
from .model import Model
from .network import forward, pad_image, padded_size

__all__ = ["logits_from_padded", "normalise", "predict_logits", "predict_proba", "softmax", "segment", "DEFAULT_TILE"]

#: Output tile side (pixels) for prediction; rounded to a multiple of the pooling factor.
DEFAULT_TILE = 512


def normalise(model: Model, image) -> np.ndarray:
    """Checked ``(C, H, W)`` image, normalised with the model's statistics, in the model's dtype."""
    x = as_image(image, model.in_channels)
    dtype = model.dtype
    mean = model.norm_mean.astype(dtype)[:, None, None]
    std = model.norm_std.astype(dtype)[:, None, None]
    return (x.astype(dtype) - mean) / std


def predict_logits(model: Model, image, tile: int = DEFAULT_TILE) -> np.ndarray:
    """Class scores ``(K, H, W)`` for every pixel of an ``(H, W)`` or ``(C, H, W)`` image."""
    x = normalise(model, image)
    _, h, w = x.shape
    py, px = model.spec.pool_factor
    padded = pad_image(x, model.window, (padded_size(h, py), padded_size(w, px)))
    return logits_from_padded(model, padded, (h, w), tile)


def logits_from_padded(model: Model, padded: np.ndarray, shape: tuple[int, int], tile: int = DEFAULT_TILE) -> np.ndarray:
    """Class scores ``(K, h, w)`` from a normalised input that holds the window's margins and
    covers at least ``(padded_size(h), padded_size(w))`` outputs, evaluated in tiles of at most
    ``tile`` outputs (rounded to the pooling factor)."""
    h, w = shape
    py, px = model.spec.pool_factor
    wh, ww = model.window
    th, tw = padded_size(max(tile, py), py), padded_size(max(tile, px), px)
    oh, ow = padded_size(h, py), padded_size(w, px)
    out = np.empty((model.n_classes, h, w), model.dtype)
    for y0 in range(0, h, th):
        ty = min(th, oh - y0)
        for x0 in range(0, w, tw):
            tx = min(tw, ow - x0)
            logits, _ = forward(model, padded[:, y0 : y0 + ty + wh - 1, x0 : x0 + tx + ww - 1])
            out[:, y0 : y0 + ty, x0 : x0 + tx] = logits[:, : h - y0, : w - x0]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the first axis."""
    z = logits - logits.max(axis=0, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=0, keepdims=True)
    return z


def predict_proba(model: Model, image, tile: int = DEFAULT_TILE) -> np.ndarray:
    """Class probabilities ``(K, H, W)`` (float32) for every pixel."""
    return softmax(predict_logits(model, image, tile).astype(np.float32))


def segment(probabilities: np.ndarray) -> np.ndarray:
    """Labels ``(H, W)`` with values ``1..K`` (argmax of the probabilities + 1)."""
    k = probabilities.shape[0]
    dtype = np.uint8 if k < 255 else np.uint16
    return (np.argmax(probabilities, axis=0) + 1).astype(dtype)

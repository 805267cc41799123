"""Heads on the per-pixel features that feed the last layer, trained end to end with the network.

- **Superpixel branch** (Schuurmans, Berman & Blaschko 2018, "V3 hybrid"): the features are pooled
  (max or mean) over each SLIC superpixel, a fully connected layer maps them to class scores, and
  those scores are added to the logits of every pixel of the superpixel.
- **Image-level head** (Haloi 2017): global max- and mean-pooling over the image of the features
  and of the pixels' class scores, then a fully connected layer gives one "class present" logit per
  class after the first (for two classes: "defect present"), trained with a sigmoid cross entropy
  on image-level labels beside the pixel loss (its weight is ``image_head["loss_weight"]``). The
  pooled class scores let image-level labels teach the segmentation too (the highest-scoring pixel
  of an image without defects is pushed down, that of a defective image up).

Both poolings combine across tiles (max of maxima, sums of sums), so prediction in tiles equals
prediction on the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .inputs import InputError
from .model import Model
from .mpf import Cache, Workspace, backward, forward_features
from .superpixels import sp_broadcast, sp_broadcast_backward, sp_pool_backward, sp_pool_forward

__all__ = [
    "HeadCache",
    "add_image_head",
    "add_superpixel_branch",
    "has_heads",
    "image_loss",
    "model_backward",
    "model_forward",
    "PooledFeatures",
    "image_head_inputs",
]

POOLS = ("max", "mean")


def has_heads(model: Model) -> bool:
    return model.superpixels is not None or model.image_head is not None


def _check_last_layer(model: Model) -> None:
    last = model.spec.layers[-1]
    if last.kind == "pool" or tuple(last.size) != (1, 1):
        raise InputError("heads need a network whose last layer is 1x1 (fully connected)")


def add_superpixel_branch(model: Model, size: float = 400.0, compactness: float = 0.3, pool: str = "max") -> Model:
    """Give ``model`` a superpixel branch (in place; zero weights, so its output starts unchanged).

    ``size``: mean superpixel area in pixels (SLIC on the normalised image); ``pool``: max or mean.
    """
    if model.superpixels is not None:
        raise InputError("the model already has a superpixel branch")
    if not (size > 0 and np.isfinite(size)):
        raise InputError(f"the superpixel size must be a positive number of pixels, got {size}")
    if not (compactness > 0 and np.isfinite(compactness)):
        raise InputError(f"the superpixel compactness must be positive, got {compactness}")
    if pool not in POOLS:
        raise InputError(f"superpixel pooling must be one of {', '.join(POOLS)}, got {pool!r}")
    _check_last_layer(model)
    k, c = model.n_classes, model.n_features
    index = model.n_layer_params
    model.weights.insert(index, np.zeros((k, c), model.dtype))
    model.biases.insert(index, np.zeros(k, model.dtype))
    model.superpixels = {"size": float(size), "compactness": float(compactness), "pool": pool}
    return model


def add_image_head(model: Model, loss_weight: float = 1.0) -> Model:
    """Give ``model`` an image-level "class present" head (in place; zero weights)."""
    if model.image_head is not None:
        raise InputError("the model already has an image-level head")
    if not (loss_weight >= 0 and np.isfinite(loss_weight)):
        raise InputError(f"the image-level loss weight must be a number >= 0, got {loss_weight}")
    _check_last_layer(model)
    j = model.n_classes - 1
    model.weights.append(np.zeros((j, image_head_inputs(model)), model.dtype))
    model.biases.append(np.zeros(j, model.dtype))
    model.image_head = {"loss_weight": float(loss_weight)}
    return model


def image_head_inputs(model: Model) -> int:
    """Inputs of the image-level head: max and mean of every feature map and of every class score."""
    return 2 * (model.n_features + model.n_classes)


def _global_pool(feats: np.ndarray, logits: np.ndarray, valid: tuple[int, int]):
    """``(g, arg)``: per map, the max and the mean over the valid block of features then logits."""
    vh, vw = valid
    maps = np.concatenate([feats[:, :vh, :vw], logits[:, :vh, :vw].astype(feats.dtype)]).reshape(
        feats.shape[0] + logits.shape[0], -1)
    arg = maps.argmax(axis=1)
    c = feats.shape[0]
    top, mean = maps[np.arange(maps.shape[0]), arg], maps.mean(axis=1)
    g = np.concatenate([top[:c], mean[:c], top[c:], mean[c:]]).astype(feats.dtype)
    return g, arg


@dataclass
class PooledFeatures:
    """Superpixel and global poolings of the features, combinable across tiles."""

    sp_value: np.ndarray | None = None  # (C, S) max, or sum for mean pooling
    sp_count: np.ndarray | None = None  # (S,) pixels seen (mean), or 1 where a max was seen
    g_max: np.ndarray | None = None  # (C,)
    g_sum: np.ndarray | None = None  # (C,)
    g_count: int = 0

    def add(self, model: Model, features: np.ndarray, segments: np.ndarray | None, n_segments: int,
            valid: tuple[int, int]) -> None:
        """Pool one tile's features ``(C, h, w)`` (``valid``: its top-left block inside the image;
        ``segments`` global superpixel ids of the tile, -1 outside the image)."""
        if model.superpixels is not None:
            pool = model.superpixels["pool"]
            value, aux = sp_pool_forward(features, segments, n_segments, pool)
            if pool == "mean":
                count = np.asarray(aux, np.float64)
                total = value.astype(np.float64) * count
                if self.sp_value is None:
                    self.sp_value, self.sp_count = total, count
                else:
                    self.sp_value += total
                    self.sp_count += count
            else:
                seen = np.asarray(aux)[0] >= 0
                if self.sp_value is None:
                    self.sp_value = np.where(seen, value, -np.inf)
                    self.sp_count = seen.astype(np.float64)
                else:
                    np.maximum(self.sp_value, np.where(seen, value, -np.inf), out=self.sp_value)
                    self.sp_count = np.maximum(self.sp_count, seen)
        if model.image_head is not None:
            vh, vw = valid
            region = features[:, :vh, :vw].reshape(features.shape[0], -1)
            t_max, t_sum = region.max(axis=1), region.sum(axis=1, dtype=np.float64)
            if self.g_max is None:
                self.g_max, self.g_sum = t_max, t_sum
            else:
                np.maximum(self.g_max, t_max, out=self.g_max)
                self.g_sum += t_sum
            self.g_count += region.shape[1]

    def superpixel_scores(self, model: Model) -> np.ndarray:
        """Class scores ``(K, S)`` of every superpixel."""
        w, b = model.head_params("superpixels")
        seen = self.sp_count > 0
        if model.superpixels["pool"] == "mean":
            pooled = self.sp_value / np.maximum(self.sp_count, 1)
        else:
            pooled = np.where(seen, self.sp_value, 0.0)
        return (w.astype(np.float64) @ pooled + b[:, None]).astype(model.dtype)

    def image_logits(self, model: Model, logits: np.ndarray) -> np.ndarray:
        """Image-level logits ``(K - 1,)`` given the whole image's final class scores ``(K, H, W)``."""
        w, b = model.head_params("image_head")
        z = logits.reshape(logits.shape[0], -1)
        g = np.concatenate([self.g_max, self.g_sum / max(self.g_count, 1), z.max(axis=1),
                            z.mean(axis=1, dtype=np.float64)])
        return (w.astype(np.float64) @ g + b).astype(model.dtype)


@dataclass
class HeadCache:
    """What :func:`model_backward` needs from :func:`model_forward`."""

    net: Cache
    features: np.ndarray
    segments: np.ndarray | None
    n_segments: int
    sp_pooled: np.ndarray | None
    sp_aux: np.ndarray | None
    valid: tuple[int, int]
    g: np.ndarray | None
    g_arg: np.ndarray | None


def model_forward(
    model: Model,
    padded: np.ndarray,
    segments: np.ndarray | None = None,
    n_segments: int = 0,
    valid: tuple[int, int] | None = None,
    keep: bool = False,
    workspace: Workspace | None = None,
) -> tuple[np.ndarray, np.ndarray | None, HeadCache | None]:
    """Logits ``(K, oh, ow)`` with the heads' contributions and image logits ``(K - 1,)`` (or None).

    ``segments``: superpixel ids ``(oh, ow)`` (0..n_segments-1, -1 = ignored) when the model has a
    superpixel branch; ``valid``: ``(vh, vw)`` top-left block of outputs inside the image, over which
    the image-level head pools (default: all outputs). Pooling is over this box only.
    """
    if not has_heads(model):
        logits, net = forward_features(model, padded, keep, features=False, workspace=workspace)[::2]
        return logits, None, (HeadCache(net, None, None, 0, None, None, (0, 0), None, None) if keep else None)
    logits, feats, net = forward_features(model, padded, keep, workspace=workspace)
    c, oh, ow = feats.shape
    valid = (oh, ow) if valid is None else valid
    sp_pooled = sp_aux = g = g_arg = None
    if model.superpixels is not None:
        if segments is None or segments.shape != (oh, ow):
            raise InputError("a model with a superpixel branch needs the superpixels of the image")
        w, b = model.head_params("superpixels")
        sp_pooled, sp_aux = sp_pool_forward(feats, segments, n_segments, model.superpixels["pool"])
        scores = w @ sp_pooled + b[:, None]
        logits += sp_broadcast(scores.astype(logits.dtype), segments)
    image_logits = None
    if model.image_head is not None:
        w, b = model.head_params("image_head")
        g, g_arg = _global_pool(feats, logits, valid)
        image_logits = w @ g + b
    cache = HeadCache(net, feats, segments, n_segments, sp_pooled, sp_aux, valid, g, g_arg) if keep else None
    return logits, image_logits, cache


def model_backward(
    model: Model, cache: HeadCache, grad_logits: np.ndarray, grad_image: np.ndarray | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gradients of every parameter (layers, then heads) from the gradients w.r.t. the logits and
    the image logits."""
    grad_feats = None
    head_w: list[np.ndarray] = []
    head_b: list[np.ndarray] = []
    if has_heads(model):
        feats = cache.features
        c, oh, ow = feats.shape
        grad_feats = np.zeros_like(feats)
        if model.image_head is not None:  # first: its gradient w.r.t. the logits feeds the rest
            w, _ = model.head_params("image_head")
            if grad_image is None:
                grad_image = np.zeros(w.shape[0], w.dtype)
            grad_image = np.asarray(grad_image, w.dtype)
            image_w = np.outer(grad_image, cache.g).astype(w.dtype)
            image_b = grad_image.copy()
            grad_g = w.T @ grad_image
            k = grad_logits.shape[0]
            vh, vw = cache.valid
            n_maps = c + k
            grad_maps = np.zeros((n_maps, vh * vw), feats.dtype)
            grad_maps[np.arange(n_maps), cache.g_arg] += np.concatenate([grad_g[:c], grad_g[2 * c : 2 * c + k]])
            grad_maps += (np.concatenate([grad_g[c : 2 * c], grad_g[2 * c + k :]]) / (vh * vw))[:, None]
            grad_maps = grad_maps.reshape(n_maps, vh, vw)
            grad_feats[:, :vh, :vw] += grad_maps[:c]
            grad_logits = grad_logits.astype(feats.dtype, copy=True)
            grad_logits[:, :vh, :vw] += grad_maps[c:]
        if model.superpixels is not None:
            w, _ = model.head_params("superpixels")
            grad_scores = sp_broadcast_backward(grad_logits.astype(feats.dtype, copy=False), cache.segments,
                                                cache.n_segments)
            head_w.append((grad_scores @ cache.sp_pooled.T).astype(w.dtype))
            head_b.append(grad_scores.sum(axis=1).astype(w.dtype))
            grad_pooled = w.T @ grad_scores
            grad_feats += sp_pool_backward(grad_pooled, cache.segments, cache.sp_aux,
                                           model.superpixels["pool"], (oh, ow))
        if model.image_head is not None:
            head_w.append(image_w)
            head_b.append(image_b)
    grad_w, grad_b = backward(model, cache.net, grad_logits, grad_feats)
    return [*grad_w, *head_w], [*grad_b, *head_b]


def image_loss(image_logits: np.ndarray, targets: np.ndarray, weight: float) -> tuple[float, np.ndarray]:
    """Sigmoid cross entropy, mean over the known targets (NaN = unknown), times ``weight``;
    returns the loss and its gradient w.r.t. the logits."""
    z = np.asarray(image_logits, np.float64)
    t = np.asarray(targets, np.float64)
    known = np.isfinite(t)
    grad = np.zeros_like(z)
    if not known.any() or weight == 0:
        return 0.0, grad.astype(image_logits.dtype)
    n = known.sum()
    zk, tk = z[known], t[known]
    loss = np.sum(np.logaddexp(0.0, zk) - tk * zk) / n
    grad[known] = (1.0 / (1.0 + np.exp(-zk)) - tk) / n
    return float(weight * loss), (weight * grad).astype(image_logits.dtype)

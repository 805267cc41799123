"""Cross-entropy on the dense output, masked to painted pixels and balanced per class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax, xlogy

from ..kernels.layers import softmax_cross_entropy
from ..network.heads import has_heads, image_loss, model_backward, model_forward
from ..network.inputs import as_labels
from ..network.model import Model
from ..network.mpf import Workspace, backward, forward
from ..network.padding import mirror_indices, padded_size
from ..network.predict import normalise
from ..network.superpixels import relabel, slic_superpixels

__all__ = ["Batch", "anchor_term", "batch_loss", "crop_box", "labelled_box", "loss_and_gradients", "make_batch",
           "masked_cross_entropy"]


def masked_cross_entropy(
    logits: np.ndarray, labels: np.ndarray, balance: bool = True, class_weights: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """Loss and its gradient w.r.t. ``logits`` ``(K, H, W)``; ``labels`` ``(H, W)``, 0 = unpainted.

    ``balance``: every painted class weighs the same (mean over the classes present of the mean
    loss of their pixels); otherwise the mean over all painted pixels, each pixel weighted by its
    class's ``class_weights`` if given (:func:`~napari_mpf.engine.training.strokes.class_weights`).
    """
    n_classes = logits.shape[0]
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    counts = np.bincount(labels.ravel(), minlength=n_classes + 1)[1 : n_classes + 1]
    painted = int(counts.sum())
    grad = np.empty_like(logits)
    if painted == 0:
        grad[:] = 0
        return 0.0, grad
    if balance:
        present = np.count_nonzero(counts)
        class_weight = np.where(counts > 0, 1.0 / (np.maximum(counts, 1) * present), 0.0)
    else:
        weights = np.ones(n_classes) if class_weights is None else np.asarray(class_weights, np.float64)
        class_weight = weights / float(counts @ weights)
    row_loss = np.empty(labels.shape[0])
    softmax_cross_entropy(np.ascontiguousarray(logits), labels, class_weight, grad, row_loss)
    return float(row_loss.sum()), grad


def anchor_term(logits: np.ndarray, labels: np.ndarray, anchor: np.ndarray, weight: float) -> tuple[float, np.ndarray]:
    """``weight`` times the mean over the unpainted pixels (``labels == 0``; NaN anchors are outside
    the image) of the KL divergence from the ``anchor`` probabilities ``(K, H, W)`` to the softmax of
    ``logits``, and its gradient w.r.t. ``logits``: it keeps the predictions away from the strokes near
    those a continued run started from."""
    mask = (labels == 0) & ~np.isnan(anchor[0])
    n = int(mask.sum())
    if n == 0 or weight <= 0:
        return 0.0, np.zeros_like(logits)
    log_p = log_softmax(logits.astype(np.float64), axis=0)
    q = np.where(mask, anchor, 0.0)
    kl = float(xlogy(q, q).sum() - (q * log_p).sum())  # finite even where p underflows to 0
    grad = ((np.exp(log_p) - q) * (mask * (weight / n))).astype(logits.dtype)
    return weight * kl / n, grad


def labelled_box(labels: np.ndarray, factor: tuple[int, int], out_limit: tuple[int, int]):
    """Smallest output box ``(y0, x0, oh, ow)`` holding every painted pixel, sides multiples of ``factor``.

    The box may run past the image by less than ``factor``, never past ``out_limit``.
    """
    rows = np.flatnonzero(labels.any(axis=1))
    cols = np.flatnonzero(labels.any(axis=0))
    if rows.size == 0:  # nothing painted (an image with an image-level label only): the whole image
        rows, cols = np.array([0, labels.shape[0] - 1]), np.array([0, labels.shape[1] - 1])
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    oh, ow = padded_size(y1 - y0, factor[0]), padded_size(x1 - x0, factor[1])
    y0 = min(y0, out_limit[0] - oh)
    x0 = min(x0, out_limit[1] - ow)
    return int(y0), int(x0), int(oh), int(ow)


def loss_and_gradients(
    model: Model, image, labels, balance: bool = True, image_target=None
) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
    """Masked, optionally class-balanced cross-entropy of ``model`` on one image and its gradients.

    Gradients are shaped like ``model.weights`` and ``model.biases``. Only the box around the
    painted pixels is evaluated (exactly: the mirror padding is that of the whole image); a model
    with heads is evaluated on the whole image, and ``image_target`` (``K - 1`` values: 1 present,
    0 absent, NaN unknown) feeds its image-level head.
    """
    x = normalise(model, image)
    lab = as_labels(labels, x.shape[1:])
    return _loss_and_gradients(model, x, lab, balance, image_target)


@dataclass
class Batch:
    """The padded input box around the painted pixels of one image, and its labels; for models with
    heads also the box's superpixels, the part of the box inside the image and the image-level
    targets known for the box (NaN = unknown)."""

    padded: np.ndarray  # (C, oh + wh - 1, ow + ww - 1)
    labels: np.ndarray  # (oh, ow) int32, 0 outside the image
    segments: np.ndarray | None = None  # (oh, ow) int32, -1 outside the image
    n_segments: int = 0
    valid: tuple[int, int] | None = None
    image_target: np.ndarray | None = None  # (K - 1,)
    anchor: np.ndarray | None = None  # (K, oh, ow) probabilities the unpainted pixels are kept near, NaN outside
    anchor_weight: float = 0.0
    class_weights: np.ndarray | None = None  # (K,) weights of a painted pixel per class (strokes.class_weights)


def make_batch(
    model: Model,
    x: np.ndarray,
    lab: np.ndarray,
    crop: tuple[int, int, int, int] | None = None,
    segments: np.ndarray | None = None,
    image_target: np.ndarray | None = None,
    anchor: np.ndarray | None = None,
    anchor_weight: float = 0.0,
) -> Batch:
    """Cut a normalised image ``(C, H, W)`` and its labels to the box of painted pixels, or to the
    output box ``crop = (y0, x0, oh, ow)`` (see :func:`crop_box`).

    Exact: the mirror padding is that of the whole image, whatever the box. ``segments`` (the
    image's superpixels), ``anchor`` (probabilities ``(K, H, W)`` kept with ``anchor_weight``, see
    :func:`anchor_term`) and ``image_target`` (per class after the first: 1 present, 0 absent, NaN
    unknown) are cut to the box too: a class absent from the image is absent from the box; a present
    one is known present in the box only if the box holds the whole image or a painted pixel of it.
    """
    _, h, w = x.shape
    py, px = model.spec.pool_factor
    wh, ww = model.window
    limit = (h + py - 1, w + px - 1)
    y0, x0, oh, ow = labelled_box(lab, (py, px), limit) if crop is None else crop
    rows = mirror_indices(h, wh // 2, limit[0] - h + wh - 1 - wh // 2)[y0 : y0 + oh + wh - 1]
    cols = mirror_indices(w, ww // 2, limit[1] - w + ww - 1 - ww // 2)[x0 : x0 + ow + ww - 1]
    padded = np.ascontiguousarray(x[:, rows[:, None], cols[None, :]], dtype=model.dtype)
    box_labels = np.zeros((oh, ow), np.int32)
    part = lab[y0 : y0 + oh, x0 : x0 + ow]
    box_labels[: part.shape[0], : part.shape[1]] = part
    batch = Batch(padded, box_labels, valid=part.shape)
    if anchor is not None and anchor_weight > 0:
        batch.anchor = np.full((anchor.shape[0], oh, ow), np.nan, np.float32)
        batch.anchor[:, : part.shape[0], : part.shape[1]] = anchor[:, y0 : y0 + oh, x0 : x0 + ow]
        batch.anchor_weight = float(anchor_weight)
    if segments is not None:
        box_segments = np.full((oh, ow), -1, np.int32)
        box_segments[: part.shape[0], : part.shape[1]] = segments[y0 : y0 + oh, x0 : x0 + ow]
        batch.segments, batch.n_segments = relabel(box_segments)
    if image_target is not None:
        target = np.asarray(image_target, np.float64).copy()
        if part.shape != (h, w):
            painted = np.bincount(part.ravel(), minlength=model.n_classes + 1)[2:]
            target[(target == 1) & (painted[: target.size] == 0)] = np.nan
        batch.image_target = target
    return batch


def crop_box(
    model: Model, lab: np.ndarray, size: int | None, rng: np.random.Generator, whole: bool = False,
) -> tuple[int, int, int, int] | None:
    """A random output box of about ``size`` x ``size`` pixels holding at least one painted pixel
    (``None`` when the painted pixels already fit in such a box; an image with nothing painted gets
    a box anywhere). ``whole``: the box is cut from the whole image, not from the box of painted
    pixels (for heads that pool over the image); ``size=None`` then means the whole image."""
    h, w = lab.shape
    py, px = model.spec.pool_factor
    limit = (h + py - 1, w + px - 1)
    if whole:
        oh, ow = padded_size(h, py), padded_size(w, px)
        if size is None or (oh <= size and ow <= size):
            return 0, 0, oh, ow
    else:
        y0, x0, oh, ow = labelled_box(lab, (py, px), limit)
        if oh <= size and ow <= size:
            return None
    if lab.any():
        ys, xs = np.nonzero(lab)
    else:
        ys, xs = rng.integers(h, size=1), rng.integers(w, size=1)
    k = int(rng.integers(ys.size))
    ch, cw = min(size, oh), min(size, ow)
    ch, cw = padded_size(ch, py), padded_size(cw, px)
    top = int(np.clip(ys[k] - rng.integers(ch), 0, max(0, limit[0] - ch)))
    left = int(np.clip(xs[k] - rng.integers(cw), 0, max(0, limit[1] - cw)))
    return top, left, ch, cw


def batch_loss(model: Model, batch: Batch, balance: bool = True, need_grad: bool = True,
               workspace: Workspace | None = None):
    """``(loss, grad_weights, grad_biases)`` on a batch; the gradients are ``None`` without ``need_grad``.

    A :class:`~napari_mpf.engine.network.mpf.Workspace` reused from step to step saves the page faults
    of fresh activation buffers.

    With an image-level head the loss adds its weighted sigmoid cross entropy on the known targets.
    """
    if not has_heads(model):
        logits, cache = forward(model, batch.padded, keep=need_grad, workspace=workspace)
        loss, grad_logits = _dense_loss(logits, batch, balance)
        if not need_grad:
            return loss, None, None
        grad_w, grad_b = backward(model, cache, grad_logits)
        return loss, grad_w, grad_b
    logits, image_logits, hcache = model_forward(
        model, batch.padded, batch.segments, batch.n_segments, batch.valid, keep=need_grad, workspace=workspace
    )
    loss, grad_logits = _dense_loss(logits, batch, balance)
    grad_image = None
    if image_logits is not None and batch.image_target is not None:
        extra, grad_image = image_loss(image_logits, batch.image_target, model.image_head["loss_weight"])
        loss += extra
    if not need_grad:
        return loss, None, None
    grad_w, grad_b = model_backward(model, hcache, grad_logits, grad_image)
    return loss, grad_w, grad_b


def _dense_loss(logits: np.ndarray, batch: Batch, balance: bool) -> tuple[float, np.ndarray]:
    """The strokes' cross-entropy, plus the anchor term when the batch has one."""
    loss, grad = masked_cross_entropy(logits, batch.labels, balance, batch.class_weights)
    if batch.anchor is not None:
        extra, grad_anchor = anchor_term(logits, batch.labels, batch.anchor, batch.anchor_weight)
        loss, grad = loss + extra, grad + grad_anchor
    return loss, grad


def _loss_and_gradients(model: Model, x: np.ndarray, lab: np.ndarray, balance: bool, image_target=None):
    if not has_heads(model):
        if not lab.any():
            zeros_w = [np.zeros_like(w) for w in model.weights]
            return 0.0, zeros_w, [np.zeros_like(b) for b in model.biases]
        return batch_loss(model, make_batch(model, x, lab), balance)
    # heads pool over the whole image: evaluate all of it
    _, h, w = x.shape
    py, px = model.spec.pool_factor
    box = (0, 0, padded_size(h, py), padded_size(w, px))
    segments = None
    if model.superpixels is not None:
        segments = slic_superpixels(x[: model.in_channels], model.superpixels["size"], model.superpixels["compactness"])
    batch = make_batch(model, x, lab, box, segments, image_target)
    return batch_loss(model, batch, balance)

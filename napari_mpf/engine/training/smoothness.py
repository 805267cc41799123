"""Edge-aware smoothness on every pixel of a batch: a relaxed Potts (CRF) loss for sparse strokes.

Strokes label few pixels, and the cross-entropy says nothing about the unpainted pixels between
them, where a boundary has to be placed. The regularised losses of Tang et al. 2018 ("On
regularized losses for weakly-supervised CNN segmentation") add a CRF energy on the network's
probabilities over all pixels. Here it is a 4-neighbour one:

    strength * mean over neighbour pairs (i, j) of  w_ij * sum_k (p_ik - p_jk)^2

with ``p`` the softmax probabilities and contrast weights ``w_ij = exp(-|I_i - I_j|^2 / (2 m))``
(GrabCut's, Rother et al. 2004): ``I`` is the image smoothed by a Gaussian of 1 pixel and ``m``
the batch's mean of ``|I_i - I_j|^2``. Neighbours of similar intensity are pushed to the same
class, while a class change across an edge costs little, so boundaries between strokes follow
the image's edges.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..network.predict import softmax

__all__ = ["contrast_weights", "smoothness_loss"]

_SMOOTH_SIGMA = 1.0


def contrast_weights(image: np.ndarray, valid: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(wy (H-1, W), wx (H, W-1))`` of the vertical and horizontal neighbour pairs of a
    ``(C, H, W)`` image; pairs with a pixel outside the ``valid`` top-left ``(h, w)`` part weigh 0."""
    img = np.asarray(image, np.float64)
    h, w = img.shape[1:] if valid is None else valid
    smooth = np.stack([ndi.gaussian_filter(c, _SMOOTH_SIGMA, mode="nearest") for c in img[:, :h, :w]])
    dy = np.sum(np.diff(smooth, axis=1) ** 2, axis=0)
    dx = np.sum(np.diff(smooth, axis=2) ** 2, axis=0)
    n = dy.size + dx.size
    mean = (dy.sum() + dx.sum()) / n if n else 0.0
    scale = 2 * mean if mean > 0 else 1.0  # a flat image: every pair weighs 1
    wy, wx = np.zeros((img.shape[1] - 1, img.shape[2])), np.zeros((img.shape[1], img.shape[2] - 1))
    # floored so that a pair across a very strong edge still counts as a pair (see smoothness_loss)
    wy[: h - 1, :w] = np.maximum(np.exp(-dy / scale), 1e-12)
    wx[:h, : w - 1] = np.maximum(np.exp(-dx / scale), 1e-12)
    return wy, wx


def smoothness_loss(logits: np.ndarray, wy: np.ndarray, wx: np.ndarray, strength: float) -> tuple[float, np.ndarray]:
    """The loss above for ``logits`` ``(K, H, W)`` and its gradient w.r.t. them (in their dtype).

    The mean runs over the pairs of nonzero weight (those inside the valid part, see
    :func:`contrast_weights`)."""
    p = softmax(np.array(logits, np.float64))
    n_pairs = max(np.count_nonzero(wy) + np.count_nonzero(wx), 1)
    dy = p[:, 1:, :] - p[:, :-1, :]
    dx = p[:, :, 1:] - p[:, :, :-1]
    scale = strength / n_pairs
    loss = scale * (float(np.sum(wy * dy * dy)) + float(np.sum(wx * dx * dx)))
    g = np.zeros_like(p)  # d loss / d p
    g[:, 1:, :] += 2 * scale * wy * dy
    g[:, :-1, :] -= 2 * scale * wy * dy
    g[:, :, 1:] += 2 * scale * wx * dx
    g[:, :, :-1] -= 2 * scale * wx * dx
    grad = p * (g - np.sum(p * g, axis=0))  # through the softmax
    return loss, grad.astype(logits.dtype)

"""Which kernel runs each part of a convolution layer (blocked direct, BLAS, or plain Numba), and
the fused pair of 1x1 layers that ends a network (BLAS or Numba)."""

from __future__ import annotations

import numpy as np

from . import blocked, fc, gemm
from . import layers as K

__all__ = ["forward", "input_grad", "weight_grad", "fc_pair_forward", "fc_pair_backward"]


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, act: int, out: np.ndarray) -> np.ndarray:
    """Valid cross-correlation + bias + activation into ``out``."""
    if blocked.use_blocked(w):
        return blocked.conv_forward(x, w, b, act, out)
    if gemm.use_gemm(w):
        return gemm.conv_forward(x, w, b, act, out)
    return K.conv_forward(x, w, b, act, out)


def input_grad(grad_out: np.ndarray, w: np.ndarray, grad_in: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. the input: the full correlation with the flipped, transposed kernel."""
    kh, kw = w.shape[2:]
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    if blocked.use_blocked(flipped):
        return blocked.conv_forward(grad_out, flipped, None, K.ACT_NONE, grad_in, pad=(kh - 1, kw - 1))
    if gemm.use_gemm(w):
        return gemm.conv_forward(grad_out, flipped, None, K.ACT_NONE, grad_in, pad=(kh - 1, kw - 1))
    return K.conv_backward_input(grad_out, w, grad_in)


def weight_grad(x: np.ndarray, grad_out: np.ndarray, w: np.ndarray, grad_w: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. the kernel ``w`` (written into ``grad_w``)."""
    if gemm.use_gemm(w):  # a matrix product with a long inner dimension: BLAS does it best
        gemm.conv_backward(x, grad_out, w, grad_w, None)
    else:
        K.conv_backward_weights(x, grad_out, grad_w)
    return grad_w


def fc_pair_forward(x, w1, b1, act, w2, b2, out):
    """The last two 1x1 layers at once on flattened ``(F, C, N)`` planes (see kernels.fc_pair_forward)."""
    if gemm.use_gemm_head(w1):
        return gemm.fc_pair_forward(x, w1, b1, act, w2, b2, out)
    return fc.fc_pair_forward(x, w1, b1, act, w2, b2, out)


def fc_pair_backward(x, w1, b1, act, w2, g, gw1, gb1, gw2, gb2, gx):
    """Gradients of :func:`fc_pair_forward` (see kernels.fc_pair_backward)."""
    if gemm.use_gemm_head(w1):
        return gemm.fc_pair_backward(x, w1, b1, act, w2, g, gw1, gb1, gw2, gb2, gx)
    return fc.fc_pair_backward(x, w1, b1, act, w2, g, gw1, gb1, gw2, gb2, gx)

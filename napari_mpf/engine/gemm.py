"""Convolutions of wide layers as im2col + BLAS sgemm, in row tiles that bound the memory."""

from __future__ import annotations

import numpy as np

from . import kernels as K

__all__ = ["use_gemm", "conv_forward", "conv_backward"]

#: Layers with at least this many inputs per output (``Cin * kh * kw``) and outputs use BLAS;
#: narrower ones are faster in the direct Numba kernels.
GEMM_MIN_K = 256
GEMM_MIN_OUT = 32
#: Upper bound on one im2col tile, in elements.
TILE_ELEMENTS = 1 << 18


def use_gemm(weight: np.ndarray) -> bool:
    """Whether a layer with this weight goes through im2col + BLAS."""
    k = weight.shape[1] * weight.shape[2] * weight.shape[3]
    return k >= GEMM_MIN_K and weight.shape[0] >= GEMM_MIN_OUT


def _row_tiles(rows: int, wo: int, k: int):
    """Tiles of output rows (counted over all fragments: row ``f * ho + y``) of bounded im2col size."""
    step = max(1, min(rows, TILE_ELEMENTS // max(1, k * wo)))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def conv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, act: int, out: np.ndarray) -> np.ndarray:
    """Same result as :func:`kernels.conv_forward`, via BLAS."""
    n_out, n_in, kh, kw = w.shape
    ho, wo = out.shape[2:]
    k = n_in * kh * kw
    w2 = np.ascontiguousarray(w.reshape(n_out, k))
    for r0, r1 in _row_tiles(x.shape[0] * ho, wo, k):
        cols = np.empty((k, (r1 - r0) * wo), x.dtype)
        K.im2col(x, r0, r1, kh, kw, ho, wo, cols)
        K.bias_act_store(w2 @ cols, b, act, r0, out)
    return out


def conv_backward(x: np.ndarray, grad_out: np.ndarray, w: np.ndarray, grad_w: np.ndarray,
                  grad_in: np.ndarray | None) -> None:
    """Weight gradient (and, if ``grad_in`` is given, input gradient) of a valid convolution."""
    n_out, n_in, kh, kw = w.shape
    ho, wo = grad_out.shape[2:]
    k = n_in * kh * kw
    w2t = np.ascontiguousarray(w.reshape(n_out, k).T)
    gw = np.zeros((n_out, k), x.dtype)
    if grad_in is not None:
        grad_in[:] = 0
    # (o, f, y, c) order, so that a tile of rows is one strided block per output map
    g_all = grad_out.transpose(1, 0, 2, 3).reshape(n_out, -1, wo)
    for r0, r1 in _row_tiles(x.shape[0] * ho, wo, k):
        cols = np.empty((k, (r1 - r0) * wo), x.dtype)
        K.im2col(x, r0, r1, kh, kw, ho, wo, cols)
        g = np.ascontiguousarray(g_all[:, r0:r1]).reshape(n_out, -1)
        gw += g @ cols.T
        if grad_in is not None:
            K.col2im_add(w2t @ g, r0, r1, kh, kw, ho, wo, grad_in)
    grad_w[:] = gw.reshape(grad_w.shape)

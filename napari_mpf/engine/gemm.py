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


def _row_tiles(ho: int, wo: int, k: int):
    rows = max(1, min(ho, TILE_ELEMENTS // max(1, k * wo)))
    for y0 in range(0, ho, rows):
        yield y0, min(ho, y0 + rows)


def conv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, act: int, out: np.ndarray) -> np.ndarray:
    """Same result as :func:`kernels.conv_forward`, via BLAS."""
    n_frag = x.shape[0]
    n_out, n_in, kh, kw = w.shape
    ho, wo = out.shape[2:]
    k = n_in * kh * kw
    w2 = np.ascontiguousarray(w.reshape(n_out, k))
    for f in range(n_frag):
        for y0, y1 in _row_tiles(ho, wo, k):
            cols = np.empty((k, (y1 - y0) * wo), x.dtype)
            K.im2col(x, f, y0, y1, kh, kw, wo, cols)
            K.bias_act_store(w2 @ cols, b, act, f, y0, out)
    return out


def conv_backward(x: np.ndarray, grad_out: np.ndarray, w: np.ndarray, grad_w: np.ndarray,
                  grad_in: np.ndarray | None) -> None:
    """Weight gradient (and, if ``grad_in`` is given, input gradient) of a valid convolution."""
    n_frag = x.shape[0]
    n_out, n_in, kh, kw = w.shape
    ho, wo = grad_out.shape[2:]
    k = n_in * kh * kw
    w2 = np.ascontiguousarray(w.reshape(n_out, k))
    gw = np.zeros((n_out, k), np.float64 if x.dtype == np.float64 else np.float32)
    if grad_in is not None:
        grad_in[:] = 0
    for f in range(n_frag):
        for y0, y1 in _row_tiles(ho, wo, k):
            cols = np.empty((k, (y1 - y0) * wo), x.dtype)
            K.im2col(x, f, y0, y1, kh, kw, wo, cols)
            g = np.ascontiguousarray(grad_out[f, :, y0:y1, :]).reshape(n_out, -1)
            gw += g @ cols.T
            if grad_in is not None:
                K.col2im_add(w2.T @ g, f, y0, y1, kh, kw, wo, grad_in)
    grad_w[:] = gw.reshape(grad_w.shape)

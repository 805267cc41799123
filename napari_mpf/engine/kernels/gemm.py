"""Convolutions of wide layers as im2col + BLAS sgemm, in row tiles that bound the memory.

The tiles are shared out among worker threads (as many as Numba's threads in the calling thread),
each running the serial im2col kernel and a single-threaded sgemm on its own tiles: a tile stays in
its core's cache, and no parallel region starts or joins per tile. The input gradient is the
"full" convolution of the output gradient with the flipped, transposed kernel (an im2col with zero
padding), so every thread writes its own rows and nothing is scattered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from . import layers as K

__all__ = ["use_gemm", "use_gemm_head", "conv_forward", "conv_backward", "fc_pair_forward", "fc_pair_backward"]

#: Layers with at least this many inputs per output (``Cin * kh * kw``) and outputs use BLAS;
#: narrower ones (a 4x4 first layer on a grey image) use the direct Numba kernels. Measured on 2
#: cores, training step of one layer: 8 maps in and out, 5x5, BLAS 1.5x faster; 1 map in, 7x7,
#: direct 1.5x faster. Whole training steps on 512² (2026-12-04, median of 8): a 5x5 first layer on
#: a grey image through BLAS as fast for ``fast`` (0.328 against 0.359 s) and ``steel``'s 7x7 weight
#: gradient faster (0.225 against 0.232 s); the default path then compiles no direct convolution.
GEMM_MIN_K = 25
GEMM_MIN_OUT = 8
#: A fused pair of 1x1 layers (see :func:`fc_pair_forward`) with at least this many inputs runs as
#: BLAS products per pixel block; narrower ones (``steel``: 8 -> 100 -> 2) are faster in the Numba
#: kernels. Measured on 2 cores (forward + backward of the head): 48 -> 200 -> 2 (n3) 1.6x faster in
#: BLAS, 48 -> 128 -> 2 (wide2) 1.5x, 32 -> 64 -> 2 (wide) 1.2x. The default ``fast`` (24 -> 48 -> 2)
#: was 1.1x faster in Numba alone, but a whole training step on 512² is as fast or faster through
#: BLAS (0.326 against 0.348 s, median of 8, with 16-map layers through BLAS too), and the Numba
#: head kernels took 24 of the 46 s a first use spent compiling (2026-12-04).
GEMM_HEAD_MIN_IN = 16
#: Pixels per block of the fused head (its hidden map, ``hidden x block`` floats, stays in L2).
HEAD_BLOCK = 1024
#: Upper bound on one im2col tile, in elements (1 MB in float32: a core's L2 cache).
TILE_ELEMENTS = 1 << 18

_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_BLAS = None


def use_gemm(weight: np.ndarray) -> bool:
    """Whether a layer with this weight goes through im2col + BLAS."""
    k = weight.shape[1] * weight.shape[2] * weight.shape[3]
    return k >= GEMM_MIN_K and weight.shape[0] >= GEMM_MIN_OUT


def use_gemm_head(w1: np.ndarray) -> bool:
    """Whether the fused head whose first weight is ``w1`` ``(hidden, in)`` runs through BLAS."""
    return w1.shape[1] >= GEMM_HEAD_MIN_IN


def _row_tiles(rows: int, wo: int, k: int) -> list[tuple[int, int]]:
    """Tiles of output rows (counted over all fragments: row ``f * ho + y``) of bounded im2col size."""
    step = max(1, min(rows, TILE_ELEMENTS // max(1, k * wo)))
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


def _run(job: Callable[[list], object], tiles: list) -> list:
    """``job(tiles[i::n])`` on ``n`` worker threads (Numba's thread count here), BLAS on one thread
    each; the split depends only on ``n``, so results are reproducible."""
    global _POOL, _POOL_SIZE, _BLAS
    n = max(1, min(numba.get_num_threads(), len(tiles)))
    if n == 1:
        return [job(tiles)]
    parts = [tiles[i::n] for i in range(n)]
    with _LOCK:  # one tiled convolution at a time: each uses every core
        if _POOL_SIZE < n:
            _POOL_SIZE = max(n, numba.config.NUMBA_NUM_THREADS)
            _POOL = ThreadPoolExecutor(_POOL_SIZE, "napari-mpf-gemm")
            _BLAS = _BLAS or ThreadpoolController()
        with _BLAS.limit(limits=1, user_api="blas"):
            return list(_POOL.map(job, parts))


def _leading(buffer: np.ndarray, rows: int, n: int) -> np.ndarray:
    """The first ``rows * n`` values of a flat ``buffer`` as a C-contiguous ``(rows, n)`` array: a
    short last tile stays contiguous, so each Numba kernel is compiled for one layout only."""
    return buffer[: rows * n].reshape(rows, n)


def conv_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, act: int, out: np.ndarray,
    pad: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Same result as :func:`kernels.conv_forward`, via BLAS. With ``pad`` the input is read as if
    zero-padded by ``pad`` rows and columns before (and as many as needed after)."""
    n_out, n_in, kh, kw = w.shape
    ho, wo = out.shape[2:]
    k = n_in * kh * kw
    w2 = np.ascontiguousarray(w.reshape(n_out, k))
    b = np.zeros(n_out, x.dtype) if b is None else b
    tiles = _row_tiles(x.shape[0] * ho, wo, k)
    step = tiles[0][1] - tiles[0][0]

    def job(part):
        cols = np.empty(k * step * wo, x.dtype)
        tmp = np.empty(n_out * step * wo, x.dtype)
        for r0, r1 in part:
            n = (r1 - r0) * wo
            cols_n = _leading(cols, k, n)
            K.im2col(x, r0, r1, kh, kw, ho, wo, pad[0], pad[1], cols_n)
            tmp_n = np.matmul(w2, cols_n, out=_leading(tmp, n_out, n))
            K.bias_act_store(tmp_n, b, act, r0, out)

    _run(job, tiles)
    return out


def _weight_grad_job(x, grad_out, kh, kw, part):
    n_out, ho, wo = grad_out.shape[1:]
    k = x.shape[1] * kh * kw
    step = max(r1 - r0 for r0, r1 in part)
    cols = np.empty(k * step * wo, x.dtype)
    g = np.empty(n_out * step * wo, x.dtype)
    gw_t = np.zeros((k, n_out), x.dtype)  # transposed: cols @ g.T runs faster in sgemm than g @ cols.T
    for r0, r1 in part:
        n = (r1 - r0) * wo
        cols_n, g_n = _leading(cols, k, n), _leading(g, n_out, n)
        K.im2col(x, r0, r1, kh, kw, ho, wo, 0, 0, cols_n)
        K.gather_rows(grad_out, r0, r1, g_n)
        gw_t += cols_n @ g_n.T
    return gw_t


def conv_backward(x: np.ndarray, grad_out: np.ndarray, w: np.ndarray, grad_w: np.ndarray,
                  grad_in: np.ndarray | None) -> None:
    """Weight gradient (and, if ``grad_in`` is given, input gradient) of a valid convolution."""
    n_out, n_in, kh, kw = w.shape
    ho, wo = grad_out.shape[2:]
    tiles = _row_tiles(x.shape[0] * ho, wo, n_in * kh * kw)
    partial_sums = _run(partial(_weight_grad_job, x, grad_out, kh, kw), tiles)
    grad_w[:] = sum(partial_sums[1:], partial_sums[0]).T.reshape(grad_w.shape)
    if grad_in is not None:
        flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        conv_forward(grad_out, flipped, None, K.ACT_NONE, grad_in, pad=(kh - 1, kw - 1))


def _pixel_blocks(x: np.ndarray) -> list[tuple[int, int, int]]:
    n = x.shape[2]
    return [(f, lo, min(n, lo + HEAD_BLOCK)) for f in range(x.shape[0]) for lo in range(0, n, HEAD_BLOCK)]


def fc_pair_forward(x, w1, b1, act, w2, b2, out):
    """Same result as :func:`kernels.fc_pair_forward` (``x``, ``out`` flattened ``(F, C, N)``), as
    two matrix products per block of pixels; the hidden map lives only per block."""

    def job(part):
        for f, lo, hi in part:
            hidden = K.bias_act_block(w1 @ x[f, :, lo:hi], b1, act)
            dst = out[f, :, lo:hi]
            np.matmul(w2, hidden, out=dst)
            dst += b2[:, None]

    _run(job, _pixel_blocks(x))
    return out


def fc_pair_backward(x, w1, b1, act, w2, g, gw1, gb1, gw2, gb2, gx):
    """Same result as :func:`kernels.fc_pair_backward`, as matrix products per block of pixels (the
    hidden map recomputed per block); blocks whose output gradient is all zero are skipped."""
    need_gx = gx.size > 0

    def job(part):
        sums = [np.zeros(a.shape, np.float64) for a in (gw1, gb1, gw2, gb2)]
        for f, lo, hi in part:
            gb = g[f, :, lo:hi]
            if not gb.any():
                if need_gx:
                    gx[f, :, lo:hi] = 0
                continue
            xb = x[f, :, lo:hi]
            hidden = K.bias_act_block(w1 @ xb, b1, act)
            sums[2] += gb @ hidden.T
            sums[3] += gb.sum(axis=1)
            gh = K.act_backward_block(w2.T @ gb, hidden, act)
            sums[0] += gh @ xb.T
            sums[1] += gh.sum(axis=1)
            if need_gx:
                np.matmul(w1.T, gh, out=gx[f, :, lo:hi])
        return sums

    parts = _run(job, _pixel_blocks(x))
    for dst, *each in zip((gw1, gb1, gw2, gb2), *parts, strict=True):
        dst[:] = sum(each[1:], each[0])

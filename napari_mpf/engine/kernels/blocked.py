"""Direct convolutions blocked by eight output maps, for narrow layers (8 maps, as in ``steel``).

For such layers im2col + sgemm is a poor fit (a matrix product with only eight rows, and an
im2col matrix 25x the size of the input). These kernels read each input row once per block of
eight output maps and update the eight output rows together, up to five kernel columns per pass. The
eight rows are accumulated in a small contiguous buffer: rows of different maps in place lie a
plane apart, and planes of 4 KB multiples (128x128 floats) would all fall in the same L1 cache
sets. The input gradient can use the same kernel (a zero-padded "full" convolution with the flipped
kernel, see :mod:`.conv`). Every parallel task writes its own output rows, so results do not
depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import layers as K
from .layers import _OPTS

__all__ = ["use_blocked", "conv_forward"]

_GROUP = 8


#: Output map counts these kernels take (measured faster than BLAS and the plain kernel for the
#: 8-map ``steel`` net). Layers of 16 maps go through BLAS: the default ``fast`` net trained 7-13%
#: faster per step on 512² that way (0.326 against 0.363 s, median of 8, 2026-12-04), and this
#: kernel took 8 of the 46 s a first use spent compiling.
BLOCKED_OUT = (8,)


def use_blocked(weight: np.ndarray) -> bool:
    """Whether a convolution with this weight ``(out, in, kh, kw)`` runs through these kernels."""
    return weight.shape[0] in BLOCKED_OUT and weight.shape[2] * weight.shape[3] > 1


@njit(inline="always", **_OPTS)
def _load_row(x, f, i, yy, px, n, row):
    """``row[:n]`` = input row ``yy`` of map ``i`` shifted right by ``px``, zeros outside the input."""
    w_in = x.shape[3]
    row[:n] = 0
    if 0 <= yy < x.shape[2]:
        hi = min(n, w_in + px)
        row[px:hi] = x[f, i, yy, : hi - px]


@njit(inline="always", **_OPTS)
def _taps5(acc, row, kx0, wk, wo):
    """``acc[k, c] += sum_{j<5} wk[kx0 + j, k] * row[kx0 + j + c]`` for the eight maps ``k``."""
    r0, r1, r2, r3, r4, r5, r6, r7 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]
    a, b, c_, d, e = wk[kx0], wk[kx0 + 1], wk[kx0 + 2], wk[kx0 + 3], wk[kx0 + 4]
    s0, s1, s2, s3, s4 = row[kx0:kx0 + wo], row[kx0 + 1:kx0 + 1 + wo], row[kx0 + 2:kx0 + 2 + wo], \
        row[kx0 + 3:kx0 + 3 + wo], row[kx0 + 4:kx0 + 4 + wo]
    a0, a1, a2, a3, a4, a5, a6, a7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    b0, b1, b2, b3, b4, b5, b6, b7 = b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
    c0, c1, c2, c3, c4, c5, c6, c7 = c_[0], c_[1], c_[2], c_[3], c_[4], c_[5], c_[6], c_[7]
    d0, d1, d2, d3, d4, d5, d6, d7 = d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
    e0, e1, e2, e3, e4, e5, e6, e7 = e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]
    for c in range(wo):
        p, q, u, v, z = s0[c], s1[c], s2[c], s3[c], s4[c]
        r0[c] += a0 * p + b0 * q + c0 * u + d0 * v + e0 * z
        r1[c] += a1 * p + b1 * q + c1 * u + d1 * v + e1 * z
        r2[c] += a2 * p + b2 * q + c2 * u + d2 * v + e2 * z
        r3[c] += a3 * p + b3 * q + c3 * u + d3 * v + e3 * z
        r4[c] += a4 * p + b4 * q + c4 * u + d4 * v + e4 * z
        r5[c] += a5 * p + b5 * q + c5 * u + d5 * v + e5 * z
        r6[c] += a6 * p + b6 * q + c6 * u + d6 * v + e6 * z
        r7[c] += a7 * p + b7 * q + c7 * u + d7 * v + e7 * z


@njit(inline="always", **_OPTS)
def _taps2(acc, row, kx0, wk, wo):
    """As :func:`_taps5` for two kernel columns."""
    r0, r1, r2, r3, r4, r5, r6, r7 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]
    a, b = wk[kx0], wk[kx0 + 1]
    s0, s1 = row[kx0:kx0 + wo], row[kx0 + 1:kx0 + 1 + wo]
    a0, a1, a2, a3, a4, a5, a6, a7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    b0, b1, b2, b3, b4, b5, b6, b7 = b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
    for c in range(wo):
        p, q = s0[c], s1[c]
        r0[c] += a0 * p + b0 * q
        r1[c] += a1 * p + b1 * q
        r2[c] += a2 * p + b2 * q
        r3[c] += a3 * p + b3 * q
        r4[c] += a4 * p + b4 * q
        r5[c] += a5 * p + b5 * q
        r6[c] += a6 * p + b6 * q
        r7[c] += a7 * p + b7 * q


@njit(inline="always", **_OPTS)
def _taps1(acc, row, kx0, wk, wo):
    """As :func:`_taps5` for one kernel column."""
    r0, r1, r2, r3, r4, r5, r6, r7 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]
    a = wk[kx0]
    s0 = row[kx0:kx0 + wo]
    a0, a1, a2, a3, a4, a5, a6, a7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    for c in range(wo):
        p = s0[c]
        r0[c] += a0 * p
        r1[c] += a1 * p
        r2[c] += a2 * p
        r3[c] += a3 * p
        r4[c] += a4 * p
        r5[c] += a5 * p
        r6[c] += a6 * p
        r7[c] += a7 * p


@njit(parallel=True, **_OPTS)
def _forward(x, wt, b, act, py, px, out):
    """``wt``: the kernel as ``(groups, in, kh, kw, 8)``, the eight maps of a group last."""
    n_frag, n_in = x.shape[0], x.shape[1]
    n_groups, _, kh, kw, _ = wt.shape
    ho, wo = out.shape[2], out.shape[3]
    n_row = wo + kw - 1
    for t in prange(n_frag * ho):
        f = t // ho
        y = t % ho
        acc = np.empty((_GROUP, wo), out.dtype)
        row = np.empty(n_row, out.dtype)
        for g in range(n_groups):
            o = g * _GROUP
            for k in range(_GROUP):
                acc[k, :] = b[o + k]
            for i in range(n_in):
                for ky in range(kh):
                    yy = y + ky - py
                    if yy < 0 or yy >= x.shape[2]:
                        continue
                    _load_row(x, f, i, yy, px, n_row, row)
                    wk = wt[g, i, ky]
                    kx0 = 0
                    while kx0 + 5 <= kw:
                        _taps5(acc, row, kx0, wk, wo)
                        kx0 += 5
                    while kx0 + 2 <= kw:
                        _taps2(acc, row, kx0, wk, wo)
                        kx0 += 2
                    if kx0 < kw:
                        _taps1(acc, row, kx0, wk, wo)
            for k in range(_GROUP):
                K.activate_row(acc[k], wo, act)
                out[f, o + k, y, :] = acc[k]
    return out


def conv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, act: int, out: np.ndarray,
                 pad: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Same result as :func:`kernels.conv_forward` (``w`` with a multiple of eight output maps).
    With ``pad`` the input is read as if zero-padded by ``pad`` rows and columns before."""
    if w.shape[0] % _GROUP:
        raise ValueError(f"blocked convolution needs a multiple of {_GROUP} output maps, got {w.shape[0]}")
    b = np.zeros(w.shape[0], x.dtype) if b is None else b
    n_out, n_in, kh, kw = w.shape
    wt = np.ascontiguousarray(w.reshape(n_out // _GROUP, _GROUP, n_in, kh, kw).transpose(0, 2, 3, 4, 1))
    return _forward(x, wt, b, act, pad[0], pad[1], out)

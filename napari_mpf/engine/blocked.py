"""Direct convolutions blocked by eight output maps, for narrow layers (8 maps, as in ``steel``).

For such layers im2col + sgemm is a poor fit (a matrix product with only eight rows, and an
im2col matrix 25x the size of the input). These kernels read each input row once per block of
eight output maps and update the eight output rows together, two kernel columns per pass. The
eight rows are accumulated in a small contiguous buffer: rows of different maps in place lie a
plane apart, and planes of 4 KB multiples (128x128 floats) would all fall in the same L1 cache
sets. The input gradient can use the same kernel (a zero-padded "full" convolution with the flipped
kernel, see :mod:`.conv`). Every parallel task writes its own output rows, so results do not
depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import kernels as K
from .kernels import _OPTS

__all__ = ["use_blocked", "conv_forward"]

_GROUP = 8


#: Output map counts these kernels take (measured faster than BLAS and the plain kernel there).
BLOCKED_OUT = (8, 16)


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


@njit(parallel=True, **_OPTS)
def _forward(x, w, b, act, py, px, out):
    n_frag, n_in = x.shape[0], x.shape[1]
    n_out, _, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    n_row = wo + kw - 1
    for t in prange(n_frag * ho):
        f = t // ho
        y = t % ho
        acc = np.empty((_GROUP, wo), out.dtype)
        row = np.empty(n_row, out.dtype)
        for g in range(n_out // _GROUP):
            o = g * _GROUP
            for k in range(_GROUP):
                acc[k, :] = b[o + k]
            r0, r1, r2, r3, r4, r5, r6, r7 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]
            for i in range(n_in):
                for ky in range(kh):
                    yy = y + ky - py
                    if yy < 0 or yy >= x.shape[2]:
                        continue
                    _load_row(x, f, i, yy, px, n_row, row)
                    for kx0 in range(0, kw - 1, 2):
                        a0, a1, a2, a3 = w[o, i, ky, kx0], w[o + 1, i, ky, kx0], w[o + 2, i, ky, kx0], w[o + 3, i, ky, kx0]
                        a4, a5, a6, a7 = w[o + 4, i, ky, kx0], w[o + 5, i, ky, kx0], w[o + 6, i, ky, kx0], w[o + 7, i, ky, kx0]
                        kx = kx0 + 1
                        c0, c1, c2, c3 = w[o, i, ky, kx], w[o + 1, i, ky, kx], w[o + 2, i, ky, kx], w[o + 3, i, ky, kx]
                        c4, c5, c6, c7 = w[o + 4, i, ky, kx], w[o + 5, i, ky, kx], w[o + 6, i, ky, kx], w[o + 7, i, ky, kx]
                        s = row[kx0 : kx0 + wo]
                        u = row[kx : kx + wo]
                        for c in range(wo):
                            p = s[c]
                            v = u[c]
                            r0[c] += a0 * p + c0 * v
                            r1[c] += a1 * p + c1 * v
                            r2[c] += a2 * p + c2 * v
                            r3[c] += a3 * p + c3 * v
                            r4[c] += a4 * p + c4 * v
                            r5[c] += a5 * p + c5 * v
                            r6[c] += a6 * p + c6 * v
                            r7[c] += a7 * p + c7 * v
                    if kw % 2 == 1:
                        kx = kw - 1
                        c0, c1, c2, c3 = w[o, i, ky, kx], w[o + 1, i, ky, kx], w[o + 2, i, ky, kx], w[o + 3, i, ky, kx]
                        c4, c5, c6, c7 = w[o + 4, i, ky, kx], w[o + 5, i, ky, kx], w[o + 6, i, ky, kx], w[o + 7, i, ky, kx]
                        u = row[kx : kx + wo]
                        for c in range(wo):
                            v = u[c]
                            r0[c] += c0 * v
                            r1[c] += c1 * v
                            r2[c] += c2 * v
                            r3[c] += c3 * v
                            r4[c] += c4 * v
                            r5[c] += c5 * v
                            r6[c] += c6 * v
                            r7[c] += c7 * v
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
    return _forward(x, w, b, act, pad[0], pad[1], out)

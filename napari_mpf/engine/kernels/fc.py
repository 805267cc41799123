"""Numba kernels of the 1x1 convolutions (the fully connected layers after the last pooling), on
flattened planes ``(F, C, H*W)``, blocked over pixels; the last two layers can run as one kernel
(forward and backward)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .layers import _OPTS, activate_row, activation_backward_row

__all__ = ["conv1x1_forward", "fc_pair_forward", "fc_pair_backward"]

# 1x1 convolutions (FC layers after the last pooling) on flattened planes ``(F, C, H*W)``, in blocks
# of pixels: each block of the input is first copied to a contiguous buffer ``(C, m)`` (planes of
# 4 KB multiples would otherwise put every input row in the same L1 cache sets), then every output
# map is one pass over the block with eight inputs per pass. (Gradients of a lone 1x1 layer are
# plain matrix products: see network.mpf.backward.)
_BLOCK = 1024
_FC_BLOCK = 512


@njit(inline="always", **_OPTS)
def load_block(x, f, lo, hi, xb):
    """``xb[:, :hi - lo] = x[f, :, lo:hi]``."""
    for i in range(x.shape[1]):
        xb[i, : hi - lo] = x[f, i, lo:hi]


@njit(inline="always", **_OPTS)
def dense_row(xb, m, w, o, bias, act, dst):
    """``dst[:m] = act(bias + sum_i w[o, i] * xb[i, :m])``: one output map of a 1x1 layer over a block."""
    dst[:m] = bias
    n_in = xb.shape[0]
    i = 0
    while i + 8 <= n_in:
        w0, w1, w2, w3 = w[o, i], w[o, i + 1], w[o, i + 2], w[o, i + 3]
        w4, w5, w6, w7 = w[o, i + 4], w[o, i + 5], w[o, i + 6], w[o, i + 7]
        s0, s1, s2, s3 = xb[i], xb[i + 1], xb[i + 2], xb[i + 3]
        s4, s5, s6, s7 = xb[i + 4], xb[i + 5], xb[i + 6], xb[i + 7]
        for c in range(m):
            dst[c] += (w0 * s0[c] + w1 * s1[c] + w2 * s2[c] + w3 * s3[c]
                       + w4 * s4[c] + w5 * s5[c] + w6 * s6[c] + w7 * s7[c])
        i += 8
    for j in range(i, n_in):
        wv = w[o, j]
        src = xb[j]
        for c in range(m):
            dst[c] += wv * src[c]
    activate_row(dst, m, act)


@njit(parallel=True, **_OPTS)
def conv1x1_forward(x, w, b, act, out):
    """``out[f, o, n] = act(b[o] + sum_i w[o, i] * x[f, i, n])``."""
    n_frag, n_in, n = x.shape
    n_out = w.shape[0]
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    for t in prange(n_frag * n_blocks):
        f = t // n_blocks
        lo = (t % n_blocks) * _BLOCK
        hi = min(n, lo + _BLOCK)
        xb = np.empty((n_in, _BLOCK), x.dtype)
        load_block(x, f, lo, hi, xb)
        for o in range(n_out):
            dense_row(xb, hi - lo, w, o, b[o], act, out[f, o, lo:hi])
    return out


@njit(parallel=True, **_OPTS)
def fc_pair_forward(x, w1, b1, act, w2, b2, out):
    """``out[f, k, n] = b2[k] + sum_o w2[k, o] * act(b1[o] + sum_i w1[o, i] * x[f, i, n])``.

    Two 1x1 layers in one pass over blocks of pixels, so that the hidden layer (often the widest
    map of the network) lives only in cache; training recomputes it in :func:`fc_pair_backward`.
    """
    n_frag, n_in, n = x.shape
    n_hidden, n_cls = w1.shape[0], w2.shape[0]
    n_blocks = (n + _FC_BLOCK - 1) // _FC_BLOCK
    for t in prange(n_frag * n_blocks):
        f = t // n_blocks
        lo = (t % n_blocks) * _FC_BLOCK
        hi = min(n, lo + _FC_BLOCK)
        m = hi - lo
        xb = np.empty((n_in, _FC_BLOCK), x.dtype)
        load_block(x, f, lo, hi, xb)
        hidden = np.empty(_FC_BLOCK, x.dtype)
        acc = np.empty((n_cls, _FC_BLOCK), x.dtype)
        for k in range(n_cls):
            acc[k, :m] = b2[k]
        for o in range(n_hidden):
            dense_row(xb, m, w1, o, b1[o], act, hidden)
            for k in range(n_cls):
                wk = w2[k, o]
                dst = acc[k]
                for c in range(m):
                    dst[c] += wk * hidden[c]
        for k in range(n_cls):
            out[f, k, lo:hi] = acc[k, :m]
    return out


@njit(inline="always", **_OPTS)
def weight_sums(gh, xb, m, dst):
    """``dst[i] += sum_c gh[c] * xb[i, c]`` over ``c < m``, eight inputs per pass."""
    n_in = xb.shape[0]
    i = 0
    while i + 8 <= n_in:
        s0, s1, s2, s3 = xb[i], xb[i + 1], xb[i + 2], xb[i + 3]
        s4, s5, s6, s7 = xb[i + 4], xb[i + 5], xb[i + 6], xb[i + 7]
        z = gh[0] * 0
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = z
        for c in range(m):
            v = gh[c]
            a0 += v * s0[c]
            a1 += v * s1[c]
            a2 += v * s2[c]
            a3 += v * s3[c]
            a4 += v * s4[c]
            a5 += v * s5[c]
            a6 += v * s6[c]
            a7 += v * s7[c]
        dst[i] += a0
        dst[i + 1] += a1
        dst[i + 2] += a2
        dst[i + 3] += a3
        dst[i + 4] += a4
        dst[i + 5] += a5
        dst[i + 6] += a6
        dst[i + 7] += a7
        i += 8
    for j in range(i, n_in):
        src = xb[j]
        s = gh[0] * 0
        for c in range(m):
            s += gh[c] * src[c]
        dst[j] += s


@njit(parallel=True, **_OPTS)
def fc_pair_backward(x, w1, b1, act, w2, g, gw1, gb1, gw2, gb2, gx):
    """Gradients of :func:`fc_pair_forward` given ``g`` = d loss / d out ``(F, K, N)``.

    The hidden layer is recomputed block by block instead of being stored. Writes ``gw1 (H, Cin)``,
    ``gb1``, ``gw2 (K, H)``, ``gb2`` and, if ``gx`` is not empty, ``gx (F, Cin, N)``. Blocks whose
    output gradient is all zero (unpainted pixels) are skipped.
    """
    n_frag, n_in, n = x.shape
    n_hidden, n_cls = w1.shape[0], w2.shape[0]
    need_gx = gx.size > 0
    n_blocks = (n + _FC_BLOCK - 1) // _FC_BLOCK
    n_tasks = n_frag * n_blocks
    n_chunks = min(n_tasks, 64)  # fixed partial sums: results do not depend on the thread count
    pw1 = np.zeros((n_chunks, n_hidden, n_in))
    pb1 = np.zeros((n_chunks, n_hidden))
    pw2 = np.zeros((n_chunks, n_cls, n_hidden))
    pb2 = np.zeros((n_chunks, n_cls))
    for ch in prange(n_chunks):
        xb = np.empty((n_in, _FC_BLOCK), x.dtype)
        gb = np.empty((n_cls, _FC_BLOCK), x.dtype)
        gxb = np.empty((n_in, _FC_BLOCK), x.dtype)
        hidden = np.empty(_FC_BLOCK, x.dtype)
        gh = np.empty(_FC_BLOCK, x.dtype)
        for t in range(ch * n_tasks // n_chunks, (ch + 1) * n_tasks // n_chunks):
            f = t // n_blocks
            lo = (t % n_blocks) * _FC_BLOCK
            hi = min(n, lo + _FC_BLOCK)
            m = hi - lo
            load_block(g, f, lo, hi, gb)
            nonzero = False
            for k in range(n_cls):
                gk = gb[k]
                s = gk[0] * 0
                z = 0
                for c in range(m):
                    s += gk[c]
                    z += gk[c] != 0
                pb2[ch, k] += s
                nonzero = nonzero or z > 0
            if not nonzero:
                if need_gx:
                    gx[f, :, lo:hi] = 0
                continue
            load_block(x, f, lo, hi, xb)
            gxb[:, :m] = 0
            for o in range(n_hidden):
                dense_row(xb, m, w1, o, b1[o], act, hidden)
                gh[:m] = 0
                for k in range(n_cls):
                    gk = gb[k]
                    wk = w2[k, o]
                    s = gk[0] * 0
                    for c in range(m):
                        s += gk[c] * hidden[c]
                        gh[c] += wk * gk[c]
                    pw2[ch, k, o] += s
                activation_backward_row(gh, hidden, m, act)
                s = gh[0] * 0
                for c in range(m):
                    s += gh[c]
                pb1[ch, o] += s
                weight_sums(gh, xb, m, pw1[ch, o])
                if need_gx:
                    for i in range(n_in):
                        wv = w1[o, i]
                        dst = gxb[i]
                        for c in range(m):
                            dst[c] += wv * gh[c]
            if need_gx:
                for i in range(n_in):
                    gx[f, i, lo:hi] = gxb[i, :m]
    gw1[:] = pw1.sum(axis=0)
    gb1[:] = pb1.sum(axis=0)
    gw2[:] = pw2.sum(axis=0)
    gb2[:] = pb2.sum(axis=0)

"""Numba kernels on fragment batches laid out ``(F, C, H, W)``.

Every parallel loop runs over independent outputs (each iteration writes its own plane), so there
is no racing ``+=`` and results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

ACT_NONE, ACT_TANH, ACT_RELU, ACT_TANH_FAST = 0, 1, 2, 3
ACTIVATIONS = {"none": ACT_NONE, "tanh": ACT_TANH, "relu": ACT_RELU}

# error_model="numpy": a float division by zero gives inf/nan instead of raising, so loops with a
# division (the rational tanh) vectorise: 4x faster activations than with Python's error model.
_OPTS = dict(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")


@njit(inline="always", **_OPTS)
def tanh_fast(x):
    """float32 tanh as a rational function (Eigen's coefficients; error a few ulp), vectorisable."""
    x = min(max(x, -7.90531110763549805), 7.90531110763549805)
    x2 = x * x
    p = x2 * -2.76076847742355e-16 + 2.00018790482477e-13
    p = x2 * p + -8.60467152213735e-11
    p = x2 * p + 5.12229709037114e-08
    p = x2 * p + 1.48572235717979e-05
    p = x2 * p + 6.37261928875436e-04
    p = x2 * p + 4.89352455891786e-03
    q = x2 * 1.19825839466702e-06 + 1.18534705686654e-04
    q = x2 * q + 2.26843463243900e-03
    q = x2 * q + 4.89352518554385e-03
    return x * p / q


@njit(inline="always", **_OPTS)
def activate_row(row, n, act):
    """In place on ``row[:n]``; one loop per activation so that each loop vectorises."""
    if act == ACT_TANH_FAST:
        for c in range(n):
            row[c] = tanh_fast(row[c])
    elif act == ACT_TANH:
        for c in range(n):
            row[c] = np.tanh(row[c])
    elif act == ACT_RELU:
        for c in range(n):
            row[c] = max(row[c], row[c] * 0)


@njit(parallel=True, **_OPTS)
def conv_forward(x, w, b, act, out):
    """Valid cross-correlation + bias + activation: ``out[f, o] = act(b[o] + sum w[o, i] * x[f, i])``."""
    n_frag, n_in, _, _ = x.shape
    n_out, _, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    for t in prange(n_frag * n_out):
        f = t // n_out
        o = t % n_out
        for y in range(ho):
            row = out[f, o, y]
            row[:] = b[o]
            for i in range(n_in):
                for ky in range(kh):
                    src = x[f, i, y + ky]
                    for kx in range(kw):
                        wv = w[o, i, ky, kx]
                        for c in range(wo):
                            row[c] += wv * src[c + kx]
            activate_row(row, wo, act)
    return out


@njit(parallel=True, **_OPTS)
def activation_backward(grad, out, act):
    """In place: turn the gradient w.r.t. a layer's output into the gradient w.r.t. its pre-activation."""
    n_frag, n_maps, h, w = grad.shape
    for t in prange(n_frag * n_maps):
        f = t // n_maps
        o = t % n_maps
        for y in range(h):
            activation_backward_row(grad[f, o, y], out[f, o, y], w, act)
    return grad


@njit(inline="always", **_OPTS)
def activation_backward_row(g, a, n, act):
    """In place on ``g[:n]``: times the activation's derivative, given its output ``a``."""
    if act == ACT_TANH or act == ACT_TANH_FAST:
        for c in range(n):
            g[c] *= 1 - a[c] * a[c]
    elif act == ACT_RELU:
        for c in range(n):
            if a[c] <= 0:
                g[c] = 0


@njit(parallel=True, **_OPTS)
def conv_backward_input(grad_out, w, grad_in):
    """``grad_in[f, i] = sum_o full-correlation(grad_out[f, o], w[o, i])`` (overwrites grad_in)."""
    n_frag, n_out, ho, wo = grad_out.shape
    _, n_in, kh, kw = w.shape
    for t in prange(n_frag * n_in):
        f = t // n_in
        i = t % n_in
        grad_in[f, i] = 0
        for y in range(ho):
            for o in range(n_out):
                g = grad_out[f, o, y]
                for ky in range(kh):
                    dst = grad_in[f, i, y + ky]
                    for kx in range(kw):
                        wv = w[o, i, ky, kx]
                        for c in range(wo):
                            dst[c + kx] += wv * g[c]
    return grad_in


@njit(parallel=True, **_OPTS)
def conv_backward_weights(x, grad_out, grad_w):
    """``grad_w[o, i, ky, kx] = sum_{f, y, c} grad_out[f, o, y, c] * x[f, i, y + ky, c + kx]``."""
    n_frag, n_out, ho, wo = grad_out.shape
    _, n_in, kh, kw = grad_w.shape
    for t in prange(n_out * n_in):
        o = t // n_in
        i = t % n_in
        acc = np.zeros((kh, kw), dtype=np.float64)
        for f in range(n_frag):
            for y in range(ho):
                g = grad_out[f, o, y]
                for ky in range(kh):
                    src = x[f, i, y + ky]
                    for kx in range(kw):
                        s = g[0] * 0
                        for c in range(wo):
                            s += g[c] * src[c + kx]
                        acc[ky, kx] += s
        for ky in range(kh):
            for kx in range(kw):
                grad_w[o, i, ky, kx] = acc[ky, kx]
    return grad_w


@njit(parallel=True, **_OPTS)
def mpf_forward(x, ph, pw, act, out, arg):
    """Max-pooling fragments: every offset ``(ry, rx)`` of a ``ph x pw`` pool becomes a fragment.

    ``out[(ry * pw + rx) * F + f, c, i, j] = act(max_{a, b} x[f, c, ry + i*ph + a, rx + j*pw + b])``
    and ``arg`` holds ``a * pw + b`` of the (first) maximum. A monotone activation commutes with the
    max, so the preceding convolution can leave it to the pooling (p² times fewer evaluations).
    """
    n_frag, n_maps, _, _ = x.shape
    hn, wn = out.shape[2], out.shape[3]
    for t in prange(ph * pw * n_frag * n_maps):
        c = t % n_maps
        fo = t // n_maps
        f = fo % n_frag
        r = fo // n_frag
        ry = r // pw
        rx = r % pw
        for i in range(hn):  # row by row, each offset's strided row in turn (vectorises)
            y0 = ry + i * ph
            best = out[fo, c, i]
            code = arg[fo, c, i]
            best[:] = x[f, c, y0, rx:rx + wn * pw:pw]
            code[:] = 0
            for a in range(ph):
                for bb in range(pw):
                    if a == 0 and bb == 0:
                        continue
                    src = x[f, c, y0 + a, rx + bb:rx + bb + wn * pw:pw]
                    k = a * pw + bb
                    for j in range(wn):
                        if src[j] > best[j]:
                            best[j] = src[j]
                            code[j] = k
            activate_row(best, wn, act)
    return out


@njit(parallel=True, **_OPTS)
def mpf_backward(grad_out, arg, ph, pw, grad_in):
    """Route each fragment's gradient to its arg-max in the source map, accumulating (overwrites grad_in)."""
    n_frag, n_maps = grad_in.shape[0], grad_in.shape[1]
    hn, wn = grad_out.shape[2], grad_out.shape[3]
    for t in prange(n_frag * n_maps):
        f = t // n_maps
        c = t % n_maps
        grad_in[f, c] = 0
        for r in range(ph * pw):
            ry = r // pw
            rx = r % pw
            fo = r * n_frag + f
            for i in range(hn):
                y0 = ry + i * ph
                for j in range(wn):
                    code = arg[fo, c, i, j]
                    grad_in[f, c, y0 + code // pw, rx + j * pw + code % pw] += grad_out[fo, c, i, j]
    return grad_in


# The BLAS path (gemm.py) runs these serial kernels on tiles of output rows, one tile per worker
# thread at a time: each core keeps its tile in its own cache and calls single-threaded sgemm.


@njit(**_OPTS)
def im2col(x, r0, r1, kh, kw, ho, wo, py, px, cols):
    """``cols[(i*kh + ky)*kw + kx, (r - r0)*wo + c] = x[f, i, y + ky - py, c + kx - px]`` (0 outside
    ``x``) for the output rows ``r0 <= r < r1`` of all fragments, ``r = f * ho + y``."""
    n_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    # unsigned offsets: Numba skips the wrap-around check of negative indices, and the copies vectorise
    u = np.uint64
    for i in range(n_in):
        for ky in range(kh):
            for kx in range(kw):
                q = (i * kh + ky) * kw + kx
                lo = min(wo, max(0, px - kx))  # columns [lo, hi) read inside the row
                hi = max(lo, min(wo, w + px - kx))
                s = u(max(0, lo + kx - px))
                crow = cols[q]
                for r in range(r0, r1):
                    yy = r % ho + ky - py
                    base = u((r - r0) * wo)
                    if yy < 0 or yy >= h:
                        for c in range(u(wo)):
                            crow[base + c] = 0
                        continue
                    src = x[r // ho, i, yy]
                    for c in range(u(lo)):
                        crow[base + c] = 0
                    d = base + u(lo)
                    for c in range(u(hi - lo)):
                        crow[d + c] = src[s + c]
                    for c in range(u(hi), u(wo)):
                        crow[base + c] = 0
    return cols


@njit(**_OPTS)
def bias_act_store(tmp, b, act, r0, out):
    """``out[f, o, y, c] = act(tmp[o, (r - r0)*wo + c] + b[o])`` with ``r = f * ho + y``."""
    n_out, ho, wo = tmp.shape[0], out.shape[2], out.shape[3]
    rows = tmp.shape[1] // wo
    for o in range(n_out):
        for t in range(rows):
            r = r0 + t
            dst = out[r // ho, o, r % ho]
            src = tmp[o, t * wo:(t + 1) * wo]
            bias = b[o]
            for c in range(wo):
                dst[c] = src[c] + bias
            activate_row(dst, wo, act)
    return out


@njit(**_OPTS)
def gather_rows(a, r0, r1, dst):
    """``dst[o, (r - r0)*w + c] = a[f, o, y, c]`` with ``r = f * h + y`` (inverse of the store)."""
    n_maps, h, w = a.shape[1], a.shape[2], a.shape[3]
    for o in range(n_maps):
        for r in range(r0, r1):
            dst[o, (r - r0) * w:(r - r0 + 1) * w] = a[r // h, o, r % h]
    return dst


@njit(**_OPTS)
def bias_act_block(z, b, act):
    """In place: ``z[o] = act(z[o] + b[o])`` for every row of a 2-D block."""
    for o in range(z.shape[0]):
        row = z[o]
        bias = b[o]
        for c in range(row.shape[0]):
            row[c] += bias
        activate_row(row, row.shape[0], act)
    return z


@njit(**_OPTS)
def act_backward_block(g, a, act):
    """In place on a 2-D block: ``g *= act'`` given the activation's output ``a``."""
    for o in range(g.shape[0]):
        activation_backward_row(g[o], a[o], g.shape[1], act)
    return g


@njit(parallel=True, **_OPTS)
def bias_grad(grad, out):
    """``out[o] = sum_{f, y, c} grad[f, o, y, c]`` (rows summed in the array's dtype, then in float64)."""
    n_frag, n_maps, h, w = grad.shape
    for o in prange(n_maps):
        total = 0.0
        for f in range(n_frag):
            for y in range(h):
                row = grad[f, o, y]
                s = row[0] * 0
                for c in range(w):
                    s += row[c]
                total += s
        out[o] = total
    return out


@njit(parallel=True, **_OPTS)
def softmax_cross_entropy(logits, labels, class_weight, grad, row_loss):
    """Weighted cross-entropy of the softmax over axis 0 of ``logits (K, H, W)`` at painted pixels.

    ``labels`` 0 = unpainted, k = output k - 1; the pixel weight is ``class_weight[k - 1]``.
    Writes ``grad`` (zero at unpainted pixels) and the loss of every row into ``row_loss``.
    """
    n_classes, h, w = logits.shape
    for y in prange(h):
        acc = 0.0
        for x in range(w):
            k = labels[y, x]
            if k == 0:
                for j in range(n_classes):
                    grad[j, y, x] = 0
                continue
            top = logits[0, y, x]
            for j in range(1, n_classes):
                top = max(top, logits[j, y, x])
            total = 0.0
            for j in range(n_classes):
                total += np.exp(np.float64(logits[j, y, x] - top))
            weight = class_weight[k - 1]
            acc += weight * (np.log(total) - (logits[k - 1, y, x] - top))
            for j in range(n_classes):
                p = np.exp(np.float64(logits[j, y, x] - top)) / total
                grad[j, y, x] = weight * (p - (1.0 if j == k - 1 else 0.0))
        row_loss[y] = acc
    return grad


# 1x1 convolutions (FC layers after the last pooling) on flattened planes ``(F, C, H*W)``, in blocks
# of pixels: each block of the input is first copied to a contiguous buffer ``(C, m)`` (planes of
# 4 KB multiples would otherwise put every input row in the same L1 cache sets), then every output
# map is one pass over the block with eight inputs per pass. (Gradients of a lone 1x1 layer are
# plain matrix products: see network.backward.)
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

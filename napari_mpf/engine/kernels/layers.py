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

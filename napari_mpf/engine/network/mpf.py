"""Dense evaluation of an MPCNN through max-pooling fragments (Masci et al. 2013), forward and backward.

The image is mirror-padded so that output pixel ``(y, x)`` sees the window
``padded[:, y:y+wh, x:x+ww]``; outputs are computed for a region whose sides are multiples of the
total pooling factor, so every fragment of a level has the same size and the final interleave is a
plain transpose.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..kernels import conv, fc
from ..kernels import layers as K
from .model import Model

__all__ = ["forward", "forward_features", "backward", "Cache", "Workspace"]


class Workspace:
    """Buffers of the training passes, kept from one step to the next.

    A training step of ``n3`` on 512² writes about 1.5 GB of activations and gradients; fresh
    arrays every step cost as much again in page faults. A workspace hands out the same memory at
    every step (growing if a step needs more) and holds it until it is dropped, so it belongs to
    one training run. One forward pass at a time: a second :func:`forward` with the same workspace
    invalidates the first one's cache (:func:`backward` then refuses it).
    """

    def __init__(self, max_array_bytes: int | None = None) -> None:
        self._flat: dict = {}
        self.owner: Cache | None = None
        self.max_array_bytes = max_array_bytes

    def array(self, key, shape: tuple, dtype) -> np.ndarray:
        """An uninitialised array of ``shape`` that is reused for ``key`` at every step (arrays
        larger than ``max_array_bytes`` are allocated afresh and not kept)."""
        n = int(np.prod(shape))
        if self.max_array_bytes is not None and n * np.dtype(dtype).itemsize > self.max_array_bytes:
            return np.empty(shape, dtype)
        buf = self._flat.get(key)
        if buf is None or buf.dtype != dtype or buf.size < n:
            buf = self._flat[key] = np.empty(n, dtype)
        return buf[:n].reshape(shape)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._flat.values())


class _PredictionBuffers(threading.local):
    """Per thread, two layers' outputs kept between predictions (a forward pass without ``keep``
    needs only the current layer's input and output): repeated predictions skip the page faults."""

    def __init__(self) -> None:
        self.workspace = Workspace(max_array_bytes=PREDICTION_BUFFER_BYTES)


#: Largest array the prediction buffers keep (per thread, at most four arrays of this size).
PREDICTION_BUFFER_BYTES = 64 << 20
_PREDICTION_BUFFERS = _PredictionBuffers()


@dataclass
class Cache:
    """What the backward pass needs from the forward pass."""

    inputs: list  # input of every layer (F, C, H, W)
    outputs: list  # output of every conv/fc layer, or (output, arg-max) of a pooling
    frag_shape: tuple  # (F, K, h, w) of the last layer
    workspace: Workspace | None = None
    fused_head: bool = False  # the last two layers ran as one kernel (their hidden map is not kept)


def _activations(model: Model) -> list[int]:
    """Activation code applied at the output of each layer.

    The last layer gives logits; a conv followed by pooling leaves its activation to the pooling
    (max commutes with a monotone activation); float32 uses the fast rational tanh.
    """
    code = K.ACTIVATIONS[model.activation]
    if code == K.ACT_TANH and model.dtype == np.float32:
        code = K.ACT_TANH_FAST
    layers = model.spec.layers
    acts = []
    for li, layer in enumerate(layers):
        if li == len(layers) - 1:
            acts.append(K.ACT_NONE)
        elif layer.kind == "pool":
            previous = layers[li - 1].kind if li > 0 else "input"
            acts.append(code if previous in ("conv", "fc") else K.ACT_NONE)
        else:
            acts.append(K.ACT_NONE if layers[li + 1].kind == "pool" else code)
    return acts


def forward(
    model: Model, padded: np.ndarray, keep: bool = False, workspace: Workspace | None = None
) -> tuple[np.ndarray, Cache | None]:
    """Logits ``(K, oh, ow)`` for a padded ``(C, oh + wh - 1, ow + ww - 1)`` input (model dtype).

    ``oh`` and ``ow`` must be multiples of the total pooling factor. With ``keep`` the activations
    are kept for :func:`backward`, in ``workspace`` if one is given.
    """
    logits, _, cache = forward_features(model, padded, keep, features=False, workspace=workspace)
    return logits, cache


def forward_features(
    model: Model, padded: np.ndarray, keep: bool = False, features: bool = True,
    workspace: Workspace | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Cache | None]:
    """Like :func:`forward`, also returning the dense ``(C, oh, ow)`` maps that feed the last layer
    (the per-pixel features the heads see; the last layer must then be 1x1)."""
    spec = model.spec
    dtype = model.dtype
    x = np.ascontiguousarray(padded, dtype=dtype)[None]
    inputs, outputs = [], []
    n_param = 0
    acts = _activations(model)
    dense = None
    last = len(spec.layers) - 1
    ws = workspace if keep else None
    scratch = None if keep else _PREDICTION_BUFFERS.workspace

    n_layer_params = model.n_layer_params
    fuse_head = (  # unless the heads need the hidden map itself
        not features and last >= 1 and spec.layers[last - 1].kind != "pool"
        and all(wt.shape[2:] == (1, 1) for wt in model.weights[n_layer_params - 2:n_layer_params])
    )

    def new(key, shape, dt=dtype):
        if scratch is not None:
            return scratch.array((key, li % 2), shape, dt)
        return np.empty(shape, dt) if ws is None else ws.array((key, li), shape, dt)

    for li, layer in enumerate(spec.layers):
        if keep:
            inputs.append(x)
        if features and li == last:
            if tuple(layer.size) != (1, 1) or layer.kind == "pool":
                raise ValueError("heads need a network whose last layer is 1x1 (fully connected)")
            dense = interleave(x, spec)
            if np.may_share_memory(dense, x):
                dense = dense.copy()
        f, c, h, w = x.shape
        if layer.kind == "pool":
            ph, pw = layer.size
            hn, wn = (h - ph + 1) // ph, (w - pw + 1) // pw
            out = new("out", (ph * pw * f, c, hn, wn))
            arg = new("arg", out.shape, np.int32)
            K.mpf_forward(x, ph, pw, acts[li], out, arg)
            if keep:
                outputs.append((out, arg))
        elif fuse_head and li == last - 1:  # the last two 1x1 layers at once (backward recomputes)
            (w1, w2), (b1, b2) = model.weights[n_param:n_param + 2], model.biases[n_param:n_param + 2]
            out = new("out", (f, w2.shape[0], h, w))
            conv.fc_pair_forward(_flat(x), w1[:, :, 0, 0], b1, acts[li], w2[:, :, 0, 0], b2, _flat(out))
            if keep:
                outputs.append(None)
            x = out
            break
        else:
            wgt, bias = model.weights[n_param], model.biases[n_param]
            n_param += 1
            kh, kw = wgt.shape[2:]
            out = new("out", (f, wgt.shape[0], h - kh + 1, w - kw + 1))
            if wgt.shape[2:] == (1, 1):
                fc.conv1x1_forward(_flat(x), wgt[:, :, 0, 0], bias, acts[li], _flat(out))
            else:
                conv.forward(x, wgt, bias, acts[li], out)
            if keep:
                outputs.append(out)
        x = out
    logits = interleave(x, spec)
    if np.may_share_memory(logits, x):  # no pooling: a view, which the buffers' next use would overwrite
        logits = logits.copy()
    cache = Cache(inputs, outputs, x.shape, ws, fuse_head) if keep else None
    if ws is not None:
        ws.owner = cache
    return logits, dense, cache


def _flat(a: np.ndarray) -> np.ndarray:
    """``(F, C, H, W)`` -> ``(F, C, H * W)`` view."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _pool_sizes(spec) -> list[tuple[int, int]]:
    return [layer.size for layer in spec.layers if layer.kind == "pool"]


def _interleave_perm(n_pools: int) -> tuple[list[int], list[int]]:
    # fragment axes after reshape: [ryL, rxL, ..., ry1, rx1, K, i, j]
    L = n_pools
    ry = [2 * m for m in range(L)]
    rx = [2 * m + 1 for m in range(L)]
    perm = [2 * L, 2 * L + 1, *ry, 2 * L + 2, *rx]
    return perm, list(np.argsort(perm))


def interleave(frags: np.ndarray, spec) -> np.ndarray:
    """Fragments ``(F, K, h, w)`` -> dense ``(K, h * Py, w * Px)``."""
    pools = _pool_sizes(spec)
    f, k, h, w = frags.shape
    if not pools:
        return frags[0]
    shape = [s for (ph, pw) in reversed(pools) for s in (ph, pw)] + [k, h, w]
    perm, _ = _interleave_perm(len(pools))
    py, px = spec.pool_factor
    return frags.reshape(shape).transpose(perm).reshape(k, h * py, w * px)


def deinterleave(dense: np.ndarray, spec, frag_shape: tuple) -> np.ndarray:
    """Inverse of :func:`interleave`."""
    pools = _pool_sizes(spec)
    f, k, h, w = frag_shape
    if not pools:
        return np.ascontiguousarray(dense[None])
    perm, inv = _interleave_perm(len(pools))
    shape = [s for (ph, pw) in reversed(pools) for s in (ph, pw)] + [k, h, w]
    permuted_shape = [shape[p] for p in perm]
    return np.ascontiguousarray(dense.reshape(permuted_shape).transpose(inv).reshape(frag_shape))


def backward(
    model: Model, cache: Cache, grad_logits: np.ndarray, grad_features: np.ndarray | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gradients of the layers' parameters given the gradient of the loss w.r.t. the dense logits
    ``(K, oh, ow)`` and, when heads use them, w.r.t. the dense features of :func:`forward_features`."""
    spec = model.spec
    dtype = model.dtype
    ws = cache.workspace
    if ws is not None and ws.owner is not cache:
        raise RuntimeError("a later forward pass has reused this cache's workspace")
    grad = deinterleave(grad_logits.astype(dtype, copy=False), spec, cache.frag_shape)
    n_param = model.n_layer_params
    last = len(spec.layers) - 1
    grad_w: list = [None] * n_param
    grad_b: list = [None] * n_param
    acts = _activations(model)
    start = last
    if cache.fused_head:
        grad, start = _fused_head_backward(model, cache, grad, acts[last - 1], grad_w, grad_b), last - 2
        n_param -= 2
    for li in range(start, -1, -1):
        layer = spec.layers[li]
        x_in = cache.inputs[li]
        if layer.kind == "pool":
            ph, pw = layer.size
            out, arg = cache.outputs[li]
            if acts[li] != K.ACT_NONE:
                K.activation_backward(grad, out, acts[li])
            grad_in = _grad_buffer(ws, li, x_in.shape, dtype)
            K.mpf_backward(grad, arg, ph, pw, grad_in)
            grad = grad_in
            continue
        n_param -= 1
        if acts[li] != K.ACT_NONE:
            K.activation_backward(grad, cache.outputs[li], acts[li])
        wgt = model.weights[n_param]
        gw = np.empty(wgt.shape, dtype)
        grad_b[n_param] = K.bias_grad(grad, np.empty(grad.shape[1], dtype))
        grad_in = _grad_buffer(ws, li, x_in.shape, dtype) if li > 0 else None
        if wgt.shape[2:] == (1, 1):  # plain matrix products (BLAS)
            g = _flat(grad)
            gw[:, :, 0, 0] = np.matmul(g, _flat(x_in).transpose(0, 2, 1)).sum(axis=0)
            if grad_in is not None:
                np.matmul(np.ascontiguousarray(wgt[:, :, 0, 0].T), g, out=_flat(grad_in))
        else:
            conv.weight_grad(x_in, grad, wgt, gw)
            if grad_in is not None:
                conv.input_grad(grad, wgt, grad_in)
        grad_w[n_param] = gw
        if grad_features is not None and li == last and grad_in is not None:
            grad_in += deinterleave(grad_features.astype(dtype, copy=False), spec, x_in.shape)
        grad = grad_in
    return grad_w, grad_b


def _fused_head_backward(model: Model, cache: Cache, grad: np.ndarray, act: int, grad_w: list,
                         grad_b: list) -> np.ndarray | None:
    """Gradients of the last two (1x1) layers in one kernel; returns the gradient of their input."""
    li = len(model.spec.layers) - 2
    n = model.n_layer_params
    (w1, w2), b1 = model.weights[n - 2:n], model.biases[n - 2]
    dtype = model.dtype
    x_in = cache.inputs[li]
    gw1, gw2 = np.empty(w1.shape, dtype), np.empty(w2.shape, dtype)
    gb1, gb2 = np.empty(w1.shape[0], dtype), np.empty(w2.shape[0], dtype)
    grad_in = _grad_buffer(cache.workspace, li, x_in.shape, dtype) if li > 0 else None
    gx = _flat(grad_in) if grad_in is not None else np.empty((0, 0, 0), dtype)
    conv.fc_pair_backward(_flat(x_in), w1[:, :, 0, 0], b1, act, w2[:, :, 0, 0], _flat(grad),
                          gw1[:, :, 0, 0], gb1, gw2[:, :, 0, 0], gb2, gx)
    grad_w[n - 2:n], grad_b[n - 2:n] = [gw1, gw2], [gb1, gb2]
    return grad_in


def _grad_buffer(ws: Workspace | None, li: int, shape: tuple, dtype) -> np.ndarray:
    """The input gradient of layer ``li``: two buffers in turn (only two gradients are alive at once)."""
    return np.empty(shape, dtype) if ws is None else ws.array(("grad", li % 2), shape, dtype)

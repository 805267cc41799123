"""Independent plain-NumPy, patch-by-patch reference for the MPF engine (tests only).

Shares nothing with :mod:`napari_mpf.engine` except the model's parameters and its resolved spec:
every pixel's window is cut out of the mirror-padded image and pushed through the patch network as
one item of a batch ``(N, C, wh, ww)``. Forward and backward are written with the most obvious
batched formulas (valid cross-correlation one kernel offset at a time, non-overlapping max-pooling via a
reshape), so it is slow and only meant for small images.

Conventions (see the engine's API notes):

- image ``(H, W)`` or ``(C, H, W)``; ``x[c] = (image[c] - norm_mean[c]) / norm_std[c]`` in the
  model's dtype;
- padding ``np.pad(mode="reflect")`` by ``wh // 2`` before and ``wh - 1 - wh // 2`` after (rows;
  the same for columns), pixel ``(y, x)`` sees ``padded[:, y:y + wh, x:x + ww]``;
- conv/fc: ``out[o, i, j] = b[o] + sum W[o, c, a, b] * in[c, i + a, j + b]`` then the activation,
  except on the last layer (logits); pool: max over non-overlapping ``ph x pw`` blocks, ties go to the
  first maximum in row-major order;
- loss: per-pixel softmax cross entropy over painted pixels (label 0 = unpainted, label k is
  logit k-1); ``balance=True`` averages the per-class means over the classes present.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "normalise",
    "windows",
    "forward_patches",
    "ref_logits",
    "ref_loss",
    "ref_loss_and_gradients",
    "fake_model",
]


# --------------------------------------------------------------------------------------------------
# input


def normalise(model, image) -> np.ndarray:
    """``(C, H, W)`` normalised image in the model's dtype."""
    dtype = np.asarray(model.weights[0]).dtype
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[None]
    assert img.ndim == 3, img.shape
    mean = np.asarray(model.norm_mean).astype(dtype).reshape(-1, 1, 1)
    std = np.asarray(model.norm_std).astype(dtype).reshape(-1, 1, 1)
    assert mean.shape[0] == img.shape[0], (mean.shape, img.shape)
    return (img.astype(dtype) - mean) / std


def windows(x: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """All windows of the mirror-padded ``x (C, H, W)`` as a contiguous ``(H * W, C, wh, ww)``.

    Row-major pixel order: window ``n`` belongs to pixel ``(n // W, n % W)``.
    """
    wh, ww = window
    c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (wh // 2, wh - 1 - wh // 2), (ww // 2, ww - 1 - ww // 2)), mode="reflect")
    assert padded.shape == (c, h + wh - 1, w + ww - 1)
    v = sliding_window_view(padded, (wh, ww), axis=(1, 2))  # (C, H, W, wh, ww)
    assert v.shape == (c, h, w, wh, ww)
    return np.ascontiguousarray(v.transpose(1, 2, 0, 3, 4)).reshape(h * w, c, wh, ww)


# --------------------------------------------------------------------------------------------------
# layers


def _conv_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray):
    """Valid cross-correlation of a batch ``x (N, Cin, h, w)`` with ``weight (Cout, Cin, kh, kw)``.

    ``out[n, o, i, j] = b[o] + sum_{a, b} sum_c x[n, c, i + a, j + b] * W[o, c, a, b]``, one kernel
    offset ``(a, b)`` at a time (a matrix product over ``c``).
    """
    cout, cin, kh, kw = weight.shape
    n, c, h, w = x.shape
    assert c == cin, (x.shape, weight.shape)
    assert h >= kh and w >= kw, (x.shape, weight.shape)
    oh, ow = h - kh + 1, w - kw + 1
    out = np.zeros((n, oh, ow, cout), dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            out += np.tensordot(x[:, :, a : a + oh, b : b + ow], weight[:, :, a, b], axes=([1], [1]))
    out = out.transpose(0, 3, 1, 2) + bias.reshape(1, cout, 1, 1)
    return np.ascontiguousarray(out)


def _conv_backward(x: np.ndarray, weight: np.ndarray, dout: np.ndarray, need_dx: bool = True):
    """Gradients of ``sum(dout * conv(x))`` w.r.t. weight, bias and x (None unless ``need_dx``)."""
    cout, cin, kh, kw = weight.shape
    n, _, oh, ow = dout.shape
    dweight = np.empty_like(weight)
    dx = np.zeros_like(x) if need_dx else None
    for a in range(kh):
        for b in range(kw):
            xs = x[:, :, a : a + oh, b : b + ow]
            # dW[o, c, a, b] = sum_{n, i, j} dout[n, o, i, j] * x[n, c, i + a, j + b]
            dweight[:, :, a, b] = np.tensordot(dout, xs, axes=([0, 2, 3], [0, 2, 3]))
            if need_dx:
                # dx[n, c, i + a, j + b] += sum_o dout[n, o, i, j] * W[o, c, a, b]
                contrib = np.tensordot(dout, weight[:, :, a, b], axes=([1], [0]))  # (N, oh, ow, Cin)
                dx[:, :, a : a + oh, b : b + ow] += contrib.transpose(0, 3, 1, 2)
    dbias = dout.sum(axis=(0, 2, 3))
    return dweight, dbias, dx


def _pool_blocks(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(N, C, h, w)`` -> ``(N, C, h // ph, w // pw, ph * pw)``, each block in row-major order."""
    ph, pw = size
    n, c, h, w = x.shape
    assert h % ph == 0 and w % pw == 0, f"pool {size} does not divide the map {h}x{w} in the patch view"
    blocks = x.reshape(n, c, h // ph, ph, w // pw, pw).transpose(0, 1, 2, 4, 3, 5)
    return blocks.reshape(n, c, h // ph, w // pw, ph * pw)


def _pool_forward(x: np.ndarray, size: tuple[int, int]):
    blocks = _pool_blocks(x, size)
    arg = np.argmax(blocks, axis=-1)  # first maximum in row-major order
    out = np.take_along_axis(blocks, arg[..., None], axis=-1)[..., 0]
    return out, arg


def _pool_backward(x_shape, size: tuple[int, int], arg: np.ndarray, dout: np.ndarray) -> np.ndarray:
    ph, pw = size
    n, c, h, w = x_shape
    dblocks = np.zeros((n, c, h // ph, w // pw, ph * pw), dtype=dout.dtype)
    np.put_along_axis(dblocks, arg[..., None], dout[..., None], axis=-1)
    dx = dblocks.reshape(n, c, h // ph, w // pw, ph, pw).transpose(0, 1, 2, 4, 3, 5)
    return dx.reshape(n, c, h, w)


def _activate(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(z)
    if activation == "relu":
        return np.maximum(z, 0)
    raise ValueError(activation)


def _activation_backward(z: np.ndarray, a: np.ndarray, dout: np.ndarray, activation: str) -> np.ndarray:
    if activation == "tanh":
        return dout * (1 - a * a)
    return dout * (z > 0)


# --------------------------------------------------------------------------------------------------
# network


def _params(model, dtype):
    ws = [np.asarray(w).astype(dtype) for w in model.weights]
    bs = [np.asarray(b).astype(dtype) for b in model.biases]
    return ws, bs


def forward_patches(model, batch: np.ndarray, dtype=None, keep: bool = False):
    """Run the patch network on ``batch (N, C, wh, ww)``; returns logits ``(N, K)`` (and the tape)."""
    dtype = np.dtype(dtype or batch.dtype)
    ws, bs = _params(model, dtype)
    x = batch.astype(dtype)
    layers = model.spec.layers
    n_param = sum(layer.kind in ("conv", "fc") for layer in layers)
    assert n_param == len(ws) == len(bs)
    last = len(layers) - 1
    tape = []
    k = 0
    for i, layer in enumerate(layers):
        if layer.kind in ("conv", "fc"):
            w, b = ws[k], bs[k]
            assert w.shape[0] == layer.maps, (layer, w.shape)
            if layer.kind == "conv":
                assert tuple(w.shape[2:]) == tuple(layer.size), (layer, w.shape)
            else:  # the FC kernel covers the whole remaining extent
                assert tuple(w.shape[2:]) == x.shape[2:], (layer, w.shape, x.shape)
            z = _conv_forward(x, w, b)
            a = z if i == last else _activate(z, model.activation)
            tape.append(("param", k, x, z, a, i == last))
            x = a
            k += 1
        elif layer.kind == "pool":
            out, arg = _pool_forward(x, layer.size)
            tape.append(("pool", layer.size, x.shape, arg))
            x = out
        else:
            raise ValueError(layer.kind)
    assert x.shape[2:] == (1, 1), f"the patch network should end in a 1x1 map, got {x.shape}"
    logits = x[:, :, 0, 0]
    return (logits, tape, ws) if keep else logits


def ref_logits(model, image, dtype=None) -> np.ndarray:
    """Reference logits ``(K, H, W)``; computed in ``dtype`` (default: the model's dtype).

    Normalisation is always done in the model's dtype, as the engine does; a wider ``dtype`` then
    gives the exact answer for the model's (rounded) input.
    """
    x = normalise(model, image)
    _, h, w = x.shape
    batch = windows(x, tuple(model.spec.window))
    logits = forward_patches(model, batch, dtype=dtype or x.dtype)
    return np.ascontiguousarray(logits.T.reshape(-1, h, w))


def _pixel_weights(labels: np.ndarray, n_classes: int, balance: bool, dtype) -> np.ndarray:
    """Weight of each pixel's cross entropy in the loss (0 for unpainted pixels)."""
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    assert lab.min() >= 0 and lab.max() <= n_classes, "labels out of range"
    weights = np.zeros(lab.shape, dtype=dtype)
    painted = lab > 0
    if not painted.any():
        return weights
    if balance:
        present = [k for k in range(1, n_classes + 1) if np.any(lab == k)]
        for k in present:
            sel = lab == k
            weights[sel] = 1.0 / (len(present) * sel.sum())
    else:
        weights[painted] = 1.0 / painted.sum()
    return weights


def _cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Per-row CE and its gradient w.r.t. the logits (rows with label 0 get 0 / the softmax)."""
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    zmax = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - zmax)
    s = e.sum(axis=1, keepdims=True)
    logp = logits - zmax - np.log(s)
    p = e / s
    idx = np.maximum(lab - 1, 0)
    ce = -np.take_along_axis(logp, idx[:, None], axis=1)[:, 0]
    onehot = np.zeros_like(p)
    onehot[np.arange(len(lab)), idx] = 1
    return ce, p - onehot


def ref_loss(model, image, labels, balance: bool = True, dtype=np.float64) -> float:
    """The loss alone (used for finite differences of the reference)."""
    logits = ref_logits(model, image, dtype=dtype)
    k = logits.shape[0]
    z = logits.reshape(k, -1).T
    ce, _ = _cross_entropy(z, labels)
    return float(np.sum(_pixel_weights(labels, k, balance, z.dtype) * ce))


def ref_loss_and_gradients(model, image, labels, balance: bool = True, dtype=np.float64):
    """Reference ``(loss, grad_weights, grad_biases)``; computed in ``dtype`` (default float64)."""
    x = normalise(model, image)
    _, h, w = x.shape
    labels = np.asarray(labels)
    assert labels.shape == (h, w), (labels.shape, x.shape)
    batch = windows(x, tuple(model.spec.window))
    logits, tape, ws = forward_patches(model, batch, dtype=dtype, keep=True)
    k = logits.shape[1]
    ce, dce = _cross_entropy(logits, labels)
    pw = _pixel_weights(labels, k, balance, logits.dtype)
    loss = float(np.sum(pw * ce))
    grad = (pw[:, None] * dce)[:, :, None, None]  # dL/dlogits, (N, K, 1, 1)
    gw = [None] * len(ws)
    gb = [None] * len(ws)
    for entry in reversed(tape):
        if entry[0] == "param":
            _, idx, xin, z, a, is_last = entry
            if not is_last:
                grad = _activation_backward(z, a, grad, model.activation)
            gw[idx], gb[idx], grad = _conv_backward(xin, ws[idx], grad, need_dx=idx > 0)
        else:
            _, size, shape, arg = entry
            grad = _pool_backward(shape, size, arg, grad)
    return loss, gw, gb


# --------------------------------------------------------------------------------------------------
# a stand-in model (tests of the reference itself, without the engine)


def fake_model(spec, in_channels: int, activation: str = "tanh", seed: int = 0, dtype=np.float64):
    """A model-like namespace with random parameters for a resolved ``spec`` (a NetworkSpec)."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    cin = in_channels
    h, w = spec.window
    for layer in spec.layers:
        if layer.kind == "pool":
            h, w = h // layer.size[0], w // layer.size[1]
            continue
        kh, kw = (h, w) if layer.kind == "fc" else layer.size
        fan_in = cin * kh * kw
        weights.append((rng.normal(size=(layer.maps, cin, kh, kw)) * 1.5 / np.sqrt(fan_in)).astype(dtype))
        biases.append((rng.normal(size=layer.maps) * 0.2).astype(dtype))
        cin = layer.maps
        h, w = h - kh + 1, w - kw + 1
    return SimpleNamespace(
        spec=spec,
        activation=activation,
        in_channels=in_channels,
        n_classes=spec.layers[-1].maps,
        weights=weights,
        biases=biases,
        norm_mean=(rng.normal(size=in_channels) * 0.3).astype(np.float32),
        norm_std=(1 + rng.random(in_channels)).astype(np.float32),
    )

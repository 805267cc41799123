"""Dense MPF engine == patch-by-patch reference: logits, loss and parameter gradients.

The reference (``reference.py``) cuts every pixel's mirror-padded window out of the image and runs
the patch network on it with plain NumPy; it shares only the parameters and the resolved spec with
the engine. It is itself checked against explicit per-pixel loops here and against finite
differences in ``test_gradcheck.py``.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from _cases import CASE_IDS, CASES, allclose_scaled, make_image, make_labels, randomise
from reference import fake_model, normalise, ref_logits, ref_loss_and_gradients

from napari_mpf.engine import Model, parse_spec, predict_logits, predict_proba
from napari_mpf.engine.training.loss import loss_and_gradients

RTOL64 = 1e-9
RTOL32 = 1e-5  # float32 forward (observed <= 1.3e-6 relative to max |logit|)
GRAD_RTOL32 = 3e-5  # float32 gradients (observed <= 1.1e-6)


def _setup(case, dtype, seed=0):
    _, spec, c, k, act, shape, mode = case
    model = Model.create(spec, c, k, activation=act, seed=seed, dtype=dtype)
    randomise(model, seed)
    image = make_image(shape, c, seed)
    labels = make_labels(shape, k, mode, seed)
    return model, image, labels


# --------------------------------------------------------------------------------------------------
# the reference against explicit loops (no engine involved)


def _loop_forward_pixel(model, image, y, x):
    """One pixel's logits with explicit loops over every output position (float64)."""
    xn = normalise(model, image).astype(np.float64)
    wh, ww = model.spec.window
    pad = ((0, 0), (wh // 2, wh - 1 - wh // 2), (ww // 2, ww - 1 - ww // 2))
    a = np.pad(xn, pad, mode="reflect")[:, y : y + wh, x : x + ww]
    k = 0
    n_param = sum(layer.kind != "pool" for layer in model.spec.layers)
    for layer in model.spec.layers:
        if layer.kind == "pool":
            ph, pw = layer.size
            c, h, w = a.shape
            out = np.empty((c, h // ph, w // pw))
            for ci in range(c):
                for i in range(h // ph):
                    for j in range(w // pw):
                        out[ci, i, j] = max(
                            a[ci, i * ph + u, j * pw + v] for u in range(ph) for v in range(pw)
                        )
            a = out
            continue
        wgt = np.asarray(model.weights[k], np.float64)
        b = np.asarray(model.biases[k], np.float64)
        co, ci_, kh, kw = wgt.shape
        c, h, w = a.shape
        out = np.empty((co, h - kh + 1, w - kw + 1))
        for o in range(co):
            for i in range(h - kh + 1):
                for j in range(w - kw + 1):
                    out[o, i, j] = b[o] + np.sum(wgt[o] * a[:, i : i + kh, j : j + kw])
        k += 1
        if k < n_param:
            out = np.tanh(out) if model.activation == "tanh" else np.maximum(out, 0)
        a = out
    assert a.shape[1:] == (1, 1)
    return a[:, 0, 0]


@pytest.mark.parametrize(
    "spec, c, act, shape",
    [
        ("C3x3x4, MPF2x2, C2x2x5, FC7, FC3", 1, "tanh", (5, 7)),
        ("C3x2x4, MPF2x3, C2x3x4, MPF3x2, C2x2x3, FC4, FC2", 2, "relu", (4, 5)),
        ("IN10x10, C3x3x4, MPF2x2, FC6, FC3", 1, "tanh", (3, 4)),
        ("C2x2x3, MPF3x3, C2x2x4, FC5, FC2", 1, "relu", (1, 1)),
    ],
)
def test_reference_forward_matches_loops(spec, c, act, shape):
    model = fake_model(parse_spec(spec), c, act, seed=3)
    image = make_image(shape, c, 3)
    logits = ref_logits(model, image)
    for y in range(shape[0]):
        for x in range(shape[1]):
            np.testing.assert_allclose(logits[:, y, x], _loop_forward_pixel(model, image, y, x), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# engine == reference


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_float64(case):
    model, image, _ = _setup(case, np.float64)
    got = predict_logits(model, image)
    want = ref_logits(model, image, dtype=np.float64)
    assert got.shape == want.shape == (case[3], *case[5])
    assert got.dtype == np.float64
    allclose_scaled(got, want, RTOL64, "logits")


FORWARD32 = [c for c in CASES if c[0] in (
    "mpf1-tanh-13x17", "mpf2-relu-9x11", "rect2-tanh-13x17", "rgb-tanh-9x11",
    "in10-tanh-13x17", "tiny-2x3", "steel-tanh-9x11", "fast-relu-7x9",
)]


@pytest.mark.parametrize("case", FORWARD32, ids=[c[0] for c in FORWARD32])
def test_forward_float32(case):
    model, image, _ = _setup(case, np.float32)
    got = predict_logits(model, image)
    assert got.dtype == np.float32
    # exact answer for the float32 parameters and the float32-normalised input
    want = ref_logits(model, image, dtype=np.float64)
    allclose_scaled(got, want, RTOL32, "logits float32")


@pytest.mark.parametrize("balance", [True, False], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_float64(case, balance):
    model, image, labels = _setup(case, np.float64)
    loss, gw, gb = loss_and_gradients(model, image, labels, balance=balance)
    rloss, rgw, rgb = ref_loss_and_gradients(model, image, labels, balance=balance)
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, rloss, rtol=RTOL64)
    assert len(gw) == len(model.weights) and len(gb) == len(model.biases)
    for i, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        assert gw[i].shape == w.shape and gb[i].shape == b.shape
        allclose_scaled(gw[i], rgw[i], RTOL64, f"grad weights[{i}]")
        allclose_scaled(gb[i], rgb[i], RTOL64, f"grad biases[{i}]")


GRAD32 = [c for c in CASES if c[0] in (
    "mpf2-tanh-13x17", "rect-relu-11x13", "in10-relu-9x11", "steel-tanh-9x11",
)]


@pytest.mark.parametrize("case", GRAD32, ids=[c[0] for c in GRAD32])
def test_gradients_float32(case):
    model, image, labels = _setup(case, np.float32)
    loss, gw, gb = loss_and_gradients(model, image, labels, balance=True)
    rloss, rgw, rgb = ref_loss_and_gradients(model, image, labels, balance=True, dtype=np.float64)
    np.testing.assert_allclose(loss, rloss, rtol=RTOL32)
    for i in range(len(model.weights)):
        assert gw[i].shape == model.weights[i].shape
        allclose_scaled(gw[i], rgw[i], GRAD_RTOL32, f"grad weights[{i}] float32")
        allclose_scaled(gb[i], rgb[i], GRAD_RTOL32, f"grad biases[{i}] float32")


TILED = [c for c in CASES if c[0] in (
    "mpf1-tanh-13x17", "rect2-tanh-13x17", "pool3-relu-10x8", "in7x10-tanh-11x9", "medium-mpf2-tanh-45x70",
)]


@pytest.mark.parametrize("tile", [1, 5, 8, 12])
@pytest.mark.parametrize("case", TILED, ids=[c[0] for c in TILED])
def test_forward_tiled(case, tile):
    """Prediction in tiles (rounded up to the pooling factor) joins without seams."""
    if "tile" not in inspect.signature(predict_logits).parameters:
        pytest.skip("predict_logits has no tile argument")
    model, image, _ = _setup(case, np.float64)
    got = predict_logits(model, image, tile=tile)
    allclose_scaled(got, ref_logits(model, image, dtype=np.float64), RTOL64, f"logits tile={tile}")


def test_predict_proba_is_softmax_of_logits():
    model, image, _ = _setup(CASES[0], np.float32)
    p = predict_proba(model, image)
    assert p.dtype == np.float32 and p.shape == (3, 13, 17)
    z = ref_logits(model, image, dtype=np.float64)
    e = np.exp(z - z.max(axis=0))
    np.testing.assert_allclose(p, e / e.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_uint8_image_and_unpainted_label_values_ignored():
    """An integer image is normalised like a float one; the loss only sees painted pixels."""
    case = CASES[0]
    model, image, labels = _setup(case, np.float64)
    img8 = np.clip(image * 40 + 100, 0, 255).astype(np.uint8)
    allclose_scaled(predict_logits(model, img8), ref_logits(model, img8, dtype=np.float64), RTOL64)
    loss, gw, _ = loss_and_gradients(model, img8, labels)
    rloss, rgw, _ = ref_loss_and_gradients(model, img8, labels)
    np.testing.assert_allclose(loss, rloss, rtol=RTOL64)
    for g, r in zip(gw, rgw, strict=True):
        allclose_scaled(g, r, RTOL64)

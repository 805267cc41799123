"""Central finite differences of the loss against analytic gradients (float64).

Max-pooling (arg-max switches) and ReLU make the loss piecewise smooth. An entry whose left and
right one-sided differences disagree sits on a kink; such entries are skipped (and counted: only a
few may be skipped), every other entry must agree with the analytic gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
from _cases import make_image, make_labels, randomise
from reference import fake_model, ref_logits, ref_loss, ref_loss_and_gradients

from napari_mpf.engine import Model, parse_spec
from napari_mpf.engine.training.loss import loss_and_gradients

EPS = 1e-6


def _entries(model, rng, per_layer=5, per_bias=2):
    """Random (kind, layer, index) entries: a few weights and biases of every conv/fc layer."""
    out = []
    for i, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        for flat in rng.choice(w.size, size=min(per_layer, w.size), replace=False):
            out.append(("w", i, np.unravel_index(flat, w.shape)))
        for flat in rng.choice(b.size, size=min(per_bias, b.size), replace=False):
            out.append(("b", i, (flat,)))
    return out


def _check(model, loss_fn, grads_w, grads_b, seed, max_kink_fraction):
    rng = np.random.default_rng(seed)
    f0 = loss_fn(model)
    entries = _entries(model, rng)
    bad, kinks = [], 0
    for kind, i, idx in entries:
        arr = (model.weights if kind == "w" else model.biases)[i]
        old = arr[idx]
        arr[idx] = old + EPS
        fp = loss_fn(model)
        arr[idx] = old - EPS
        fm = loss_fn(model)
        arr[idx] = old
        right, left = (fp - f0) / EPS, (f0 - fm) / EPS
        central = (fp - fm) / (2 * EPS)
        g = float((grads_w if kind == "w" else grads_b)[i][idx])
        # one-sided differences err by ~EPS * curvature; a jump far beyond that is a kink
        if abs(right - left) > 1e-4 * max(1.0, abs(central)):
            kinks += 1
            continue
        if abs(central - g) > 1e-5 * abs(g) + 1e-8:
            bad.append((kind, i, idx, g, central))
    assert loss_fn(model) == f0  # parameters restored exactly
    assert not bad, f"analytic vs finite differences (kind, layer, index, analytic, fd): {bad}"
    assert kinks <= max_kink_fraction * len(entries), f"{kinks} of {len(entries)} entries on a kink"


ENGINE_CASES = [
    ("C3x3x4, MPF2x2, C2x2x5, FC7, FC3", 1, 3, "tanh", (13, 17), "dense", True),
    ("C3x3x4, MPF2x2, C2x2x5, FC7, FC3", 1, 3, "relu", (13, 17), "dense", False),
    ("C3x2x4, MPF2x3, C2x3x4, MPF3x2, C2x2x3, FC4, FC2", 2, 2, "tanh", (11, 13), "absent", True),
    ("C3x2x4, MPF2x3, C2x3x4, MPF3x2, C2x2x3, FC4, FC2", 2, 2, "relu", (11, 13), "sparse", True),
    ("IN10x10, C3x3x4, MPF2x2, FC6, FC3", 1, 3, "tanh", (9, 11), "sparse", False),
    ("IN10x10, C3x3x4, MPF2x2, FC6, FC3", 3, 3, "relu", (9, 11), "absent", True),
]


@pytest.mark.parametrize(
    "spec, c, k, act, shape, mode, balance",
    ENGINE_CASES,
    ids=[f"{i}-{case[3]}" for i, case in enumerate(ENGINE_CASES)],
)
def test_engine_gradients_by_finite_differences(spec, c, k, act, shape, mode, balance):
    model = Model.create(spec, c, k, activation=act, seed=5, dtype=np.float64)
    randomise(model, 5)
    image = make_image(shape, c, 5)
    labels = make_labels(shape, k, mode, 5)
    _, gw, gb = loss_and_gradients(model, image, labels, balance=balance)

    def loss_fn(m):
        return loss_and_gradients(m, image, labels, balance=balance)[0]

    _check(model, loss_fn, gw, gb, seed=11, max_kink_fraction=0.0 if act == "tanh" else 0.2)


@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize(
    "spec, c, act, shape",
    [
        ("C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2", 1, "tanh", (9, 11)),
        ("C3x2x4, MPF2x3, C2x2x4, FC5, FC3", 2, "relu", (7, 8)),
        ("IN10x10, C3x3x4, MPF2x2, FC6, FC3", 1, "tanh", (5, 6)),
    ],
)
def test_reference_gradients_by_finite_differences(spec, c, act, shape, balance):
    """The reference's hand-written backward, checked without the engine."""
    model = fake_model(parse_spec(spec), c, act, seed=2)
    k = model.n_classes
    image = make_image(shape, c, 2)
    labels = make_labels(shape, k, "absent" if balance else "dense", 2)
    _, gw, gb = ref_loss_and_gradients(model, image, labels, balance=balance)

    def loss_fn(m):
        return ref_loss(m, image, labels, balance=balance)

    _check(model, loss_fn, gw, gb, seed=4, max_kink_fraction=0.0 if act == "tanh" else 0.2)


def test_reference_loss_formula():
    """Balanced and unbalanced losses from per-pixel cross entropies, by hand."""
    model = fake_model(parse_spec("C3x3x4, MPF2x2, C2x2x5, FC7, FC3"), 1, "tanh", seed=1)
    image = make_image((6, 5), 1, 1)
    labels = np.zeros((6, 5), int)
    labels[0, 0] = labels[1, 2] = labels[3, 4] = 1
    labels[5, 1] = 3  # class 2 absent
    z = ref_logits(model, image, dtype=np.float64)
    ce = {}
    for y, x in zip(*np.nonzero(labels), strict=True):
        v = z[:, y, x]
        ce[(y, x)] = np.log(np.sum(np.exp(v))) - v[labels[y, x] - 1]
    c1 = [ce[p] for p in ce if labels[p] == 1]
    c3 = [ce[p] for p in ce if labels[p] == 3]
    np.testing.assert_allclose(ref_loss(model, image, labels, balance=True), 0.5 * (np.mean(c1) + np.mean(c3)), rtol=1e-12)
    np.testing.assert_allclose(ref_loss(model, image, labels, balance=False), np.mean(c1 + c3), rtol=1e-12)

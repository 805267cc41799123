"""Shared test cases and helpers for the engine exactness / gradient tests."""

from __future__ import annotations

import numpy as np

# (id, spec, in_channels, n_classes, activation, (H, W), label mode)
CASES = [
    ("mpf1-tanh-13x17", "C3x3x4, MPF2x2, C2x2x5, FC7, FC3", 1, 3, "tanh", (13, 17), "dense"),
    ("mpf1-relu-9x11", "C3x3x4, MPF2x2, C2x2x5, FC7, FC3", 1, 3, "relu", (9, 11), "absent"),
    ("mpf2-tanh-13x17", "C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2", 1, 2, "tanh", (13, 17), "sparse"),
    ("mpf2-relu-9x11", "C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2", 1, 2, "relu", (9, 11), "dense"),
    ("pool3-tanh-13x17", "C2x2x3, MPF3x3, C2x2x4, FC5, FC2", 1, 2, "tanh", (13, 17), "dense"),
    ("pool3-relu-10x8", "C2x2x3, MPF3x3, C2x2x4, FC5, FC3", 1, 3, "relu", (10, 8), "sparse"),
    ("rect-relu-11x13", "C3x2x4, MPF2x3, C2x2x4, FC5, FC3", 1, 3, "relu", (11, 13), "dense"),
    ("rect2-tanh-13x17", "C3x2x4, MPF2x3, C2x3x4, MPF3x2, C2x2x3, FC4, FC2", 1, 2, "tanh", (13, 17), "dense"),
    ("rgb-tanh-9x11", "C3x3x5, MPF2x2, C2x2x4, FC6, FC4", 3, 4, "tanh", (9, 11), "absent"),
    ("rgb-relu-8x7", "C3x3x5, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2", 3, 2, "relu", (8, 7), "dense"),
    ("in10-tanh-13x17", "IN10x10, C3x3x4, MPF2x2, FC6, FC3", 1, 3, "tanh", (13, 17), "dense"),
    ("in10-relu-9x11", "IN10x10, C3x3x4, MPF2x2, FC6, FC3", 2, 3, "relu", (9, 11), "sparse"),
    ("in7x10-tanh-11x9", "IN7x10, C2x3x3, MPF2x2, FC4, FC2", 1, 2, "tanh", (11, 9), "dense"),
    ("in5-nopool-tanh-9x8", "IN5x5, C3x3x4, FC3, FC2", 1, 2, "tanh", (9, 8), "dense"),
    ("nopool-relu-9x11", "C3x3x4, C3x3x4, FC2", 1, 2, "relu", (9, 11), "dense"),
    ("pool1-tanh-9x11", "C3x3x4, MPF1x1, C2x2x3, FC2", 1, 2, "tanh", (9, 11), "dense"),
    ("twopools-tanh-13x17", "C2x2x3, MPF2x2, MPF2x2, C2x2x3, FC2", 1, 2, "tanh", (13, 17), "dense"),
    ("tiny-1x1", "C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2", 1, 2, "tanh", (1, 1), "one"),
    ("tiny-2x3", "C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2", 1, 2, "relu", (2, 3), "dense"),
    ("tiny-5x4", "C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC3", 2, 3, "tanh", (5, 4), "dense"),
    ("tiny-3x2-in10", "IN10x10, C3x3x4, MPF2x2, FC6, FC3", 1, 3, "tanh", (3, 2), "dense"),
    ("steel-tanh-9x11", "steel", 1, 2, "tanh", (9, 11), "sparse"),
    ("fast-relu-7x9", "fast", 2, 3, "relu", (7, 9), "dense"),
    ("wide-tanh-9x11", "wide", 1, 2, "tanh", (9, 11), "sparse"),
    # larger maps: row lengths beyond typical vector / tile widths
    ("medium-mpf2-tanh-45x70", "C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC3", 1, 3, "tanh", (45, 70), "dense"),
    ("medium-steel-relu-10x40", "steel", 1, 2, "relu", (10, 40), "sparse"),
]

CASE_IDS = [c[0] for c in CASES]


def randomise(model, seed: int, gain: float | None = None) -> None:
    """Overwrite the model's parameters and normalisation in place with seeded random values.

    Weights ~ N(0, gain^2 / fan_in) (tanh 1.5, relu 1.2: logits of order 1, units neither saturated
    nor dead), biases ~ N(0, 0.2^2), normalisation mean/std non-trivial.
    """
    rng = np.random.default_rng(1000 + seed)
    if gain is None:
        gain = 1.5 if model.activation == "tanh" else 1.2
    for w, b in zip(model.weights, model.biases, strict=True):
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        w[...] = rng.normal(size=w.shape) * gain / np.sqrt(fan_in)
        b[...] = rng.normal(size=b.shape) * 0.2
    c = len(model.norm_mean)
    model.norm_mean[...] = rng.normal(size=c) * 0.5
    model.norm_std[...] = 0.5 + rng.random(c)


def make_image(shape, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = shape
    img = rng.normal(size=(channels, h, w)) * 1.3 + 0.2
    # some spatial structure too, so neighbouring windows differ smoothly
    yy, xx = np.mgrid[0:h, 0:w]
    img += np.sin(0.7 * yy + 0.3 * xx)[None]
    return img[0] if channels == 1 else img


def make_labels(shape, n_classes: int, mode: str, seed: int) -> np.ndarray:
    """Labels (H, W): 0 = unpainted, 1..K classes.

    ``dense``: every value 0..K; ``sparse``: a handful of painted pixels; ``absent``: class 1 and
    K only (others absent), with unpainted pixels; ``one``: a single painted pixel.
    """
    rng = np.random.default_rng(seed + 7)
    h, w = shape
    lab = np.zeros((h, w), dtype=np.int32)
    if mode == "dense":
        lab[...] = rng.integers(0, n_classes + 1, size=(h, w))
        lab.flat[0] = 1  # at least one painted pixel
    elif mode == "sparse":
        n = min(5, h * w)
        idx = rng.choice(h * w, size=n, replace=False)
        lab.flat[idx] = rng.integers(1, n_classes + 1, size=n)
    elif mode == "absent":
        lab[...] = rng.choice([0, 1, n_classes], size=(h, w), p=[0.4, 0.45, 0.15])
        lab.flat[0] = n_classes
    elif mode == "one":
        lab.flat[rng.integers(h * w)] = rng.integers(1, n_classes + 1)
    else:
        raise ValueError(mode)
    return lab


def allclose_scaled(actual, desired, rtol: float, what: str = "") -> None:
    """assert_allclose with rtol and an absolute tolerance of rtol times the largest |desired|.

    Summation order differs between engine and reference, so an entry's rounding error scales
    with the magnitudes summed, not with the (possibly cancelled) entry itself.
    """
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * max(scale, 1e-30), err_msg=what)


def same_results_on_two_paths(model, image, labels, use_first, use_second) -> None:
    """Logits, loss and gradients of ``model`` agree when computed after ``use_first()`` and after
    ``use_second()`` (each switches the kernels used, e.g. through monkeypatch)."""
    from napari_mpf.engine import predict_logits
    from napari_mpf.engine.training.loss import loss_and_gradients

    results = []
    for use in (use_first, use_second):
        use()
        results.append((predict_logits(model, image), loss_and_gradients(model, image, labels)))
    (la, (lossa, gwa, gba)), (lb, (lossb, gwb, gbb)) = results
    np.testing.assert_allclose(lb, la, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(lossb, lossa, rtol=1e-12)
    for a, b in zip(gwa + gba, gwb + gbb, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)

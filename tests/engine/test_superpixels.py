"""Superpixel pooling against scipy.ndimage, finite-difference gradients, SLIC and its cache."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_mpf.engine import InputError
from napari_mpf.engine.network import superpixels as sp

# (seed, C, H, W, S): random segment maps with ignored pixels; S > 2 also gets an empty id
CASES = [
    (0, 3, 17, 23, 6),
    (1, 1, 1, 1, 1),
    (2, 2, 9, 31, 1),
    (3, 4, 32, 32, 40),
    (4, 2, 5, 40, 3),
    (5, 1, 12, 7, 200),
]
DTYPES = [np.float32, np.float64]


def _segments(rng, h: int, w: int, n: int) -> np.ndarray:
    """Random ids in -1..n-1 (about 10% ignored); id 1 left empty when n > 2."""
    seg = rng.integers(0, n, (h, w)).astype(np.int32)
    seg[rng.random((h, w)) < 0.1] = -1
    if n > 2:
        seg[seg == 1] = -1
    return seg


def _case(seed, c, h, w, n, dtype, ties=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c, h, w))
    if ties:
        x = np.round(x)
    return x.astype(dtype), _segments(rng, h, w, n)


def _reference(x, seg, n, fn):
    """``fn`` (scipy.ndimage.maximum / mean) per channel, empty ids -> 0."""
    present = np.bincount(seg[seg >= 0], minlength=n) > 0
    out = np.zeros((x.shape[0], n), np.float64)
    with np.errstate(invalid="ignore"):  # scipy's mean of an empty id is 0 / 0
        for c in range(x.shape[0]):
            ref = fn(x[c], labels=seg + 1, index=np.arange(1, n + 1))
            out[c, present] = np.asarray(ref)[present]
    return out.astype(x.dtype)


# ------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed,c,h,w,n", CASES)
def test_max_pool_matches_scipy(seed, c, h, w, n, dtype, ties):
    x, seg = _case(seed, c, h, w, n, dtype, ties)
    pooled, arg = sp.sp_pool_forward(x, seg, n, "max")
    assert pooled.dtype == dtype and pooled.shape == (c, n) and arg.shape == (c, n)
    np.testing.assert_array_equal(pooled, _reference(x, seg, n, ndi.maximum))
    flat_seg = seg.ravel()
    for ch in range(c):
        flat_x = x[ch].ravel()
        for s in range(n):
            hits = np.flatnonzero((flat_seg == s) & (flat_x == pooled[ch, s]))
            expected = hits[0] if (flat_seg == s).any() else -1
            assert arg[ch, s] == expected  # first maximum in raster order, -1 when empty


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed,c,h,w,n", CASES)
def test_mean_pool_matches_scipy(seed, c, h, w, n, dtype):
    x, seg = _case(seed, c, h, w, n, dtype)
    pooled, counts = sp.sp_pool_forward(x, seg, n, "mean")
    assert pooled.dtype == dtype and pooled.shape == (c, n)
    np.testing.assert_array_equal(pooled, _reference(x, seg, n, ndi.mean))
    np.testing.assert_array_equal(counts, np.bincount(seg[seg >= 0], minlength=n))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    c=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    n=st.integers(1, 20),
    mode=st.sampled_from(["max", "mean"]),
)
def test_pool_matches_scipy_property(seed, c, h, w, n, mode):
    x, seg = _case(seed, c, h, w, n, np.float64)
    pooled, _ = sp.sp_pool_forward(x, seg, n, mode)
    ref = _reference(x, seg, n, ndi.maximum if mode == "max" else ndi.mean)
    np.testing.assert_array_equal(pooled, ref)


def test_all_pixels_ignored():
    x = np.ones((2, 3, 4), np.float32)
    seg = np.full((3, 4), -1, np.int32)
    pooled, arg = sp.sp_pool_forward(x, seg, 2, "max")
    np.testing.assert_array_equal(pooled, 0)
    np.testing.assert_array_equal(arg, -1)
    grad = sp.sp_pool_backward(np.ones((2, 2)), seg, arg, "max", (3, 4))
    np.testing.assert_array_equal(grad, 0)


# ----------------------------------------------------------------------------------- backward


def _distinct(seed, c, h, w, n):
    """float64 x whose values are 0.1 apart (the max is differentiable), segments, direction."""
    rng = np.random.default_rng(seed)
    x = rng.permutation(c * h * w).reshape(c, h, w) / 10.0
    return x, _segments(rng, h, w, n), rng


@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize("seed,c,h,w,n", CASES)
def test_backward_finite_differences(seed, c, h, w, n, mode):
    x, seg, rng = _distinct(seed, c, h, w, n)
    r = rng.standard_normal((c, n))
    pooled, aux = sp.sp_pool_forward(x, seg, n, mode)
    grad = sp.sp_pool_backward(r, seg, aux, mode, (h, w))
    assert grad.shape == x.shape and grad.dtype == np.float64
    np.testing.assert_array_equal(grad[:, seg < 0], 0)
    eps = 1e-6
    for _ in range(3):
        d = rng.standard_normal(x.shape)
        f_plus = np.sum(sp.sp_pool_forward(x + eps * d, seg, n, mode)[0] * r)
        f_minus = np.sum(sp.sp_pool_forward(x - eps * d, seg, n, mode)[0] * r)
        numeric = (f_plus - f_minus) / (2 * eps)
        assert numeric == pytest.approx(np.sum(grad * d), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_keeps_dtype(dtype):
    x, seg = _case(7, 2, 6, 5, 4, dtype)
    for mode in ("max", "mean"):
        pooled, aux = sp.sp_pool_forward(x, seg, 4, mode)
        assert sp.sp_pool_backward(pooled, seg, aux, mode, (6, 5)).dtype == dtype


@pytest.mark.parametrize("seed,c,h,w,n", CASES)
def test_broadcast_adjoint(seed, c, h, w, n):
    rng = np.random.default_rng(seed)
    seg = _segments(rng, h, w, n)
    v, g = rng.standard_normal((c, n)), rng.standard_normal((c, h, w))
    up = sp.sp_broadcast(v, seg)
    down = sp.sp_broadcast_backward(g, seg, n)
    assert up.shape == (c, h, w) and down.shape == (c, n)
    np.testing.assert_array_equal(up[:, seg < 0], 0)
    np.testing.assert_array_equal(up[:, seg >= 0], v[:, seg[seg >= 0]])
    assert np.sum(up * g) == pytest.approx(np.sum(v * down), rel=1e-12, abs=1e-12)
    ref = [ndi.sum(g[k], labels=seg + 1, index=np.arange(1, n + 1)) for k in range(c)]
    np.testing.assert_allclose(down, np.reshape(ref, (c, n)), rtol=1e-12, atol=1e-12)


def test_broadcast_backward_keeps_dtype():
    g = np.ones((2, 3, 3), np.float32)
    out = sp.sp_broadcast_backward(g, np.zeros((3, 3), np.int32), 1)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, 9)


# --------------------------------------------------------------------------------------- SLIC


def _textured(c=3, h=128, w=128, seed=0):
    """Smooth random texture, normalised per channel (3 channels: skimage would assume RGB)."""
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.standard_normal((c, h, w)), (0, 3, 3))
    img = (img - img.mean((1, 2), keepdims=True)) / (img.std((1, 2), keepdims=True) + 1e-12)
    return img.astype(np.float32)


@pytest.fixture
def slic_calls(monkeypatch):
    """Count the SLIC runs, on an empty cache."""
    sp.clear_superpixel_cache()
    calls = []
    real = sp._run_slic

    def spy(*args, **kwargs):
        calls.append(args[1:])
        return real(*args, **kwargs)

    monkeypatch.setattr(sp, "_run_slic", spy)
    yield calls
    sp.clear_superpixel_cache()


def test_slic_contiguous_and_roughly_sized(slic_calls):
    labels = sp.slic_superpixels(_textured(), size=256)
    assert labels.dtype == np.int32 and labels.shape == (128, 128)
    n = int(labels.max()) + 1
    np.testing.assert_array_equal(np.unique(labels), np.arange(n))
    assert 32 <= n <= 128  # 128 * 128 / 256 = 64 requested
    assert slic_calls == [(64, 0.3)]


def test_slic_cache(slic_calls):
    img = _textured(c=2, h=64, w=48, seed=1)
    first = sp.slic_superpixels(img, size=64)
    first[:] = -7  # callers get copies: this must not reach the cache
    second = sp.slic_superpixels(img.copy(), size=64)
    assert len(slic_calls) == 1
    assert second.min() == 0
    other = sp.slic_superpixels(img, size=16)
    assert len(slic_calls) == 2 and other.max() > second.max()
    sp.slic_superpixels(img, size=64, compactness=1.0)
    assert len(slic_calls) == 3
    sp.clear_superpixel_cache()
    np.testing.assert_array_equal(sp.slic_superpixels(img, size=64), second)
    assert len(slic_calls) == 4


def test_slic_single_pixel_and_huge_size():
    img = _textured(c=1, h=1, w=1)
    np.testing.assert_array_equal(sp.slic_superpixels(img, size=4), [[0]])
    labels = sp.slic_superpixels(_textured(c=2, h=20, w=30), size=1e6)
    np.testing.assert_array_equal(labels, 0)


@pytest.mark.parametrize("size", [0, -3, np.nan, np.inf, "big"])
def test_slic_bad_size(size):
    with pytest.raises(InputError, match="size"):
        sp.slic_superpixels(_textured(c=1, h=8, w=8), size=size)


@pytest.mark.parametrize("shape", [(8, 8), (1, 1, 8, 8), (2, 0, 8)])
def test_slic_bad_image(shape):
    with pytest.raises(InputError, match="image"):
        sp.slic_superpixels(np.zeros(shape, np.float32), size=4)


def test_slic_nan_image():
    img = _textured(c=1, h=8, w=8)
    img[0, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        sp.slic_superpixels(img, size=4)


# -------------------------------------------------------------------------- refine and relabel


def _softmax(z):
    e = np.exp(z - z.max(0))
    return (e / e.sum(0)).astype(np.float32)


def test_refine_probabilities():
    rng = np.random.default_rng(3)
    p = _softmax(rng.standard_normal((4, 30, 40)))
    yy, xx = np.mgrid[:30, :40]
    seg = (yy // 7) * 100 + xx // 9 * 3  # non-contiguous ids
    out = sp.refine_probabilities(p, seg)
    assert out.dtype == np.float32 and out.shape == p.shape
    np.testing.assert_allclose(out.sum(0), 1, atol=1e-6)
    ids = np.unique(seg)
    for k in range(4):
        means = ndi.mean(p[k], labels=seg, index=ids)
        for s, m in zip(ids, means, strict=True):
            vals = out[k][seg == s]
            assert np.all(vals == vals[0])
            assert vals[0] == pytest.approx(m, rel=1e-6)


def test_refine_keeps_ignored_pixels():
    rng = np.random.default_rng(4)
    p = _softmax(rng.standard_normal((3, 6, 5)))
    seg = np.zeros((6, 5), np.int64)
    seg[2] = -1
    out = sp.refine_probabilities(p, seg)
    np.testing.assert_array_equal(out[:, 2], p[:, 2])
    np.testing.assert_allclose(out[:, 0], np.broadcast_to(p[:, seg == 0].mean(1)[:, None], (3, 5)))


@pytest.mark.parametrize("big", [False, True])
def test_relabel(big):
    rng = np.random.default_rng(5)
    ids = np.array([-5, -1, 3, 7, 8, 40]) * (10**12 if big else 1)
    seg = rng.choice(ids, (50, 60))
    out, n = sp.relabel(seg)
    assert out.dtype == np.int32 and out.shape == seg.shape
    assert n == 4
    np.testing.assert_array_equal(np.unique(out[out >= 0]), np.arange(n))
    np.testing.assert_array_equal(out < 0, seg < 0)
    np.testing.assert_array_equal(out[seg < 0], -1)
    for old, new in zip(ids[2:], range(n), strict=True):  # sorted order of the old ids
        np.testing.assert_array_equal(out == new, seg == old)


def test_relabel_all_ignored_and_bad_dtype():
    out, n = sp.relabel(np.full((3, 3), -2))
    assert n == 0 and np.all(out == -1)
    with pytest.raises(InputError, match="integer"):
        sp.relabel(np.zeros((3, 3), np.float32))


# ------------------------------------------------------------------------------- validation

X = np.zeros((2, 100, 100), np.float32)
SEG = np.zeros((100, 100), np.int32)


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: sp.sp_pool_forward(X, SEG[:, :90], 1, "max"),
            "segments are 100x90 but the image is 100x100",
        ),
        (lambda: sp.sp_pool_forward(X, SEG + 3, 3, "mean"), "id 3"),
        (lambda: sp.sp_pool_forward(X, SEG.astype(float), 1, "max"), "integer"),
        (lambda: sp.sp_pool_forward(X, SEG, -1, "max"), "n_segments"),
        (lambda: sp.sp_pool_forward(X, SEG, 1, "sum"), "mode"),
        (lambda: sp.sp_pool_forward(X.astype(int), SEG, 1, "max"), "float32 or float64"),
        (lambda: sp.sp_pool_forward(X[0], SEG, 1, "max"), "3 dimensions"),
        (
            lambda: sp.sp_pool_backward(np.zeros((2, 1)), SEG, np.zeros(2), "mean", (100, 100)),
            "counts",
        ),
        (
            lambda: sp.sp_pool_backward(np.zeros((2, 1)), SEG, np.zeros((2, 1)), "max", (100, 100)),
            "arg-max",
        ),
        (
            lambda: sp.sp_pool_backward(np.zeros((2, 1)), SEG, np.zeros(1), "mean", (100, 90)),
            "100x90",
        ),
        (lambda: sp.sp_broadcast(np.zeros((2, 1)), SEG + 1), "id 1"),
        (lambda: sp.sp_broadcast_backward(X, SEG[:90], 1), "segments are 90x100"),
        (lambda: sp.refine_probabilities(X, SEG[:, :5]), "segments are 100x5"),
    ],
)
def test_input_errors(call, match):
    with pytest.raises(InputError, match=match):
        call()

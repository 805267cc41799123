"""The BLAS (im2col + sgemm) convolution path equals the direct Numba kernels."""

import numpy as np
import pytest
from _cases import same_results_on_two_paths

from napari_mpf.engine import Model
from napari_mpf.engine.kernels import blocked, fc, gemm
from napari_mpf.engine.kernels import layers as K


@pytest.mark.parametrize("act", [K.ACT_NONE, K.ACT_TANH, K.ACT_RELU])
def test_gemm_conv_equals_direct_kernels(act, monkeypatch):
    monkeypatch.setattr(gemm, "TILE_ELEMENTS", 200)  # force several row tiles
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 21, 19))
    w = rng.normal(size=(6, 5, 3, 4))
    b = rng.normal(size=6)
    direct, blas = np.empty((3, 6, 19, 16)), np.empty((3, 6, 19, 16))
    K.conv_forward(x, w, b, act, direct)
    gemm.conv_forward(x, w, b, act, blas)
    np.testing.assert_allclose(blas, direct, rtol=1e-12, atol=1e-12)

    g = rng.normal(size=direct.shape)
    gw_direct, gw_blas = np.empty(w.shape), np.empty(w.shape)
    gi_direct, gi_blas = np.empty(x.shape), np.empty(x.shape)
    K.conv_backward_weights(x, g, gw_direct)
    K.conv_backward_input(g, w, gi_direct)
    gemm.conv_backward(x, g, w, gw_blas, gi_blas)
    np.testing.assert_allclose(gw_blas, gw_direct, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(gi_blas, gi_direct, rtol=1e-12, atol=1e-12)


def test_network_gives_the_same_result_on_both_paths(monkeypatch):
    rng = np.random.default_rng(1)
    model = Model.create("C3x3x6, MPF2x2, C3x3x8, MPF2x2, C2x2x8, FC10", 2, 3, seed=0, dtype=np.float64)
    image = rng.normal(size=(2, 29, 22))
    labels = rng.integers(0, 4, size=(29, 22)) * (rng.random((29, 22)) < 0.3)
    monkeypatch.setattr(blocked, "BLOCKED_OUT", ())  # the 8-map layers through BLAS too
    monkeypatch.setattr(gemm, "GEMM_MIN_OUT", 0)

    def use(threshold):
        return lambda: monkeypatch.setattr(gemm, "GEMM_MIN_K", threshold)

    same_results_on_two_paths(model, image, labels, use(10**9), use(0))  # never BLAS, always BLAS


def test_worker_threads_do_not_change_the_result(monkeypatch):
    """The tiles are shared out among as many threads as Numba has; one thread gives the same sums."""
    import numba

    monkeypatch.setattr(gemm, "TILE_ELEMENTS", 500)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 6, 17, 15))
    w = rng.normal(size=(5, 6, 4, 3))
    g = rng.normal(size=(4, 5, 14, 13))
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            out, gw, gi = np.empty(g.shape), np.empty(w.shape), np.empty(x.shape)
            gemm.conv_forward(x, w, None, K.ACT_TANH, out)
            gemm.conv_backward(x, g, w, gw, gi)
            results.append((out, gw, gi))
    finally:
        numba.set_num_threads(previous)
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("maps", [8, 11, 3])  # inputs of the fused pair: 8 per pass, and the rest
@pytest.mark.parametrize("painted", ["all", "top rows"])
@pytest.mark.parametrize("path", ["numba", "blas"])
def test_fused_head_equals_the_layer_by_layer_pass(maps, painted, path, monkeypatch):
    """Without heads the last two 1x1 layers run as one kernel (forward, and backward by recomputing
    the hidden map, skipping blocks without gradient; Numba or, for wide inputs, BLAS products per
    block); with features requested they run apart. Same logits and gradients."""
    from napari_mpf.engine.network.mpf import backward, forward, forward_features
    from napari_mpf.engine.network.padding import pad_image

    monkeypatch.setattr(gemm, "GEMM_HEAD_MIN_IN", 0 if path == "blas" else 10**9)
    monkeypatch.setattr(gemm, "HEAD_BLOCK", 500)  # several pixel blocks per fragment

    model = Model.create(f"C3x3x6, MPF2x2, C2x2x{maps}, FC12", 2, 3, seed=0, dtype=np.float64)
    rng = np.random.default_rng(3)
    shape = (96, 80)  # fragments of 48 x 40 pixels: several of the kernel's pixel blocks each
    assert shape[0] * shape[1] // 4 > 3 * fc._FC_BLOCK
    padded = pad_image(rng.normal(size=(2, *shape)), model.window, shape)
    fused, fused_cache = forward(model, padded, keep=True)
    apart, feats, apart_cache = forward_features(model, padded, keep=True)
    assert fused_cache.fused_head and not apart_cache.fused_head
    np.testing.assert_allclose(fused, apart, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(forward(model, padded)[0], apart, rtol=1e-12, atol=1e-12)
    g = rng.normal(size=fused.shape)
    if painted == "top rows":  # zero below a few painted rows: the later blocks are skipped
        g[:, 8:] = 0
    for a, b in zip(*(sum(backward(model, c, g), []) for c in (fused_cache, apart_cache)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)

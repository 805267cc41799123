"""The blocked direct convolutions (eight output maps at a time) equal the plain Numba kernels."""

import numba
import numpy as np
import pytest
from _cases import same_results_on_two_paths

from napari_mpf.engine import Model
from napari_mpf.engine.kernels import blocked, conv, gemm
from napari_mpf.engine.kernels import layers as K


@pytest.mark.parametrize("act", [K.ACT_NONE, K.ACT_TANH, K.ACT_RELU])
@pytest.mark.parametrize("kernel", [(5, 5), (3, 4), (2, 1), (1, 3)])
@pytest.mark.parametrize("n_out", [8, 16])
def test_blocked_forward_equals_the_plain_kernel(act, kernel, n_out):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 21, 19))
    w = rng.normal(size=(n_out, 5, *kernel))
    b = rng.normal(size=n_out)
    shape = (3, n_out, 22 - kernel[0], 20 - kernel[1])
    plain, fast = np.empty(shape), np.full(shape, np.nan)
    K.conv_forward(x, w, b, act, plain)
    blocked.conv_forward(x, w, b, act, fast)
    np.testing.assert_allclose(fast, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", [(5, 5), (3, 2)])
def test_input_gradient_through_the_blocked_kernel(kernel):
    """conv.input_grad takes the blocked kernel when the layer has 8 inputs: the zero-padded
    full correlation equals the scattering plain kernel, borders included."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 8, *kernel))
    g = rng.normal(size=(2, 6, 11, 13))
    x_shape = (2, 8, 10 + kernel[0], 12 + kernel[1])
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    assert blocked.use_blocked(flipped)
    plain, fast = np.empty(x_shape), np.full(x_shape, np.nan)
    K.conv_backward_input(g, w, plain)
    conv.input_grad(g, w, fast)
    np.testing.assert_allclose(fast, plain, rtol=1e-12, atol=1e-12)


def test_blocked_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 8, 17, 15)).astype(np.float32)
    w = rng.normal(size=(8, 8, 4, 3)).astype(np.float32)
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            results.append(blocked.conv_forward(x, w, None, K.ACT_TANH, np.empty((4, 8, 14, 13), np.float32)))
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(results[0], results[1])


def test_blocked_refuses_other_map_counts():
    with pytest.raises(ValueError, match="multiple of 8"):
        blocked.conv_forward(np.zeros((1, 2, 5, 5)), np.zeros((6, 2, 3, 3)), None, K.ACT_NONE, np.zeros((1, 6, 3, 3)))


def test_network_with_blocked_layers_matches_the_plain_kernels(monkeypatch):
    """A net whose convolutions have 8 and 16 maps (blocked forward and input gradient, BLAS weight
    gradient) gives the logits and gradients of the plain kernels."""
    rng = np.random.default_rng(3)
    model = Model.create("C3x3x8, MPF2x2, C3x3x16, MPF2x2, C2x2x8, FC10", 2, 3, seed=0, dtype=np.float64)
    image = rng.normal(size=(2, 29, 22))
    labels = rng.integers(0, 4, size=(29, 22)) * (rng.random((29, 22)) < 0.3)
    def use(out_counts, min_k):
        def switch():
            monkeypatch.setattr(blocked, "BLOCKED_OUT", out_counts)
            monkeypatch.setattr(gemm, "GEMM_MIN_K", min_k)
        return switch

    same_results_on_two_paths(model, image, labels, use((), 10**9), use((8, 16), 0))  # plain; blocked + BLAS

"""Training buffers reused from step to step give the same results as fresh ones."""

import numpy as np
import pytest

from napari_mpf.engine import Model
from napari_mpf.engine.network.mpf import Workspace, backward, forward
from napari_mpf.engine.training.loss import batch_loss, make_batch


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    model = Model.create("C3x3x6, MPF2x2, C3x3x8, MPF2x2, C2x2x8, FC10", 1, 2, seed=0, dtype=np.float64)
    x = rng.normal(size=(1, 33, 27))
    labels = rng.integers(0, 3, size=(33, 27))
    return model, make_batch(model, x, labels)


def test_workspace_gives_the_same_loss_and_gradients():
    model, batch = _batch()
    fresh = batch_loss(model, batch)
    ws = Workspace()
    for _ in range(2):  # the second step runs on the first step's buffers
        reused = batch_loss(model, batch, workspace=ws)
        assert reused[0] == fresh[0]
        for a, b in zip(fresh[1] + fresh[2], reused[1] + reused[2], strict=True):
            np.testing.assert_array_equal(a, b)


def test_workspace_memory_is_reused_and_grows_when_needed():
    ws = Workspace()
    a = ws.array("x", (4, 5), np.float32)
    b = ws.array("x", (3, 5), np.float32)
    assert np.shares_memory(a, b) and b.shape == (3, 5)
    c = ws.array("x", (10, 10), np.float32)
    assert c.shape == (10, 10) and ws.nbytes == 400
    assert ws.array("x", (2,), np.float64).dtype == np.float64


def test_backward_refuses_a_cache_whose_buffers_were_reused():
    model, batch = _batch()
    ws = Workspace()
    logits, first = forward(model, batch.padded, keep=True, workspace=ws)
    forward(model, batch.padded, keep=True, workspace=ws)
    with pytest.raises(RuntimeError, match="reused"):
        backward(model, first, np.zeros_like(logits))


@pytest.mark.parametrize("spec", ["C3x3x4, FC5", "C3x3x4, MPF2x2, C2x2x4, FC5"])
def test_forward_passes_do_not_alias_the_reused_buffers(spec):
    """Each forward pass returns its own arrays, even without pooling (where the map is a view)."""
    from napari_mpf.engine.network.mpf import forward_features
    from napari_mpf.engine.network.padding import pad_image

    model = Model.create(spec, 1, 2, seed=0)
    rng = np.random.default_rng(0)
    shape = (20, 20)
    a, b = (pad_image(rng.normal(size=(1, *shape)).astype(np.float32), model.window, shape) for _ in range(2))
    first, feats, _ = forward_features(model, a)
    kept = first.copy(), feats.copy()
    forward_features(model, b)
    np.testing.assert_array_equal(first, kept[0])
    np.testing.assert_array_equal(feats, kept[1])

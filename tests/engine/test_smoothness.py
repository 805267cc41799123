"""Edge-aware smoothness loss: contrast weights, its gradient, and its use in a training step."""

import numpy as np
import pytest
from _cases import make_image, make_labels, randomise

from napari_mpf.engine import InputError, Model, TrainConfig, Trainer
from napari_mpf.engine.network.predict import normalise
from napari_mpf.engine.training.loss import batch_loss, make_batch
from napari_mpf.engine.training.smoothness import contrast_weights, smoothness_loss


def test_flat_image_weighs_every_pair_inside_the_valid_part_the_same():
    wy, wx = contrast_weights(np.full((1, 6, 7), 3.0), valid=(4, 5))
    assert wy.shape == (5, 7) and wx.shape == (6, 6)
    np.testing.assert_array_equal(wy[:3, :5], 1.0)
    np.testing.assert_array_equal(wx[:4, :4], 1.0)
    assert not wy[3:].any() and not wy[:, 5:].any()
    assert not wx[4:].any() and not wx[:, 4:].any()


def test_pairs_across_an_edge_weigh_less_and_contrast_does_not_matter():
    image = np.zeros((1, 12, 16))
    image[0, :, 8:] = 1.0
    wy, wx = contrast_weights(image)
    assert wx[:, 7].max() < 0.5 * wx[:, 0].min()  # across the edge vs far from it
    np.testing.assert_allclose(wy, 1.0)  # vertical pairs run along the edge
    wy2, wx2 = contrast_weights(5.0 * image - 2.0)
    np.testing.assert_allclose(wx2, wx)
    np.testing.assert_allclose(wy2, wy)


def test_loss_is_zero_on_constant_probabilities_and_grows_with_strength():
    wy, wx = contrast_weights(make_image((8, 9), 1, 0)[None])
    flat = np.zeros((2, 8, 9))
    flat[1] = 0.7
    loss, grad = smoothness_loss(flat, wy, wx, 1.0)
    assert loss == 0.0 and not grad.any()
    z = np.random.default_rng(0).normal(size=(3, 8, 9))
    one, _ = smoothness_loss(z, wy, wx, 1.0)
    three, _ = smoothness_loss(z, wy, wx, 3.0)
    assert one > 0
    np.testing.assert_allclose(three, 3 * one)


def test_gradient_by_finite_differences():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 7, 9))
    wy, wx = contrast_weights(rng.normal(size=(2, 7, 9)), valid=(6, 8))
    _, grad = smoothness_loss(z, wy, wx, 2.0)
    eps = 1e-6
    fd = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        fd[idx] = (smoothness_loss(zp, wy, wx, 2.0)[0] - smoothness_loss(zm, wy, wx, 2.0)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, fd, atol=1e-9, rtol=1e-6)
    assert not grad[:, 6:, :].any() and not grad[:, :, 8:].any()  # outside the valid part


@pytest.mark.parametrize("spec", ["C3x3x4, MPF2x2, C2x2x5, FC7, FC3", "IN10x10, C3x3x4, MPF2x2, FC6, FC3"])
def test_batch_loss_gradients_with_smoothness_by_finite_differences(spec):
    """Through the whole network: the cross-entropy on a few painted pixels plus the smoothness
    on all of them, against central differences of a few weights and biases (float64, tanh)."""
    model = Model.create(spec, 1, 3, activation="tanh", seed=3, dtype=np.float64)
    randomise(model, 3)
    image = make_image((11, 13), 1, 3)
    labels = make_labels((11, 13), 3, "sparse", 3)
    batch = make_batch(model, normalise(model, image), labels, crop=(0, 0, 12, 14))
    loss, gw, gb = batch_loss(model, batch, smoothness=0.5)
    plain, _, _ = batch_loss(model, batch, need_grad=False)
    assert loss > plain  # the smoothness adds to the cross-entropy
    rng = np.random.default_rng(0)
    eps = 1e-6
    for arrays, grads in ((model.weights, gw), (model.biases, gb)):
        for arr, g in zip(arrays, grads, strict=True):
            for flat in rng.choice(arr.size, size=min(4, arr.size), replace=False):
                idx = np.unravel_index(flat, arr.shape)
                old = arr[idx]
                arr[idx] = old + eps
                fp = batch_loss(model, batch, need_grad=False, smoothness=0.5)[0]
                arr[idx] = old - eps
                fm = batch_loss(model, batch, need_grad=False, smoothness=0.5)[0]
                arr[idx] = old
                assert abs((fp - fm) / (2 * eps) - g[idx]) <= 1e-5 * abs(g[idx]) + 1e-8


def test_training_with_smoothness_records_it_and_refuses_bad_values():
    image = make_image((40, 40), 1, 4)
    labels = np.zeros((40, 40), np.uint8)
    labels[5:8, 5:30] = 1
    labels[30:33, 5:30] = 2
    model = Model.create("C3x3x4, MPF2x2, C3x3x6, FC8", 1, 2, seed=0)
    trainer = Trainer(model, [image], [labels], TrainConfig(steps=5, smoothness=0.3))
    losses = [p.loss for p in trainer.run()]
    assert len(losses) == 5 and np.isfinite(losses).all()
    assert model.provenance["smoothness"] == 0.3
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="smoothness"):
            Trainer(model, [image], [labels], TrainConfig(steps=5, smoothness=bad))

"""The superpixel branch and the image-level head: exact against a plain reference, gradients by
finite differences, tiles, model file, training."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from _cases import make_image, make_labels
from reference import ref_logits
from test_gradcheck import _check

from napari_mpf.engine import (
    InputError,
    Model,
    TrainConfig,
    Trainer,
    load_model,
    save_model,
)
from napari_mpf.engine.network.heads import add_image_head, add_superpixel_branch
from napari_mpf.engine.network.predict import predict, predict_proba
from napari_mpf.engine.network.spec import resolve_spec
from napari_mpf.engine.training.loss import loss_and_gradients, make_batch

SPECS = [
    ("C3x3x4, MPF2x2, C2x2x5, FC7, FC3", 1, 3),
    ("C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2", 2, 2),
]


def _model(spec, c, k, pool="max", sp=True, img=True, seed=3, dtype=np.float64):
    model = Model.create(spec, c, k, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for w, b in zip(model.weights, model.biases, strict=True):
        w[...] = rng.normal(size=w.shape) * 1.5 / np.sqrt(np.prod(w.shape[1:]))
        b[...] = rng.normal(size=b.shape) * 0.2
    model.norm_mean[...] = 0.3
    model.norm_std[...] = 1.4
    if sp:
        add_superpixel_branch(model, size=12.0, compactness=0.1, pool=pool)
    if img:
        add_image_head(model, loss_weight=0.7)
    for w, b in zip(model.weights[model.n_layer_params:], model.biases[model.n_layer_params:], strict=True):
        w[...] = rng.normal(size=w.shape) * 0.5
        b[...] = rng.normal(size=b.shape) * 0.2
    return model


def _reference(model, image, segments):
    """Logits and image logits computed patch by patch plus plain NumPy/scipy heads."""
    plain = model.copy()
    n = plain.n_layer_params
    plain.weights, plain.biases = plain.weights[:n], plain.biases[:n]
    plain.superpixels = plain.image_head = None
    logits = ref_logits(plain, image, dtype=np.float64)
    trunk = plain.copy()
    trunk.spec = resolve_spec(list(plain.spec.layers[:-1]), None)
    assert trunk.spec.window == plain.spec.window
    trunk.weights, trunk.biases = plain.weights[:-1], plain.biases[:-1]
    feats = np.tanh(ref_logits(trunk, image, dtype=np.float64))  # the reference leaves the last layer linear
    c = feats.shape[0]
    image_logits = None
    if model.superpixels is not None:
        ids = np.arange(1, segments.max() + 2)
        reduce = ndi.maximum if model.superpixels["pool"] == "max" else ndi.mean
        pooled = np.array([reduce(feats[ch], segments + 1, ids) for ch in range(c)])
        w, b = model.head_params("superpixels")
        logits = logits + (w @ pooled + b[:, None])[:, segments]
    if model.image_head is not None:
        w, b = model.head_params("image_head")
        z = logits.reshape(logits.shape[0], -1)
        g = np.concatenate([feats.reshape(c, -1).max(1), feats.reshape(c, -1).mean(1), z.max(1), z.mean(1)])
        image_logits = w @ g + b
    return logits, image_logits


@pytest.mark.parametrize("pool", ["max", "mean"])
@pytest.mark.parametrize("spec, c, k", SPECS)
@pytest.mark.parametrize("tile", [4, 512])
def test_heads_match_reference(spec, c, k, pool, tile):
    model = _model(spec, c, k, pool)
    image = make_image((19, 23), c, 1)
    pred = predict(model, image, tile=tile)
    assert pred.segments is not None and pred.segments.max() > 5
    logits, image_logits = _reference(model, image, pred.segments)
    np.testing.assert_allclose(pred.logits, logits, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pred.image_logits, image_logits, rtol=1e-10, atol=1e-10)


def test_float32_tiles_agree():
    model = _model(*SPECS[1], pool="mean", dtype=np.float32)
    image = make_image((37, 41), 2, 2)
    a, b = predict(model, image, tile=8), predict(model, image, tile=512)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.image_logits, b.image_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["max", "mean"])
@pytest.mark.parametrize("spec, c, k", SPECS)
def test_head_gradients_by_finite_differences(spec, c, k, pool):
    model = _model(spec, c, k, pool)
    image = make_image((13, 17), c, 4)
    labels = make_labels((13, 17), k, "dense", 4)
    target = np.array([1.0] + [0.0] * (k - 2))
    _, gw, gb = loss_and_gradients(model, image, labels, image_target=target)
    assert len(gw) == len(model.weights)

    def loss_fn(m):
        return loss_and_gradients(m, image, labels, image_target=target)[0]

    _check(model, loss_fn, gw, gb, seed=7, max_kink_fraction=0.1)


def test_image_target_of_a_crop():
    model = _model(*SPECS[1], sp=False)
    x = np.zeros((2, 40, 40))
    lab = np.zeros((40, 40), np.int32)
    lab[30:32, 30:32] = 2
    lab[2:4, 2:4] = 1
    whole = make_batch(model, x, lab, (0, 0, 40, 40), None, np.array([1.0]))
    assert whole.image_target[0] == 1
    missing = make_batch(model, x, lab, (0, 0, 16, 16), None, np.array([1.0]))
    assert np.isnan(missing.image_target[0])  # the defect is outside the crop: unknown
    holding = make_batch(model, x, lab, (24, 24, 16, 16), None, np.array([1.0]))
    assert holding.image_target[0] == 1
    clean = make_batch(model, x, lab, (0, 0, 16, 16), None, np.array([0.0]))
    assert clean.image_target[0] == 0


def test_model_file_round_trip(tmp_path):
    model = _model(*SPECS[0], pool="mean", dtype=np.float32)
    image = make_image((21, 18), 1, 5)
    path = save_model(model, tmp_path / "m.npz")
    again = load_model(path)
    assert again.superpixels == model.superpixels and again.image_head == model.image_head
    a, b = predict(model, image), predict(again, image)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.image_logits, b.image_logits)
    assert "superpixel branch" in again.describe() and "image-level head" in again.describe()


def test_bad_head_settings():
    model = Model.create("fast", 1, 2)
    with pytest.raises(InputError, match="positive"):
        add_superpixel_branch(model, size=0)
    with pytest.raises(InputError, match="max, mean"):
        add_superpixel_branch(model, pool="median")
    with pytest.raises(InputError, match=">= 0"):
        add_image_head(model, loss_weight=-1)
    with pytest.raises(InputError, match="1x1"):
        add_image_head(Model.create("IN10x10, C3x3x4, MPF2x2, FC2", 1, 2))
    with pytest.raises(InputError, match="no image-level head"):
        Trainer(model, [np.zeros((8, 8))], [np.arange(64).reshape(8, 8) % 2 + 1], image_labels=[True])


def _blob_images(n, seed):
    """Noisy images; odd ones hold a bright square (the 'defect')."""
    rng = np.random.default_rng(seed)
    images, labels, present = [], [], []
    for i in range(n):
        img = rng.normal(size=(32, 32)).astype(np.float32)
        lab = np.zeros((32, 32), np.int32)
        if i % 2:
            y, x = rng.integers(4, 22, size=2)
            img[y : y + 6, x : x + 6] += 3
            lab[y + 1 : y + 5, x + 1 : x + 5] = 2
        images.append(img)
        labels.append(lab)
        present.append(bool(i % 2))
    return images, labels, present


def test_image_head_learns_image_labels():
    images, labels, present = _blob_images(8, 0)
    for lab in labels:  # pixel labels on two images only; image labels on all
        lab[:] = 0
    labels[0][0:3, :] = 1
    images[1][20:26, 20:26] += 3
    labels[1][21:25, 21:25] = 2
    model = Model.for_data(images, labels, spec="C3x3x6, MPF2x2, C3x3x8, FC12", seed=0)
    add_image_head(model, loss_weight=1.0)
    trainer = Trainer(model, images, labels, TrainConfig(steps=150, seed=0, lr=0.01), image_labels=present)
    for _ in trainer.run():
        pass
    test_images, _, test_present = _blob_images(6, 9)
    probs = [float(predict(model, img).image_probabilities[0]) for img in test_images]
    assert all((p > 0.5) == t for p, t in zip(probs, test_present, strict=True)), probs


def test_superpixel_branch_trains():
    images, labels, _ = _blob_images(4, 1)
    for lab in labels:
        lab[lab == 0] = 1
    model = Model.for_data(images, labels, spec="C3x3x6, MPF2x2, C3x3x8, FC12", seed=0)
    add_superpixel_branch(model, size=16, pool="mean")
    losses = [p.loss for p in Trainer(model, images, labels, TrainConfig(steps=60, seed=0, lr=0.01)).run()]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    w, _ = model.head_params("superpixels")
    assert np.abs(w).max() > 0  # the branch was trained
    probs = predict_proba(model, images[1])
    assert probs.shape == (2, 32, 32) and np.allclose(probs.sum(0), 1, atol=1e-5)


def test_step_without_gradient_leaves_weights_alone():
    """An image with only an image-level label and a head of loss weight 0 gives no gradient: Adam
    must not move the weights on its momentum."""
    images, labels, present = _blob_images(2, 3)
    labels[0][:2] = 1
    labels[0][-2:] = 2
    labels[1][:] = 0
    model = Model.for_data(images, labels, spec="C3x3x6, MPF2x2, C3x3x8, FC12", seed=0)
    add_image_head(model, loss_weight=0.0)
    run = Trainer(model, images, labels, TrainConfig(steps=40, seed=0, augment=False), image_labels=present).run()
    before = None
    for progress in run:
        if progress.image_index == 1 and before is not None:
            assert all(np.array_equal(a, b) for a, b in zip(before, model.weights, strict=True))
        before = [w.copy() for w in model.weights]

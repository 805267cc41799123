"""Training loop: convergence on a synthetic image, stopping, previews, optimisers, bad input."""

import numpy as np
import pytest

from napari_mpf.engine import (
    InputError,
    Model,
    TrainConfig,
    Trainer,
    fit,
    predict_proba,
    segment,
)
from napari_mpf.engine.training.synthetic import two_texture_sample

TINY = "C3x3x4, MPF2x2, C3x3x6, FC8"


@pytest.fixture(scope="module")
def sample():
    return two_texture_sample((128, 128), seed=0)


def test_default_network_learns_two_textures(sample):
    """The default preset reaches >= 95% accuracy on the pixels nobody painted."""
    model = Model.for_data([sample.image], [sample.strokes], spec="fast", seed=0)
    fit(model, [sample.image], [sample.strokes], TrainConfig(steps=120, seed=0))
    seg = segment(predict_proba(model, sample.image))
    unpainted = sample.strokes == 0
    accuracy = (seg[unpainted] == sample.truth[unpainted]).mean()
    assert accuracy >= 0.95, accuracy


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "armijo", "lbfgs"])
def test_every_optimizer_lowers_the_loss(sample, optimizer):
    model = Model.for_data([sample.image], [sample.strokes], spec=TINY, seed=1)
    config = TrainConfig(steps=12, optimizer=optimizer, augment=False, seed=0)
    losses = [p.loss for p in Trainer(model, [sample.image], [sample.strokes], config).run()]
    assert len(losses) == 12
    assert np.isfinite(losses).all()
    assert min(losses[-3:]) < losses[0]


def test_stopping_keeps_the_last_good_weights(sample):
    model = Model.for_data([sample.image], [sample.strokes], spec=TINY, seed=2)
    before = [w.copy() for w in model.weights]
    gen = Trainer(model, [sample.image], [sample.strokes], TrainConfig(steps=50)).run()
    for _ in range(3):
        progress = next(gen)
    snapshot = [w.copy() for w in model.weights]
    gen.close()  # what a Stop button does between steps
    assert progress.step == 3
    assert model.provenance["steps"] == 3
    assert all(np.array_equal(a, b) for a, b in zip(snapshot, model.weights, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.weights, strict=True))
    probs = predict_proba(model, sample.image)
    assert np.isfinite(probs).all()


def test_training_is_reproducible_with_a_seed(sample):
    runs = []
    for _ in range(2):
        model = Model.for_data([sample.image], [sample.strokes], spec=TINY, seed=3)
        fit(model, [sample.image], [sample.strokes], TrainConfig(steps=5, seed=7))
        runs.append(predict_proba(model, sample.image))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_previews_when_due_and_on_request(sample):
    model = Model.for_data([sample.image], [sample.strokes], spec=TINY, seed=0)
    trainer = Trainer(model, [sample.image], [sample.strokes], TrainConfig(steps=6, preview_every=3))
    gen = trainer.run()
    got = []
    for progress in gen:
        got.append(progress.probabilities is not None)
        if progress.step == 1:
            trainer.request_preview()
        if progress.probabilities is not None:
            assert progress.probabilities.shape == (2, *sample.image.shape)
            np.testing.assert_allclose(progress.probabilities.sum(axis=0), 1, rtol=1e-5)
    assert got == [False, True, True, False, False, True]


def test_several_images_of_different_sizes_and_channels():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(2, 30, 41)), rng.normal(size=(2, 17, 25))]
    labels = [np.zeros((30, 41), int), np.zeros((17, 25), int)]
    labels[0][3:6, 4:20] = 1
    labels[1][10:12, 2:9] = 2
    labels[1][1, 1:5] = 3
    model = Model.for_data(images, labels, spec=TINY, seed=0)
    assert model.in_channels == 2 and model.n_classes == 3
    seen = {p.image_index for p in Trainer(model, images, labels, TrainConfig(steps=6)).run()}
    assert seen == {0, 1}


def test_unpainted_images_are_skipped():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(20, 20)), rng.normal(size=(20, 20))]
    labels = [np.zeros((20, 20), int), np.zeros((20, 20), int)]
    labels[1][2:5, 2:5] = 1
    labels[1][12:15, 12:15] = 2
    model = Model.for_data(images, labels, spec=TINY)
    assert {p.image_index for p in Trainer(model, images, labels, TrainConfig(steps=4)).run()} == {1}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((20, 20), int), "no strokes"),
        (np.pad(np.ones((4, 4), int), ((0, 16), (0, 16))), "only one class"),
        (np.zeros((20, 21), int), "must match"),
        (-np.ones((20, 20), int), "negative"),
    ],
)
def test_bad_labels_are_refused_clearly(labels, message):
    image = np.random.default_rng(0).normal(size=(20, 20))
    with pytest.raises(InputError, match=message):
        Model.for_data([image], [labels], spec=TINY)


def test_bad_images_and_configs_are_refused_clearly():
    labels = np.zeros((20, 20), int)
    labels[1, 1], labels[5, 5] = 1, 2
    nan_image = np.ones((20, 20))
    nan_image[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        Model.for_data([nan_image], [labels], spec=TINY)
    with pytest.raises(InputError, match="channels-last"):
        Model.for_data([np.zeros((20, 20, 3))], [labels], spec=TINY)
    with pytest.raises(InputError, match="dimensions"):
        Model.for_data([np.zeros((2, 2, 20, 20))], [labels], spec=TINY)
    image = np.random.default_rng(0).normal(size=(20, 20))
    model = Model.for_data([image], [labels], spec=TINY)
    with pytest.raises(InputError, match="optimizer"):
        Trainer(model, [image], [labels], TrainConfig(optimizer="rmsprop"))
    with pytest.raises(InputError, match="learning rate"):
        Trainer(model, [image], [labels], TrainConfig(lr=-1.0))
    with pytest.raises(InputError, match="channel"):
        predict_proba(model, np.zeros((3, 20, 20)))
    three = labels.copy()
    three[9, 9] = 3
    with pytest.raises(InputError, match="class 3"):
        Trainer(model, [image], [three])


def test_user_labels_are_not_modified(sample):
    strokes = sample.strokes.copy()
    model = Model.for_data([sample.image], [strokes], spec=TINY)
    fit(model, [sample.image], [strokes], TrainConfig(steps=3))
    np.testing.assert_array_equal(strokes, sample.strokes)


def test_crops_are_exact_boxes_of_the_whole_image():
    """A cropped batch gives the same loss as the whole image restricted to the crop's labels."""
    from napari_mpf.engine.training.loss import batch_loss, crop_box, make_batch

    rng = np.random.default_rng(0)
    model = Model.create(TINY, 1, 2, seed=0, dtype=np.float64)
    x = rng.normal(size=(1, 61, 47))
    lab = np.zeros((61, 47), np.int32)
    lab[rng.random((61, 47)) < 0.05] = 1
    lab[rng.random((61, 47)) < 0.05] = 2
    for _ in range(5):
        box = crop_box(model, lab, 16, rng)
        y0, x0, oh, ow = box
        assert oh <= 16 and ow <= 16 and lab[y0 : y0 + oh, x0 : x0 + ow].any()
        inside = np.zeros_like(lab)
        inside[y0 : y0 + oh, x0 : x0 + ow] = lab[y0 : y0 + oh, x0 : x0 + ow]
        cropped = batch_loss(model, make_batch(model, x, lab, box))
        whole = batch_loss(model, make_batch(model, x, inside))
        assert cropped[0] == pytest.approx(whole[0], rel=1e-12)
        for a, b in zip(cropped[1], whole[1], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)
    assert crop_box(model, lab, 64, rng) is None


def test_balance_is_true_or_false():
    images = [np.random.default_rng(0).normal(size=(20, 20))]
    labels = [np.zeros((20, 20), int)]
    labels[0][:10], labels[0][15:, :10] = 1, 2
    model = Model.for_data(images, labels, spec=TINY)
    for bad in ("sometimes", "global"):
        with pytest.raises(InputError, match="balance"):
            Trainer(model, images, labels, TrainConfig(balance=bad))


def test_default_learning_rate_is_smaller_for_deep_networks():
    from napari_mpf.engine.training.optim import DEFAULT_LR, default_lr

    assert default_lr("adam", 2) == DEFAULT_LR["adam"]
    assert default_lr("adam", 3) == pytest.approx(DEFAULT_LR["adam"] / 3)
    assert default_lr("lbfgs", 4) == DEFAULT_LR["lbfgs"]
    images = [np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)]
    labels = [np.arange(256).reshape(16, 16) % 2 + 1]
    for spec, expected in (("fast", DEFAULT_LR["adam"]), ("wide", DEFAULT_LR["adam"] / 3)):
        model = Model.for_data(images, labels, spec=spec)
        progress = next(Trainer(model, images, labels, TrainConfig(steps=2)).run())
        assert progress.lr == pytest.approx(expected)  # the cosine schedule starts at the full rate


def test_a_time_budget_fits_the_schedule_to_the_time(sample):
    """With ``seconds`` the run ends near the budget with its schedule completed (the last step at
    the schedule's final rate), whatever the step cap."""
    model = Model.for_data([sample.image], [sample.strokes], spec=TINY, seed=0)
    fit(model, [sample.image], [sample.strokes], TrainConfig(steps=1))  # compiles the kernels first
    config = TrainConfig(steps=10**6, seconds=1.5, seed=0, lr=0.01)
    progress = list(Trainer(model, [sample.image], [sample.strokes], config).run())
    last = progress[-1]
    assert 10 < last.step < 10**6
    assert last.step == last.n_steps
    assert 1.5 <= last.elapsed < 10.0
    assert last.lr == pytest.approx(0.01 * 0.1, rel=0.05)  # the cosine decay reached its end
    assert model.provenance["seconds"] == 1.5
    capped = list(Trainer(model, [sample.image], [sample.strokes], TrainConfig(steps=5, seconds=30.0)).run())
    assert capped[-1].step == 5
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(InputError, match="seconds"):
            Trainer(model, [sample.image], [sample.strokes], TrainConfig(seconds=bad))

"""The class-prior correction after training (engine/training/calibration.py and Trainer's ``calibrate``)."""

import numpy as np
import pytest

from napari_mpf.engine import Model, TrainConfig, Trainer, fit, predict_proba
from napari_mpf.engine.network.heads import add_image_head
from napari_mpf.engine.training.calibration import (
    images_key,
    prior_shift,
    shift_model,
    shifted,
    unshift_model,
)
from napari_mpf.engine.training.synthetic import two_texture_sample

SPEC = "C3x3x4, MPF2x2, C3x3x4, FC8"


def test_prior_shift_is_log_k_times_the_mean_probability():
    p = np.zeros((2, 4, 5))
    p[0], p[1] = 0.8, 0.2
    np.testing.assert_allclose(prior_shift([p, p]), np.log([1.6, 0.4]))
    q = shifted(p, prior_shift([p]))
    # equal priors assumed, 20% found: 0.2 becomes 0.2 * 0.4 / (0.2 * 0.4 + 0.8 * 1.6)
    np.testing.assert_allclose(q[1], 0.08 / (0.08 + 1.28), rtol=1e-6)
    np.testing.assert_allclose(q.sum(axis=0), 1, rtol=1e-6)
    never = np.stack([np.ones((3, 3)), np.zeros((3, 3))])
    assert np.isfinite(prior_shift([never])).all()  # a class never predicted keeps a finite score
    with pytest.raises(ValueError, match="no probabilities"):
        prior_shift([])


def test_shift_goes_into_the_last_bias_and_comes_back_out():
    model = Model.create(SPEC, 1, 3, seed=0)
    before = [b.copy() for b in model.biases]
    image = np.random.default_rng(0).random((20, 20), dtype=np.float32)
    shift = np.array([0.5, -1.0, 0.25])
    shift_model(model, shift)
    np.testing.assert_allclose(model.biases[-1], before[-1] + shift.astype(np.float32))
    assert model.provenance["prior_shift"] == [0.5, -1.0, 0.25]
    unshifted = model.copy()
    unshift_model(unshifted)
    np.testing.assert_allclose(unshifted.biases[-1], before[-1], atol=1e-7)
    assert "prior_shift" not in unshifted.provenance
    # the scores move by the shift: probabilities are those of shifted()
    plain = predict_proba(unshifted, image)
    np.testing.assert_allclose(predict_proba(model, image), shifted(plain, shift), atol=1e-5)


def _rare_class_sample():
    """Strokes where class 2 is painted over a handful of pixels only."""
    s = two_texture_sample((64, 64), seed=2)
    labels = s.strokes.copy()
    ys, xs = np.nonzero(labels == 2)
    labels[ys[6:], xs[6:]] = 0
    return s.image, labels


def test_training_ends_calibrated_and_continues_from_the_network_itself():
    image, labels = _rare_class_sample()
    model = Model.for_data([image], [labels], spec=SPEC, seed=0)
    plain = fit(model.copy(), [image], [labels], TrainConfig(steps=15, seed=1, calibrate=False))
    calibrated = fit(model.copy(), [image], [labels], TrainConfig(steps=15, seed=1))
    assert "prior_shift" not in plain.provenance
    shift = np.array(calibrated.provenance["prior_shift"])
    # the same network underneath; only the class scores moved
    for a, b in zip(plain.weights, calibrated.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(calibrated.biases[-1] - plain.biases[-1], shift.astype(np.float32), atol=1e-6)
    np.testing.assert_allclose(shift, prior_shift([predict_proba(plain, image)]), rtol=1e-5)
    # continuing takes the shift out first: same as continuing the uncalibrated network
    more_plain = fit(plain, [image], [labels], TrainConfig(steps=3, seed=2, calibrate=False))
    more = fit(calibrated, [image], [labels], TrainConfig(steps=3, seed=2, calibrate=False))
    assert "prior_shift" not in more.provenance
    for a, b in zip(more_plain.biases, more.biases, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_stopping_midway_keeps_calibrated_weights_and_previews_are_calibrated():
    image, labels = _rare_class_sample()
    model = Model.for_data([image], [labels], spec=SPEC, seed=0)
    trainer = Trainer(model, [image], [labels], TrainConfig(steps=50, preview_every=2))
    gen = trainer.run()
    for progress in gen:
        if progress.step == 4:
            shown = progress.probabilities
            break
    gen.close()
    assert "prior_shift" in trainer.model.provenance
    raw = predict_proba(trainer.model, image)  # calibrated by the training image's priors
    np.testing.assert_allclose(shown.mean(axis=(1, 2)), raw.mean(axis=(1, 2)), atol=0.05)


def test_a_model_with_an_image_level_head_is_not_shifted():
    image, labels = _rare_class_sample()
    model = Model.for_data([image], [labels], spec=SPEC, seed=0)
    add_image_head(model, 1.0)
    trained = fit(model, [image], [labels], TrainConfig(steps=3))
    assert "prior_shift" not in trained.provenance


def test_a_continued_run_keeps_the_correction_the_network_came_with(monkeypatch):
    image, labels = _rare_class_sample()
    model = Model.for_data([image], [labels], spec=SPEC, seed=0)
    calibrated = fit(model, [image], [labels], TrainConfig(steps=15, seed=1))
    shift = list(calibrated.provenance["prior_shift"])
    weights = list(calibrated.provenance["class_weights"])
    corrections = labels.copy()  # a round of corrections of one kind: class 1 painted all over
    corrections[::8, :] = np.where(labels[::8, :] == 0, 1, labels[::8, :])
    trainer = Trainer(calibrated.copy(), [image], [corrections], TrainConfig(steps=3, seed=2, preview_every=1))
    shown = [progress.probabilities for progress in trainer.run()]
    more = trainer.model
    assert more.provenance["prior_shift"] == shift  # kept, not estimated again
    assert more.provenance["class_weights"] == weights  # and so are the strokes' class weights
    # the same run of the network without its correction, at the kept class weights
    plain = calibrated.copy()
    unshift_model(plain)
    monkeypatch.setattr(Trainer, "_counted_weights", lambda self, n_classes: np.asarray(weights))
    more_plain = fit(plain, [image], [corrections], TrainConfig(steps=3, seed=2, calibrate=False))
    for a, b in zip(more_plain.weights, more.weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(more.biases[-1] - more_plain.biases[-1], np.float32(shift), atol=1e-5)
    # the previews of the run carry the same correction as the network it ends with
    np.testing.assert_allclose(shown[-1], predict_proba(more, image), atol=1e-5)
    # ... which is not what estimating it again would give after these corrections
    assert not np.allclose(prior_shift([predict_proba(more_plain, image)]), shift, atol=1e-3)


def test_a_run_on_other_images_estimates_the_correction_again():
    image, labels = _rare_class_sample()
    calibrated = fit(Model.for_data([image], [labels], spec=SPEC, seed=0), [image], [labels],
                     TrainConfig(steps=15, seed=1))
    assert calibrated.provenance["prior_images"] == images_key([image[None]])  # the checked (C, H, W) image
    other = two_texture_sample((64, 64), seed=5)
    more = fit(calibrated, [other.image], [other.strokes], TrainConfig(steps=3, seed=2))
    assert more.provenance["prior_images"] == images_key([other.image[None]])
    plain = more.copy()
    unshift_model(plain)
    assert "prior_images" not in plain.provenance
    np.testing.assert_allclose(more.provenance["prior_shift"], prior_shift([predict_proba(plain, other.image)]),
                               rtol=1e-5)
    assert images_key([image]) != images_key([image.copy().T]) != images_key([image, image])

"""The anchor of a continued run: unpainted pixels kept near the predictions the run started from
(engine/training/loss.py ``anchor_term``, Trainer's ``anchor``)."""

import numpy as np
import pytest

from napari_mpf.engine import InputError, Model, TrainConfig, Trainer, fit, predict_proba
from napari_mpf.engine.training.loss import anchor_term
from napari_mpf.engine.training.synthetic import two_texture_sample

SPEC = "C3x3x4, MPF2x2, C3x3x4, FC8"


def test_anchor_term_is_a_weighted_mean_kl_with_its_gradient():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 6))
    labels = rng.integers(0, 3, size=(5, 6))
    anchor = rng.dirichlet([1, 1, 1], size=(5, 6)).transpose(2, 0, 1)
    anchor[:, 0, 0] = np.nan  # outside the image
    loss, grad = anchor_term(logits, labels, anchor, 0.7)
    assert loss > 0
    eps = 1e-6
    numeric = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        moved = logits.copy()
        moved[i] += eps
        numeric[i] = (anchor_term(moved, labels, anchor, 0.7)[0] - loss) / eps
    np.testing.assert_allclose(grad, numeric, atol=1e-5)
    # painted pixels and pixels outside the image feel nothing
    assert not grad[:, labels > 0].any() and not grad[:, 0, 0].any()
    # no loss where the network still predicts its anchor
    p = np.exp(logits) / np.exp(logits).sum(axis=0)
    assert anchor_term(logits, labels, p, 0.7)[0] == pytest.approx(0, abs=1e-12)


@pytest.fixture(scope="module")
def trained():
    s = two_texture_sample((48, 48), seed=3)
    model = Model.for_data([s.image], [s.strokes], spec=SPEC, seed=0)
    return s, fit(model, [s.image], [s.strokes], TrainConfig(steps=12, seed=0))


@pytest.mark.parametrize(("spec", "augment", "seed"), [(SPEC, False, 0), *[("C1x1x4, FC8", True, k) for k in range(4)]])
def test_the_anchor_starts_at_the_network_own_predictions(trained, spec, augment, seed):
    """Step 1 of a continued run sees its starting weights, so the anchor adds nothing to its loss;
    with augmentation that holds for a pixel-wise network (the same under rotations and flips), which
    shows the anchor is rotated and flipped with the batch."""
    s = trained[0]
    model = fit(Model.for_data([s.image], [s.strokes], spec=spec, seed=0), [s.image], [s.strokes],
                TrainConfig(steps=5, seed=0))
    more = s.strokes.copy()
    more[20:23, 5:40] = 1
    first = {}
    for weight in (0.0, 5.0):
        config = TrainConfig(steps=1, seed=seed, anchor=weight, augment=augment)
        first[weight] = next(Trainer(model.copy(), [s.image], [more], config).run()).loss
    assert first[5.0] == pytest.approx(first[0.0], rel=1e-5, abs=1e-7)


def test_a_continued_run_stays_nearer_its_start_and_a_first_run_ignores_the_anchor(trained):
    s, model = trained
    start = predict_proba(model, s.image)
    more = s.strokes.copy()
    more[20:23, 5:40] = 1  # a correction across both textures
    unpainted = more == 0

    def moved(weight):
        after = fit(model.copy(), [s.image], [more], TrainConfig(steps=10, seed=1, anchor=weight, calibrate=False))
        return float(np.abs(predict_proba(after, s.image) - start)[1][unpainted].mean())

    assert moved(3.0) < moved(0.0)
    new = Model.for_data([s.image], [s.strokes], spec=SPEC, seed=0)
    a = fit(new.copy(), [s.image], [s.strokes], TrainConfig(steps=3, seed=0, anchor=3.0))
    b = fit(new.copy(), [s.image], [s.strokes], TrainConfig(steps=3, seed=0))
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_bad_anchor_weight_is_refused(bad):
    with pytest.raises(InputError, match="anchor"):
        TrainConfig(anchor=bad).check()


def test_a_class_painted_for_the_first_time_is_learned_afresh():
    """A class painted only after the first run: no anchor to predictions that know nothing of it, and
    the prior correction and class weights estimated again (kept, they gave it the weight 0 and
    pushed its scores down)."""
    s = two_texture_sample((96, 96), seed=1)
    image = s.image.copy()
    image[:, 70:] = 1.0  # a bright band, class 3
    first = np.where(s.strokes == 1, 1, 0).astype(np.uint8)
    first[:, 70:] = 0
    first[10:80:7, 75:90] = 3  # classes 1 and 3 painted, 2 not yet
    model = fit(Model.for_data([image], [first], spec="fast"), [image], [first], TrainConfig(steps=40))
    assert model.provenance["painted_classes"] == [1, 3] and model.provenance["class_weights"][1] == 0
    pushed_down = model.provenance["prior_shift"][1]  # the model trains on in place
    more = first.copy()
    more[(s.strokes == 2) & (np.arange(96) < 70)[None, :]] = 2  # now class 2 too
    trainer = Trainer(model, [image], [more], TrainConfig(steps=40))
    for _ in trainer.run():
        assert trainer._anchors is None
    again = trainer.model
    assert again.provenance["painted_classes"] == [1, 2, 3] and again.provenance["class_weights"][1] > 0
    assert again.provenance["prior_shift"][1] > pushed_down + 1  # no longer pushed down
    learned = np.argmax(predict_proba(again, image), axis=0)[more == 2] == 1
    assert learned.mean() > 0.9  # with the old state kept: none of them
    # the same classes again: the state is kept, as for any round of corrections
    kept = Trainer(again.copy(), [image], [more], TrainConfig(steps=2))
    for _ in kept.run():
        assert kept._anchors is not None
    assert kept.model.provenance["prior_shift"] == again.provenance["prior_shift"]

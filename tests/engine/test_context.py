"""Auto-context: a second stage that reads the image and the first stage's probabilities."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from _cases import allclose_scaled, make_image, make_labels, randomise
from reference import ref_logits, ref_loss_and_gradients

from napari_mpf.engine import (
    Model,
    SpecError,
    TrainConfig,
    Trainer,
    load_model,
    predict_logits,
    predict_proba,
    save_model,
)
from napari_mpf.engine.network.predict import staged_input
from napari_mpf.engine.scale import halo, predict_dask
from napari_mpf.engine.training.loss import loss_and_gradients


def _two_stages(dtype=np.float64, c=1, k=3, filters=None, seed=0):
    first = Model.create("C3x3x4, MPF2x2, C2x2x3, FC5", c, k, seed=seed, dtype=dtype, filters=filters)
    randomise(first, seed)
    second = Model.create("C3x3x3, MPF2x2, C2x2x4, FC6", c, k, seed=seed + 1, dtype=dtype, filters=filters,
                          context=first)
    randomise(second, seed + 1)
    return first, second


def _ref_stage_input(first, image):
    """The stage input from the patch-by-patch reference: the image, then the first stage's
    probabilities of classes 2..K (rounded to float32, as the engine's probabilities are)."""
    logits = ref_logits(first, image, dtype=np.float64)
    z = np.exp(logits - logits.max(axis=0))
    p = (z / z.sum(axis=0)).astype(np.float32)
    img = np.asarray(image, np.float64)
    return np.concatenate([img[None] if img.ndim == 2 else img, p[1:].astype(np.float64)])


@pytest.mark.parametrize("c", [1, 2])
def test_second_stage_equals_the_patch_by_patch_reference(c):
    first, second = _two_stages(c=c)
    image = make_image((19, 23), c, seed=3)
    got = predict_logits(second, image)
    want = ref_logits(second, _ref_stage_input(first, image), dtype=np.float64)
    allclose_scaled(got, want, 1e-5, "second-stage logits")


def test_second_stage_gradients_equal_the_reference():
    first, second = _two_stages(k=2)
    image = make_image((17, 21), 1, seed=4)
    labels = make_labels((17, 21), 2, "sparse", seed=4)
    loss, gw, gb = loss_and_gradients(second, image, labels, balance=True)
    rloss, rgw, rgb = ref_loss_and_gradients(second, _ref_stage_input(first, image), labels, balance=True)
    np.testing.assert_allclose(loss, rloss, rtol=1e-5)
    assert len(gw) == len(second.weights)  # the gradients are the second stage's only
    for i in range(len(gw)):
        allclose_scaled(gw[i], rgw[i], 1e-5, f"grad weights[{i}]")
        allclose_scaled(gb[i], rgb[i], 1e-5, f"grad biases[{i}]")


def test_stage_input_is_the_image_then_the_first_stages_probabilities():
    first, second = _two_stages(dtype=np.float32, k=3)
    image = make_image((15, 18), 1, seed=5).astype(np.float32)
    staged = staged_input(second, image)
    assert second.stage_channels == 3 and staged.shape == (3, 15, 18)
    np.testing.assert_array_equal(staged[0], image)
    np.testing.assert_array_equal(staged[1:], predict_proba(first, image)[1:])
    assert "auto-context" in second.describe()


def test_training_changes_only_the_second_stage_and_lowers_its_loss():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(40, 44)).astype(np.float32)
    image[:, 22:] += 2.0
    labels = np.zeros((40, 44), np.int32)
    labels[5:35, 3:18] = 1
    labels[5:35, 26:41] = 2
    first = Model.for_data([image], [labels], spec="C3x3x4, MPF2x2, FC8")
    for _ in Trainer(first, [image], [labels], TrainConfig(steps=5, seed=1)).run():
        pass
    before = [w.copy() for w in first.weights]
    second = Model.for_data([image], [labels], spec="C3x3x4, MPF2x2, FC8", context=first)
    losses = [p.loss for p in Trainer(second, [image], [labels], TrainConfig(steps=40, seed=2, lr=0.01)).run()]
    assert all(np.array_equal(a, b) for a, b in zip(before, second.context.weights, strict=True))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    with pytest.raises(SpecError, match="TrainConfig"):  # its filter statistics need the first stage's output
        Model.for_data([image], [labels], spec="C3x3x4, MPF2x2, FC8", context=first, filters="multiscale")


def test_a_second_stage_that_cannot_take_the_heads_is_refused_before_training():
    from napari_mpf.engine import InputError
    from napari_mpf.engine.network.heads import add_superpixel_branch

    image = np.zeros((20, 20), np.float32)
    labels = np.zeros((20, 20), np.int32)
    labels[:5], labels[-5:] = 1, 2
    first = add_superpixel_branch(Model.for_data([image], [labels], spec="C3x3x4, MPF2x2, FC8"), 30.0)
    with pytest.raises(InputError, match="1x1"):
        Trainer(first, [image], [labels], TrainConfig(steps=4, context="IN8x8, C3x3x4, MPF2x2, FC2"))


def test_a_first_stage_for_other_channels_or_classes_is_refused():
    first = Model.create("C3x3x4, MPF2x2, FC5", 1, 2)
    with pytest.raises(SpecError, match="must match"):
        Model.create("C3x3x4, MPF2x2, FC5", 2, 2, context=first)
    with pytest.raises(SpecError, match="must match"):
        Model.create("C3x3x4, MPF2x2, FC5", 1, 3, context=first)


def test_model_file_keeps_both_stages(tmp_path):
    _, second = _two_stages(dtype=np.float32, filters={"smooth": [1.0], "gradient": [], "hessian": [1.0]})
    image = make_image((21, 26), 1, seed=6).astype(np.float32)
    path = save_model(second, tmp_path / "two.npz")
    loaded = load_model(path)
    np.testing.assert_array_equal(predict_proba(loaded, image), predict_proba(second, image))
    assert loaded.context is not None and loaded.context.spec.text == second.context.spec.text
    with zipfile.ZipFile(path) as zf, zf.open("header.npy") as fh:
        header = json.loads(str(np.lib.format.read_array(fh)))
    assert header["version"] == 4 and header["context"]["spec"] == second.context.spec.text


@pytest.mark.parametrize("chunks", [(7, 9), (21, 26)])
def test_chunked_prediction_equals_whole_image_prediction(chunks):
    _, second = _two_stages(dtype=np.float32, filters={"smooth": [1.0], "gradient": [1.0], "hessian": []})
    image = make_image((21, 26), 1, seed=7).astype(np.float32)
    assert halo(second)[0][0] > halo(second, stage=True)[0][0]  # the first stage's window adds to the halo
    got = predict_dask(second, image, chunks=chunks).compute()
    np.testing.assert_allclose(got, predict_proba(second, image), rtol=0, atol=1e-6)


def test_superpixel_refinement_reads_the_normalised_image_channels_only():
    from napari_mpf.engine.network.predict import normalise, refine_with_superpixels
    from napari_mpf.engine.network.superpixels import refine_probabilities, slic_superpixels

    _, second = _two_stages(dtype=np.float32, filters={"smooth": [1.0], "gradient": [1.0], "hessian": []})
    image = make_image((30, 34), 1, seed=8).astype(np.float32)
    probs = predict_proba(second, image)
    segments = slic_superpixels(normalise(second, image)[:1], 40.0, 0.3)
    np.testing.assert_array_equal(refine_with_superpixels(second, image, probs, 40.0),
                                  refine_probabilities(probs, segments))

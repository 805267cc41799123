"""The classes' weights in the loss, from the painted strokes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mpf.engine import Model, TrainConfig, Trainer
from napari_mpf.engine.training.dataset import PairDataset
from napari_mpf.engine.training.loss import masked_cross_entropy
from napari_mpf.engine.training.strokes import class_weights, stroke_counts, weights_for_labels
from napari_mpf.engine.training.synthetic import two_texture_sample

SPEC = "C3x3x4, MPF2x2, C3x3x4, FC8"


def _strokes(shape, n_background: int, n_foreground: int, length: int = 6) -> np.ndarray:
    """Horizontal strokes 2 rows apart: background ones from the top, foreground ones from the bottom."""
    lab = np.zeros(shape, np.uint8)
    for k in range(n_background):
        lab[1 + 2 * k, 1 : 1 + length] = 1
    for k in range(n_foreground):
        lab[shape[0] - 2 - 2 * k, 1 : 1 + length] = 2
    return lab


def test_strokes_are_eight_connected_pieces_of_a_class():
    lab = np.zeros((8, 8), np.uint8)
    lab[1, 1], lab[2, 2] = 1, 1  # touching diagonally: one stroke
    lab[5, 5:8] = 1
    lab[0, 6] = 2
    pixels, strokes = stroke_counts(lab, 3)
    np.testing.assert_array_equal(pixels, [5, 1, 0])
    np.testing.assert_array_equal(strokes, [2, 1, 0])


def test_a_dense_mask_has_no_strokes():
    lab = np.ones((6, 6), np.uint8)
    lab[:3] = 2
    pixels, strokes = stroke_counts(lab, 2)
    np.testing.assert_array_equal(pixels, [18, 18])
    np.testing.assert_array_equal(strokes, [0, 0])
    np.testing.assert_array_equal(weights_for_labels([lab], 2), [1.0, 1.0])


def test_as_many_strokes_per_class_is_the_plain_mean():
    np.testing.assert_allclose(class_weights([900, 100], [10, 10]), [1.0, 1.0])


def test_a_class_painted_in_fewer_strokes_weighs_more():
    w = class_weights([1400, 300], [20, 5])
    np.testing.assert_allclose(w, [12.5 / 20, 12.5 / 5])  # toward equal stroke counts


def test_never_beyond_equal_pixel_shares_nor_below_the_plain_mean():
    # a few long strokes of the foreground: equal pixel shares are reached first
    np.testing.assert_allclose(class_weights([1000, 800], [20, 5]), [900 / 1000, 900 / 800])
    # the background filled in one piece, the foreground in many small strokes: stays the plain mean
    np.testing.assert_allclose(class_weights([50_000, 1_000], [1, 10]), [1.0, 1.0])


def test_unpainted_classes_weigh_nothing_and_no_strokes_is_the_plain_mean():
    np.testing.assert_allclose(class_weights([30, 0, 10], [2, 0, 1]), [0.75, 0.0, 1.5])
    np.testing.assert_allclose(class_weights([10, 30], [0, 0]), [1.0, 1.0])
    np.testing.assert_array_equal(class_weights([0, 0], [0, 0]), [0.0, 0.0])


def test_the_loss_weighs_painted_pixels_by_their_class():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 6, 7)).astype(np.float32)
    lab = _strokes((6, 7), 2, 1)
    plain, plain_grad = masked_cross_entropy(logits, lab, balance=False)
    ones, ones_grad = masked_cross_entropy(logits, lab, balance=False, class_weights=np.ones(2))
    assert ones == pytest.approx(plain)
    np.testing.assert_allclose(ones_grad, plain_grad, rtol=1e-6)
    z = logits.astype(np.float64)
    log_p = z - np.log(np.exp(z).sum(axis=0))
    per_pixel = -np.where(lab == 1, log_p[0], log_p[1])
    w = np.where(lab == 1, 1.0, 3.0) * (lab > 0)
    weighted, _ = masked_cross_entropy(logits, lab, balance=False, class_weights=np.array([1.0, 3.0]))
    assert weighted == pytest.approx((w * per_pixel).sum() / w.sum(), rel=1e-5)
    assert weighted != pytest.approx(plain, rel=1e-3)


def test_training_weighs_the_strokes_of_all_images_and_streams_the_same(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    images, labels = [], []
    for k, (nb, nf) in enumerate([(8, 2), (4, 2)]):
        image = two_texture_sample((36, 40), seed=k).image
        lab = _strokes((36, 40), nb, nf)
        tifffile.imwrite(tmp_path / "images" / f"im{k}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"im{k}_labels.tif", lab)
        images.append(image)
        labels.append(lab)
    model = Model.for_data(images, labels, spec=SPEC, seed=1)
    in_memory = Trainer(model.copy(), images, labels, TrainConfig(steps=1))
    list(in_memory.run())
    weights = in_memory.model.provenance["class_weights"]
    np.testing.assert_allclose(weights, [8 / 12, 8 / 4])  # 12 and 4 strokes
    streamed = Trainer(model.copy(), PairDataset.from_folder(tmp_path), None, TrainConfig(steps=1))
    list(streamed.run())
    assert streamed.model.provenance["class_weights"] == weights
    papers = Trainer(in_memory.model, images, labels, TrainConfig(steps=1, balance=True))
    list(papers.run())
    assert "class_weights" not in papers.model.provenance  # the papers' loss balances each step itself


def test_a_run_that_keeps_the_prior_correction_keeps_the_weights():
    image = two_texture_sample((36, 40), seed=0).image
    lab = _strokes((36, 40), 8, 2)
    model = Model.for_data([image], [lab], spec=SPEC, seed=1)
    list(Trainer(model, [image], [lab], TrainConfig(steps=2)).run())
    assert model.provenance["class_weights"] == pytest.approx([5 / 8, 5 / 2])
    corrected = lab.copy()
    corrected[20, 1:7] = corrected[22, 1:7] = 2  # two corrections of the foreground: 8 and 4 strokes
    list(Trainer(model, [image], [corrected], TrainConfig(steps=2)).run())
    assert model.provenance["class_weights"] == pytest.approx([5 / 8, 5 / 2])
    other = two_texture_sample((36, 40), seed=5).image  # other images: counted again
    list(Trainer(model, [other], [corrected], TrainConfig(steps=2)).run())
    assert model.provenance["class_weights"] == pytest.approx([6 / 8, 6 / 4])

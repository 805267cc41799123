"""Elastic deformation of training batches: labels move with their pixels, no field = no change."""

import numpy as np
import pytest

from napari_mpf.engine import InputError, Model, TrainConfig, Trainer
from napari_mpf.engine.augment import displacement_field, elastic_deform
from napari_mpf.engine.loss import Batch
from napari_mpf.engine.synthetic import two_texture_sample

WINDOW = (12, 12)


def _checkerboard_batch(out: int = 96, channels: int = 3) -> Batch:
    """Blocks of 16 px; the label of an output pixel is its centre input pixel's block (1 or 2)."""
    cy, cx = WINDOW[0] // 2, WINDOW[1] // 2
    size = out + WINDOW[0] - 1
    yy, xx = np.mgrid[0:size, 0:size]
    board = ((yy // 16 + xx // 16) % 2).astype(np.float32)
    padded = np.stack([board * (k + 1) for k in range(channels)])
    labels = (board[cy : cy + out, cx : cx + out] + 1).astype(np.int32)
    return Batch(padded, labels, valid=(out, out))


def test_labels_move_with_the_pixels_they_were_painted_on():
    batch = _checkerboard_batch()
    rng = np.random.default_rng(0)
    out = elastic_deform(batch, WINDOW, 6.0, rng)
    assert out.padded.shape == batch.padded.shape and out.labels.shape == batch.labels.shape
    assert not np.array_equal(out.padded, batch.padded)
    cy, cx = WINDOW[0] // 2, WINDOW[1] // 2
    centre = out.padded[0, cy : cy + 96, cx : cx + 96]
    painted = out.labels > 0
    pure = painted & ((centre == 0) | (centre == 1))  # not blended across a block edge
    assert pure.mean() > 0.5
    np.testing.assert_array_equal(centre[pure] + 1, out.labels[pure])
    # every channel moved by the same field
    np.testing.assert_allclose(out.padded[2], 3 * out.padded[0], rtol=1e-6)
    # the user's batch is untouched
    np.testing.assert_array_equal(batch.padded, _checkerboard_batch().padded)


def test_no_displacement_changes_nothing():
    batch = _checkerboard_batch()
    out = elastic_deform(batch, WINDOW, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out.padded, batch.padded)
    np.testing.assert_array_equal(out.labels, batch.labels)


def test_field_is_smooth_with_the_asked_strength():
    field = displacement_field((256, 256), 5.0, np.random.default_rng(1))
    assert field.shape == (2, 256, 256)
    assert 2.0 < field.std() < 8.0
    assert np.abs(np.diff(field, axis=1)).max() < 1.0  # neighbours move together


def test_superpixels_are_moved_and_renumbered():
    batch = _checkerboard_batch()
    segments = (np.arange(96)[:, None] // 32 * 3 + np.arange(96)[None, :] // 32).astype(np.int32)
    batch.segments, batch.n_segments = segments, 9
    out = elastic_deform(batch, WINDOW, 6.0, np.random.default_rng(2))
    ids = np.unique(out.segments[out.segments >= 0])
    np.testing.assert_array_equal(ids, np.arange(out.n_segments))


def test_training_with_elastic_deformation_learns_and_refuses_bad_strengths():
    sample = two_texture_sample((96, 96), seed=0)
    model = Model.for_data([sample.image], [sample.strokes], spec="C3x3x4, MPF2x2, C3x3x6, FC8", seed=0)
    config = TrainConfig(steps=30, elastic=4.0, seed=0, lr=0.01)
    losses = [p.loss for p in Trainer(model, [sample.image], [sample.strokes], config).run()]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert model.provenance["elastic"] == 4.0
    for bad in (-1.0, float("nan")):
        with pytest.raises(InputError, match="elastic"):
            Trainer(model, [sample.image], [sample.strokes], TrainConfig(elastic=bad))


def test_intensity_jitter_equals_filtering_the_changed_image():
    from napari_mpf.engine.augment import intensity_jitter
    from napari_mpf.engine.loss import make_batch
    from napari_mpf.engine.predict import normalise

    sample = two_texture_sample((64, 64), seed=3)
    model = Model.for_data([sample.image], [sample.strokes], spec="C3x3x4, MPF2x2, C3x3x6, FC8", seed=0,
                           filters="multiscale").astype(np.float64)
    batch = make_batch(model, normalise(model, sample.image), sample.strokes)
    jittered = intensity_jitter(batch, model, 0.3, np.random.default_rng(5))
    draw = np.random.default_rng(5)
    a, b = np.exp(draw.uniform(-0.3, 0.3)), draw.uniform(-0.3, 0.3)
    assert abs(np.log(a)) > 0.01 and abs(b) > 0.01
    mean, std = float(model.norm_mean[0]), float(model.norm_std[0])
    changed = std * (a * (sample.image - mean) / std + b) + mean
    expected = make_batch(model, normalise(model, changed), sample.strokes)
    np.testing.assert_allclose(jittered.padded, expected.padded, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(jittered.labels, batch.labels)
    with pytest.raises(InputError, match="intensity"):
        Trainer(model, [sample.image], [sample.strokes], TrainConfig(intensity=-0.1))

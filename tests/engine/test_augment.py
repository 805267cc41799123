"""Elastic deformation of training batches: labels move with their pixels, no field = no change."""

import numpy as np
import pytest

from napari_mpf.engine import InputError, Model, TrainConfig, Trainer
from napari_mpf.engine.training.augment import displacement_field, elastic_deform
from napari_mpf.engine.training.loss import Batch
from napari_mpf.engine.training.synthetic import two_texture_sample

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


@pytest.mark.parametrize("setting, value, bad", [("elastic", 4.0, (-1.0, float("nan"))),
                                                  ("shading", 0.3, (-0.1, 3.0, float("nan")))])
def test_training_with_an_augmentation_learns_and_refuses_bad_settings(setting, value, bad):
    sample = two_texture_sample((96, 96), seed=0)
    model = Model.for_data([sample.image], [sample.strokes], spec="C3x3x4, MPF2x2, C3x3x6, FC8", seed=0)
    config = TrainConfig(steps=30, seed=0, lr=0.01, **{setting: value})
    losses = [p.loss for p in Trainer(model, [sample.image], [sample.strokes], config).run()]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert model.provenance[setting] == value
    for wrong in bad:
        with pytest.raises(InputError, match=setting):
            Trainer(model, [sample.image], [sample.strokes], TrainConfig(**{setting: wrong}))


def test_intensity_jitter_equals_filtering_the_changed_image():
    from napari_mpf.engine.network.predict import normalise
    from napari_mpf.engine.training.augment import intensity_jitter
    from napari_mpf.engine.training.loss import make_batch

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


def _shaded(model, value: float, amount: float, seed: int):
    from napari_mpf.engine.training.augment import shading

    batch = _checkerboard_batch(out=96, channels=model.stage_channels)
    batch.padded[:] = value
    return shading(batch, model, amount, np.random.default_rng(seed)), batch


def test_shading_is_a_smooth_gain_and_offset_of_the_image_only():
    model = Model.create("C3x3x4, MPF2x2, FC8", in_channels=1, n_classes=2)
    zero, batch = _shaded(model, 0.0, 0.3, seed=4)
    one, _ = _shaded(model, 1.0, 0.3, seed=4)
    b = zero.padded[0]
    a = one.padded[0] - b
    assert (a > 0).all()
    assert 0.05 < np.std(np.log(a)) < 0.6 and 0.05 < np.std(b) < 0.6  # it varies, about as asked
    assert np.abs(np.diff(b, axis=0)).max() < 0.05 and np.abs(np.diff(np.log(a), axis=1)).max() < 0.05  # smoothly
    np.testing.assert_array_equal(one.labels, batch.labels)
    # a first stage's probabilities are not an image: they stay as they are
    first = Model.create("C3x3x4, MPF2x2, FC8", in_channels=1, n_classes=3)
    second = Model.create("C3x3x4, MPF2x2, FC8", in_channels=1, n_classes=3, context=first)
    shaded, batch = _shaded(second, 0.5, 0.3, seed=4)
    assert not np.allclose(shaded.padded[0], 0.5)
    np.testing.assert_array_equal(shaded.padded[1:], batch.padded[1:])


def test_shaded_filter_outputs_are_close_to_filtering_the_shaded_image():
    from napari_mpf.engine.network.features import apply_filters
    from napari_mpf.engine.network.predict import normalise
    from napari_mpf.engine.training.augment import shading
    from napari_mpf.engine.training.loss import make_batch

    sample = two_texture_sample((160, 160), seed=3)
    filters = {"smooth": [1.0], "gradient": [1.0], "hessian": [1.0]}
    model = Model.for_data([sample.image], [sample.strokes], spec="C3x3x4, MPF2x2, C3x3x6, FC8", seed=0,
                           filters=filters).astype(np.float64)
    batch = make_batch(model, normalise(model, sample.image), sample.strokes)
    shaded = shading(batch, model, 0.3, np.random.default_rng(2))
    mean, std = np.asarray(model.filter_mean)[:, None, None], np.asarray(model.filter_std)[:, None, None]
    refiltered = (apply_filters(shaded.padded[:1], model.filters)[1:] - mean) / std
    inner = (slice(None), slice(8, -8), slice(8, -8))  # away from the border the filters see differently
    change = np.abs(shaded.padded[1:] - batch.padded[1:])[inner]
    miss = np.abs(shaded.padded[1:] - refiltered)[inner]
    assert change.mean() > 0.05
    assert miss.mean() < 0.1 * change.mean()


def test_intensity_jitter_leaves_a_first_stages_probabilities_alone():
    from napari_mpf.engine.network.predict import normalise
    from napari_mpf.engine.training.augment import intensity_jitter
    from napari_mpf.engine.training.loss import make_batch

    sample = two_texture_sample((64, 64), seed=3)
    first = Model.for_data([sample.image], [sample.strokes], spec="C3x3x4, MPF2x2, FC8", seed=0, filters="multiscale")
    second = Model.for_data([sample.image], [sample.strokes], spec="C3x3x4, MPF2x2, FC8", seed=1,
                            filters="multiscale", context=first)
    alone = intensity_jitter(make_batch(first, normalise(first, sample.image), sample.strokes), first, 0.3,
                             np.random.default_rng(5))
    batch = make_batch(second, normalise(second, sample.image), sample.strokes)
    jittered = intensity_jitter(batch, second, 0.3, np.random.default_rng(5))
    c, k = second.stage_channels, alone.padded.shape[0] - 1  # 2 stage channels; k filter outputs each
    assert c == 2
    np.testing.assert_array_equal(jittered.padded[1], batch.padded[1])  # the probabilities
    np.testing.assert_array_equal(jittered.padded[c + k :], batch.padded[c + k :])  # and their filters
    np.testing.assert_allclose(jittered.padded[0], alone.padded[0], rtol=1e-5, atol=1e-5)  # the image as alone
    np.testing.assert_allclose(jittered.padded[c : c + k], alone.padded[1:], rtol=1e-4, atol=1e-4)

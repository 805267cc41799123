"""Input filters: shapes, locality (regions give the whole image's features), symmetry under the
training augmentation, the model file, chunked prediction and clear errors."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
from _cases import make_image, randomise

from napari_mpf.engine import (
    InputError,
    Model,
    ModelFileError,
    TrainConfig,
    load_model,
    predict_proba,
    save_model,
    train,
)
from napari_mpf.engine.network.dihedral import dihedral
from napari_mpf.engine.network.features import (
    FILTER_BANKS,
    apply_filters,
    check_filters,
    n_outputs,
    radius,
)
from napari_mpf.engine.network.padding import mirror_indices
from napari_mpf.engine.network.predict import normalise
from napari_mpf.engine.scale import predict_dask

SMALL = {"smooth": [1.0, 2.5], "gradient": [1.0], "hessian": [1.5]}


def test_shapes_and_first_channels_are_the_image():
    x = np.random.default_rng(0).normal(size=(2, 30, 41)).astype(np.float32)
    out = apply_filters(x, SMALL)
    assert n_outputs(SMALL) == 6 and out.shape == (12, 30, 41) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:2], x)
    assert apply_filters(x, None) is x and n_outputs(None) == 1 and radius(None) == 0
    assert radius(SMALL) == 10  # 4 sigma, rounded (+ 1 for the Hessian's differences)
    assert n_outputs(check_filters("multiscale")) == 19 and radius(check_filters("multiscale")) == 65
    assert check_filters({"smooth": []}) is None


def test_a_smoothed_constant_stays_constant_and_its_hessian_is_zero():
    out = apply_filters(np.full((1, 20, 25), 3.0, np.float32), SMALL)
    np.testing.assert_allclose(out[:3], 3.0, atol=1e-5)
    np.testing.assert_allclose(out[3:], 0.0, atol=1e-5)  # gradient and Hessian


def test_a_dark_ridge_gives_a_positive_eigenvalue_along_it():
    x = np.zeros((1, 40, 40), np.float32)
    x[0, :, 19:21] = -1.0  # a dark vertical line, like a membrane
    out = apply_filters(x, {"smooth": [], "gradient": [1.0], "hessian": [1.5]})
    assert out[2, 20, 20] > 0.1 and abs(out[3, 20, 20]) < 0.05 * out[2, 20, 20]
    assert out[1, 20, 17] > 0.1 and out[1, 20, 35] < 0.01  # an edge beside the line, none far from it


@pytest.mark.parametrize("shape", [(37, 45), (9, 7)])
def test_a_region_with_context_gives_the_whole_images_features(shape):
    """What chunked prediction relies on, including regions that reach past the border."""
    x = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    whole = apply_filters(x, SMALL)
    r = radius(SMALL)
    for y0, y1, x0, x1 in [(0, shape[0], 0, shape[1]), (2, 6, 3, 5), (shape[0] - 3, shape[0], 0, 2)]:
        rows = mirror_indices(shape[0], r, r)[y0 : y1 + 2 * r]
        cols = mirror_indices(shape[1], r, r)[x0 : x1 + 2 * r]
        region = apply_filters(x[:, rows[:, None], cols[None, :]], SMALL, extended=True)
        np.testing.assert_allclose(region, whole[:, y0:y1, x0:x1], atol=1e-6)


def test_features_follow_rotations_and_flips():
    """Training augments the filtered stack: that must equal filtering the augmented image."""
    x = np.random.default_rng(2).normal(size=(1, 23, 31)).astype(np.float32)
    out = apply_filters(x, SMALL)
    for k in range(8):
        np.testing.assert_allclose(apply_filters(dihedral(x, k), SMALL), dihedral(out, k), atol=2e-5, err_msg=f"k={k}")


@pytest.mark.parametrize("bad, match", [
    ("sobel", "unknown input filters"),
    ({"smooth": [0.0]}, "sigmas must be"),
    ({"smooth": [1.0], "gabor": [2.0]}, "unknown input filter kind"),
])
def test_bad_filters_are_refused(bad, match):
    with pytest.raises(InputError, match=match):
        Model.create("fast", 1, 2, filters=bad)


def test_model_with_filters_trains_saves_and_loads(tmp_path):
    image = make_image((40, 44), 1, seed=3).reshape(40, 44)
    labels = np.zeros((40, 44), np.uint8)
    labels[3:12, 4:20], labels[25:38, 20:40] = 1, 2
    model = Model.for_data([image], [labels], spec="C3x3x4, MPF2x2, C3x3x4, FC6", filters=SMALL)
    assert model.weights[0].shape[1] == model.net_in_channels == 6
    x = normalise(model, image)  # the first layer's input: every channel standardised on the training image
    np.testing.assert_allclose(x.mean(axis=(1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(1, 2)), 1.0, atol=1e-3)
    train(model, [image], [labels], TrainConfig(steps=3, crop=None))
    path = save_model(model, tmp_path / "m.npz")
    with np.load(path) as data:
        header = json.loads(str(data["header"]))
    assert header["version"] == 3 and header["filters"] == SMALL
    loaded = load_model(path)
    assert loaded.filters == SMALL
    np.testing.assert_array_equal(loaded.filter_std, model.filter_std)
    np.testing.assert_array_equal(predict_proba(loaded, image), predict_proba(model, image))
    assert "input filters" in model.describe()


@pytest.mark.parametrize("channels, shape, chunks", [(1, (37, 45), [(5, 7), (16, 45)]), (2, (19, 21), [(6, 4)])])
def test_chunked_prediction_with_filters_equals_whole_image(channels, shape, chunks):
    model = Model.create("C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC3", channels, 3, filters=SMALL)
    randomise(model, 5)
    image = make_image(shape, channels, seed=8)
    image = image[0] if channels == 1 and image.ndim == 3 else image
    whole = predict_proba(model, image)
    for c in chunks:
        arr = da.from_array(image, chunks=(-1, *c) if image.ndim == 3 else c)
        got = predict_dask(model, arr, chunks=c).compute(scheduler="sync")
        np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6, err_msg=f"chunks {c}")


def test_banks_are_valid():
    for name in FILTER_BANKS:
        bank = check_filters(name)
        assert bank == {k: [float(s) for s in FILTER_BANKS[name].get(k, [])] for k in ("smooth", "gradient", "hessian")}
        assert n_outputs(bank) > 1


def test_a_file_with_bad_filter_statistics_is_refused(tmp_path):
    model = Model.create("C3x3x4, MPF2x2, C3x3x4, FC6", 1, 2, filters=SMALL)
    path = save_model(model, tmp_path / "m.npz")
    with np.load(path) as data:
        arrays = dict(data)
    arrays["filter_std"] = arrays["filter_std"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelFileError, match="filter_mean / filter_std"):
        load_model(tmp_path / "bad.npz")

"""Large or dask-backed images: lazy output layers (only shown slices computed) and 'Predict to zarr'."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from qt_helpers import train_and_wait, wait_idle

import napari_mpf.engine.scale.lazy as chunked  # predict_dask calls the predict_region it imported
from napari_mpf._qt.trainer_widget import SMALL_SPEC
from napari_mpf._sample_data import blobs
from napari_mpf.engine import Model, predict_proba, segment


def _stack(n=6, shape=(40, 36)):
    return np.stack([blobs(shape, n=2, radius=3, seed=20 + z)[0] for z in range(n)]).astype(np.float32)


@pytest.fixture
def model():
    m = Model.create(SMALL_SPEC, 1, 2, seed=3, class_names=["background", "blob"])
    rng = np.random.default_rng(0)
    for w in m.weights:
        w[...] = rng.normal(size=w.shape) / np.sqrt(np.prod(w.shape[1:]))
    m.norm_mean[:] = 0.4
    m.norm_std[:] = 0.3
    return m


@pytest.fixture
def calls(monkeypatch):
    """Count the regions the engine predicts (one per computed chunk and image)."""
    seen: list[tuple] = []
    original = chunked.predict_region

    def counting(model, read, shape, rows, cols, output="probabilities"):
        seen.append((rows, cols))
        return original(model, read, shape, rows, cols, output)

    monkeypatch.setattr(chunked, "predict_region", counting)
    return seen


def test_dask_stack_gets_lazy_layers_that_compute_only_shown_slices(viewer_widget, qtbot, model, calls):
    viewer, w = viewer_widget
    stack = _stack()
    layer = viewer.add_image(da.from_array(stack, chunks=(2, 40, 36)), name="big")
    w.image_combo.set_layer(layer)
    w.controller.model = model
    viewer.dims.set_current_step(0, 4)
    calls.clear()
    with qtbot.waitSignal(w.prediction_finished, timeout=10_000):
        assert w.predict(layer) is None  # no worker: the layers are lazy
    prob = viewer.layers["big p(blob)"]
    seg = viewer.layers["big segmentation"]
    assert isinstance(prob.data, da.Array) and isinstance(seg.data, da.Array)
    assert prob.metadata["lazy"] and prob.data.shape == stack.shape
    qtbot.waitUntil(lambda: len(calls) > 0, timeout=10_000)
    qtbot.wait(200)
    # napari computed the shown slice (once for all three layers: the tiles are cached) and at most one
    # more it reads when a layer is added, not the stack of 6
    assert 1 <= len(calls) <= 2, calls
    for z in (4, 1):
        want = predict_proba(model, stack[z])
        np.testing.assert_allclose(np.asarray(prob.data[z]), want[1], atol=1e-6)
        np.testing.assert_array_equal(np.asarray(seg.data[z]), segment(want))
    with pytest.raises(Exception, match="lazily"):
        w.controller.count(layer)


def test_big_numpy_image_is_lazy_and_training_finishes(viewer_widget, qtbot, monkeypatch):
    viewer, w = viewer_widget
    stack = _stack(3)
    strokes = np.zeros(stack.shape, np.uint8)
    strokes[1, 2:6, 2:30] = 1
    strokes[1, 20:24, 5:30] = 2
    layer = viewer.add_image(stack, name="s")
    viewer.add_labels(strokes, name="s labels")
    w.image_combo.set_layer(layer)
    w.labels_combo.set_layer(viewer.layers["s labels"])
    monkeypatch.setattr(type(w.controller), "LAZY_PIXELS", 1000)
    train_and_wait(qtbot, w)
    assert isinstance(viewer.layers["s p(foreground)"].data, da.Array)


def test_predict_to_zarr_progress_stop_and_resume(viewer_widget, qtbot, model, tmp_path, monkeypatch):
    viewer, w = viewer_widget
    stack = _stack(5)
    layer = viewer.add_image(da.from_array(stack, chunks=(1, 40, 36)), name="vol")
    w.image_combo.set_layer(layer)
    w.controller.model = model
    monkeypatch.setattr(type(w.controller), "LAZY_TILE", 16)  # 3 x 3 chunks per slice
    path = tmp_path / "vol.zarr"
    seen = []

    worker = w.predict_to_zarr(path)
    assert worker is not None
    worker.yielded.connect(lambda p: (seen.append(p.chunks_done), w.stop()))
    wait_idle(qtbot, w)
    assert seen and w.stop_btn.isEnabled() is False
    g = zarr.open_group(str(path), mode="r")
    finished = int((np.asarray(g["class_pixels"][..., 0]) >= 0).sum())
    assert 1 <= finished < 5 * 9, finished
    assert "Stopped" in w.messages[-1][1]

    with qtbot.waitSignal(w.prediction_finished, timeout=30_000):
        w.predict_to_zarr(path)
    wait_idle(qtbot, w)
    assert "resuming" in " ".join(text for _, text in w.messages[-3:])
    want = np.stack([predict_proba(model, s) for s in stack])
    got = np.asarray(g["probabilities"][...]) / 255.0
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(g["segmentation"][...], np.stack([segment(p) for p in want]))
    prob = viewer.layers["vol p(blob)"]
    assert prob.metadata["zarr"] == str(path)
    np.testing.assert_allclose(np.asarray(prob.data[2]), np.rint(want[2, 1] * 255) / 255, atol=1e-6)
    assert "object(s) in 5 slice(s)" in w.count_label.text()


def test_predict_to_ome_zarr_opens_as_labels_of_the_image_at_its_scale(viewer_widget, qtbot, model, tmp_path, monkeypatch):
    """'Predict to zarr…' into *.ome.zarr: multiscale output layers, and napari-ome-zarr opens the store
    as the image's labels at the image layer's scale and position."""
    viewer, w = viewer_widget
    stack = _stack(2, shape=(600, 520))
    layer = viewer.add_image(stack, name="em", scale=(2.0, 0.5, 0.25), translate=(4.0, 1.0, 3.0))
    w.image_combo.set_layer(layer)
    w.controller.model = model
    monkeypatch.setattr(type(w.controller), "LAZY_TILE", 256)  # 600 px and 256-px chunks: 2 levels
    path = tmp_path / "em.ome.zarr"
    with qtbot.waitSignal(w.prediction_finished, timeout=30_000):
        w.predict_to_zarr(path)
    wait_idle(qtbot, w)
    seg_layer = viewer.layers["em segmentation"]
    want = np.stack([segment(predict_proba(model, s)) for s in stack])
    assert seg_layer.multiscale and [d.shape for d in seg_layer.data] == [(2, 600, 520), (2, 300, 260)]
    np.testing.assert_array_equal(np.asarray(seg_layer.data[0]), want)
    np.testing.assert_array_equal(np.asarray(seg_layer.data[1]), want[:, ::2, ::2])
    assert viewer.layers["em p(blob)"].multiscale
    np.testing.assert_allclose(seg_layer.scale, layer.scale)
    opened = viewer.open(str(path), plugin="napari-ome-zarr")
    labels = [lay for lay in opened if lay._type_string == "labels"]
    assert len(labels) == 1
    np.testing.assert_allclose(labels[0].scale, layer.scale)  # (napari-ome-zarr 0.10 reads no translation)
    np.testing.assert_allclose(seg_layer.translate, layer.translate)
    assert list(labels[0].features["class"]) == ["background", "blob"]
    level0 = labels[0].data[0] if labels[0].multiscale else labels[0].data
    np.testing.assert_array_equal(np.asarray(level0), want)


def test_zarr_dialog_suffix():
    from napari_mpf._qt.model_jobs import ZARR_FILTERS, store_path

    assert store_path("/d/vol", ZARR_FILTERS[0]) == "/d/vol.ome.zarr"
    assert store_path("/d/vol", ZARR_FILTERS[1]) == "/d/vol.zarr"
    assert store_path("/d/vol.zarr", ZARR_FILTERS[0]) == "/d/vol.zarr"


def test_multiscale_image_trains_and_predicts_on_its_full_resolution(viewer_widget, qtbot, model):
    """A pyramid layer (as napari-ome-zarr opens an OME-Zarr image): strokes at full resolution,
    training and outputs of level 0."""
    viewer, w = viewer_widget
    stack = _stack(3)
    layer = viewer.add_image([stack, stack[:, ::2, ::2]], multiscale=True, name="pyr")
    strokes = np.zeros(stack.shape, np.uint8)
    strokes[1, 2:6, 2:30] = 1
    strokes[1, 20:24, 5:30] = 2
    viewer.add_labels(strokes, name="pyr labels")
    w.image_combo.set_layer(layer)
    w.labels_combo.set_layer(viewer.layers["pyr labels"])
    train_and_wait(qtbot, w)
    prob = viewer.layers["pyr p(foreground)"]
    assert prob.data.shape == stack.shape
    w.controller.model = model
    with qtbot.waitSignal(w.prediction_finished, timeout=10_000):
        w.predict(layer)
    want = predict_proba(model, stack[2])
    np.testing.assert_allclose(np.asarray(viewer.layers["pyr p(blob)"].data[2]), want[1], atol=1e-6)

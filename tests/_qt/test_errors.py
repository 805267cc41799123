"""Every bad input ends in a napari notification with a clear sentence, never a silent no-op."""

from __future__ import annotations

import numpy as np
import pytest
from qt_helpers import add_pair, train_and_wait

from napari_mpf._qt.controller import Controller, UserError
from napari_mpf._sample_data import blobs
from napari_mpf.engine import Model


def _last_error(notes):
    errors = [text for level, text in notes if level == "error"]
    assert errors, notes
    return errors[-1]


def test_no_image_layer(viewer_widget, notes):
    _, w = viewer_widget
    assert w.train() is None
    assert "No image layer" in _last_error(notes)
    assert w.new_labels() is None
    assert "No image layer" in _last_error(notes)


def test_no_labels_layer(viewer_widget, notes):
    viewer, w = viewer_widget
    viewer.add_image(np.zeros((20, 20), np.float32), name="img")
    assert w.train() is None
    assert "No labels layer for 'img'" in _last_error(notes)


def test_shape_mismatch(viewer_widget, notes):
    viewer, w = viewer_widget
    viewer.add_image(np.zeros((20, 20), np.float32), name="img")
    viewer.add_labels(np.ones((20, 21), np.uint8), name="img labels")
    assert w.train() is None
    msg = _last_error(notes)
    assert "have shape (20, 21) but image 'img' is (20, 20)" in msg and "pixel for pixel" in msg


def test_no_strokes(viewer_widget, notes):
    viewer, w = viewer_widget
    viewer.add_image(np.zeros((20, 20), np.float32), name="img")
    w.new_labels_btn.click()
    assert w.train() is None
    assert "No strokes in 'img labels'" in _last_error(notes)


def test_one_class(viewer_widget, notes):
    viewer, w = viewer_widget
    lab = np.zeros((20, 20), np.uint8)
    lab[3:6, 3:6] = 2
    add_pair(viewer, np.zeros((20, 20), np.float32), lab, classes=("background", "membrane"))
    assert w.train() is None
    assert "Only class 2 (membrane) is painted" in _last_error(notes)
    assert "at least two classes" in _last_error(notes)


def test_bad_spec_and_learning_rate(viewer_widget, notes):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((24, 24), n=2, radius=3)
    add_pair(viewer, image, strokes)
    w.spec_combo.setCurrentText("C3x3x4, MPF2x2, banana")
    assert w.train() is None
    assert "Bad network spec" in _last_error(notes) and "banana" in _last_error(notes)
    w.spec_combo.setCurrentText("fast")
    w.lr_edit.setText("fast please")
    assert w.train() is None
    assert "learning rate 'fast please' is not a number" in _last_error(notes)


def test_rgb_vs_grayscale_model(viewer_widget, qtbot, notes):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((24, 24), n=2, radius=3)
    add_pair(viewer, image, strokes)
    train_and_wait(qtbot, w)
    rgb = viewer.add_image(np.zeros((24, 24, 3), np.uint8), name="colour", rgb=True)
    assert w.predict(rgb) is None
    assert _last_error(notes) == (
        "The model expects grayscale (1 channel) images but 'colour' is RGB (3 channels)."
    )


def test_bad_model_file(viewer_widget, tmp_path, notes):
    _, w = viewer_widget
    bad = tmp_path / "not_a_model.npz"
    np.savez(bad, x=np.zeros(3))
    assert w.import_model(bad) is None
    # the reason first (a toast cuts the end off), then what failed
    assert _last_error(notes).startswith("Not a napari-mpf model file")
    assert _last_error(notes).endswith("(cannot load the model not_a_model.npz).")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file")
    assert w.import_model(junk) is None
    assert "(cannot load the model junk.npz)" in _last_error(notes)
    assert w.controller.model is None


def test_no_model_to_apply_or_export(viewer_widget, tmp_path, notes):
    viewer, w = viewer_widget
    viewer.add_image(np.zeros((20, 20), np.float32), name="img")
    assert w.predict() is None
    assert "No model yet" in _last_error(notes)
    assert w.export_model(tmp_path / "m.npz") is None
    assert "No model to export" in _last_error(notes)
    assert w.count() is None
    assert "No probability map for 'img'" in _last_error(notes)


def test_export_into_a_missing_folder_says_why_first(viewer_widget, tmp_path, notes):
    _, w = viewer_widget
    w.controller.model = Model.create("C3x3x4, MPF2x2, C3x3x4, FC8", 1, 2, seed=0)
    assert w.export_model(tmp_path / "nowhere" / "m") is None
    text = _last_error(notes)
    assert "does not exist" in text and text.endswith("(cannot write the model m.mpf.npz).")
    assert not (tmp_path / "nowhere").exists()


def test_wrong_layer_types(make_napari_viewer):
    viewer = make_napari_viewer()
    points = viewer.add_points(np.zeros((2, 2)), name="pts")
    image = viewer.add_image(np.zeros((10, 10), np.float32), name="img")
    c = Controller(viewer)
    with pytest.raises(UserError, match="'pts' is a Points layer; pick an Image layer"):
        c.gather(points, None)
    with pytest.raises(UserError, match="'img' is a Image layer; the strokes must be in a Labels layer"):
        c.gather(image, image)
    with pytest.raises(UserError, match=r"napari-mpf works on \(Y, X\) images"):
        c.image_info(viewer.add_image(np.zeros((2, 2, 10, 10), np.float32), name="4d"))


def test_user_labels_never_modified_even_on_errors(viewer_widget, qtbot, notes):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((24, 24), n=2, radius=3)
    _, lab = add_pair(viewer, image, strokes)
    before = lab.data.copy()
    train_and_wait(qtbot, w)
    w.count()
    w.new_labels_btn.click()  # existing layer: reused, not cleared
    np.testing.assert_array_equal(lab.data, before)

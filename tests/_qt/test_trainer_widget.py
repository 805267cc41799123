"""The docked trainer: train in the background, preview, segment, count, stop, export/import."""

from __future__ import annotations

import time

import numpy as np
from napari.layers import Image, Labels
from qt_helpers import add_pair, configure, train_and_wait, wait_idle
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QPushButton, QSpinBox

from napari_mpf._qt.trainer_widget import TrainerWidget
from napari_mpf._sample_data import blobs
from napari_mpf.engine import predict_proba


def test_train_on_each_sample_gives_layers_with_right_shapes(viewer_widget, qtbot):
    viewer, w = viewer_widget
    for key, name in (("membrane_em", "EM membranes"), ("surface_defects", "surface defects")):
        viewer.open_sample("napari-mpf", key)
        w.image_combo.set_layer(viewer.layers[name])
        assert w.labels_combo.layer() is viewer.layers[f"{name} labels"]
        w.continue_check.setChecked(False)
        w.steps_spin.setValue(3)
        before = viewer.layers[f"{name} labels"].data.copy()
        train_and_wait(qtbot, w)
        cls = w.controller.model.class_names[1]
        prob = viewer.layers[f"{name} p({cls})"]
        seg = viewer.layers[f"{name} segmentation"]
        obj = viewer.layers[f"{name} objects"]
        assert isinstance(prob, Image) and prob.data.shape == (256, 256) and prob.data.dtype == np.float32
        assert 0.0 <= prob.data.min() and prob.data.max() <= 1.0
        assert isinstance(seg, Labels) and seg.data.shape == (256, 256)
        assert set(np.unique(seg.data)) <= {1, 2}
        assert isinstance(obj, Labels) and obj.data.shape == (256, 256)
        assert {"area", "centroid_y", "centroid_x", "mean_probability", "max_probability"} <= set(obj.features.columns)
        assert "count" in obj.metadata and "defect_present" in obj.metadata
        np.testing.assert_array_equal(viewer.layers[f"{name} labels"].data, before)  # never modified
    assert w.controller.model.provenance["steps"] == 3
    print(f"\nTrain click -> first preview layer: {w.timings['first_preview']:.3f} s")


def test_counts_known_number_of_blobs(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, centres = blobs((48, 48), n=5, radius=4, seed=3)
    img, _ = add_pair(viewer, image, strokes, "blobs")
    w.image_combo.set_layer(img)
    configure(w, steps=60)
    w.preview_spin.setValue(0)
    w.lr_edit.setText("0.02")
    train_and_wait(qtbot, w)
    res = w.controller.last_counts
    assert res.count == len(centres), (res.count, w.controller.model.provenance)
    obj = viewer.layers["blobs objects"]
    assert obj.metadata["count"] == len(centres) and obj.metadata["defect_present"] is True
    assert len(obj.features) == len(centres)
    assert f"{len(centres)} object(s)" in w.count_label.text()
    # every object sits on a true blob centre
    got = np.stack([obj.features["centroid_y"], obj.features["centroid_x"]], 1)
    d = np.linalg.norm(got[:, None] - centres[None], axis=2).min(1)
    assert (d < 2.0).all()
    # the rule: flag only from 6 objects on -> no defect
    w.min_count_spin.setValue(6)
    assert not w.count().defect_present
    w.min_pixels_spin.setValue(10)
    assert w.count().defect_present


def test_stop_midway_keeps_last_weights(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((40, 40), n=3)
    add_pair(viewer, image, strokes)
    configure(w, steps=100_000)
    with qtbot.waitSignal(w.preview_updated, timeout=20_000):
        worker = w.train()
    qtbot.waitUntil(lambda: w.progress.value() >= 3, timeout=20_000)
    # a second click while running starts nothing
    assert w.train() is None
    assert "already running" in w.messages[-1][1]
    trainer = w._run.trainer
    with qtbot.waitSignal(w.training_finished, timeout=20_000):
        w.stop_btn.click()
    assert worker.abort_requested
    wait_idle(qtbot, w)
    model = w.controller.model
    steps = model.provenance["steps"]
    assert 3 <= steps < 100_000
    for a, b in zip(model.weights, trainer.model.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(a).all() for a in model.weights)
    assert "Stopped after" in w.status.text()
    # the segmentation comes from the kept weights
    seg = viewer.layers["img segmentation"].data
    np.testing.assert_array_equal(seg, predict_proba(model, image).argmax(0) + 1)
    # training again continues from them
    configure(w, steps=2)
    train_and_wait(qtbot, w)
    assert w.controller.model.provenance["steps"] == steps + 2


def test_export_then_import_gives_identical_predictions(viewer_widget, qtbot, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    viewer, w = viewer_widget
    image, strokes, _ = blobs((40, 40), n=3)
    img, _ = add_pair(viewer, image, strokes)
    train_and_wait(qtbot, w)
    before = viewer.layers["img p(blob)"].data.copy()
    path = tmp_path / "blobs_model"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(path), ""))
    w.save_btn.click()
    saved = tmp_path / "blobs_model.mpf.npz"  # the model suffix is added
    assert saved.exists()
    original = w.controller.model
    w.controller.model = None
    viewer.layers.remove("img p(blob)")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(saved), ""))
    w.load_btn.click()
    loaded = w.controller.model
    assert loaded is not None and loaded is not original
    assert "window: 8×8" in w.model_info.toPlainText() and "blob" in w.model_info.toPlainText()
    with qtbot.waitSignal(w.prediction_finished, timeout=20_000):
        w.apply_btn.click()
    np.testing.assert_array_equal(viewer.layers["img p(blob)"].data, before)
    np.testing.assert_array_equal(predict_proba(loaded, image), predict_proba(original, image))


def test_painting_while_training_is_safe_and_labels_untouched(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((40, 40), n=3)
    _, lab = add_pair(viewer, image, strokes)
    configure(w, steps=30)
    with qtbot.waitSignal(w.training_finished, timeout=30_000):
        w.train()
        copy_in_trainer = w._run.trainer.labels[0].copy()
        for x in range(5, 30, 3):
            lab.paint((20, x), 1)
            qtbot.wait(5)
    wait_idle(qtbot, w)
    np.testing.assert_array_equal(w.controller.training_set.labels[0], copy_in_trainer)
    assert (lab.data[20, 5:30:3] == 1).all()  # the user's strokes are theirs


def test_live_mode_retrains_after_painting(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((40, 40), n=3)
    _, lab = add_pair(viewer, image, strokes)
    train_and_wait(qtbot, w)
    steps = w.controller.model.provenance["steps"]
    w._live_timer.setInterval(50)
    w.live_steps_spin.setValue(3)
    w.live_check.setChecked(True)
    with qtbot.waitSignal(w.training_finished, timeout=20_000):
        lab.paint((1, 1), 1)
    wait_idle(qtbot, w)
    assert w.controller.model.provenance["steps"] == steps + 3
    w.live_check.setChecked(False)


def test_removing_a_layer_in_use_stops_training(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((40, 40), n=3)
    add_pair(viewer, image, strokes)
    configure(w, steps=100_000)
    with qtbot.waitSignal(w.preview_updated, timeout=20_000):
        w.train()
    with qtbot.waitSignal(w.training_finished, timeout=20_000):
        viewer.layers.remove("img labels")
    wait_idle(qtbot, w)
    assert w.controller.model is not None and w.controller.model.provenance["steps"] >= 1
    assert "was removed" in w.messages[-1][1]


def test_new_labels_has_right_shape_and_named_classes(viewer_widget):
    viewer, w = viewer_widget
    viewer.add_image(np.zeros((3, 20, 30), np.float32), name="stack")
    viewer.add_image(np.zeros((20, 30, 3), np.uint8), name="rgb", rgb=True)
    w.classes_edit.setText("background, membrane, mito")
    for name, shape in (("stack", (3, 20, 30)), ("rgb", (20, 30))):
        w.image_combo.set_layer(viewer.layers[name])
        w.new_labels_btn.click()
        lab = viewer.layers[f"{name} labels"]
        assert lab.data.shape == shape and lab.data.dtype == np.uint8
        assert list(lab.features["class"]) == ["unpainted", "background", "membrane", "mito"]
        assert w.labels_combo.layer() is lab
    w.new_labels_btn.click()  # again: reuses the layer
    assert len([ly for ly in viewer.layers if ly.name.startswith("rgb labels")]) == 1


def test_spec_info_shows_window_and_params(viewer_widget):
    _, w = viewer_widget
    w.spec_combo.setCurrentText("steel")
    assert "window 34×34" in w.spec_info.text()
    w.spec_combo.setCurrentText("C3x3x4, MPF2x2, C3x3x4, FC8")
    assert "window 8×8" in w.spec_info.text() and "parameters" in w.spec_info.text()
    w.spec_combo.setCurrentText("C3x3x4, MPF3x3, Q7")
    assert "Bad network spec" in w.spec_info.text()


def test_first_preview_is_quick(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((48, 48), n=4)
    add_pair(viewer, image, strokes)
    configure(w, steps=20)
    t0 = time.perf_counter()
    with qtbot.waitSignal(w.preview_updated, timeout=20_000):
        w.train_btn.click()
    latency = time.perf_counter() - t0
    assert "img p(blob)" in viewer.layers
    wait_idle(qtbot, w)
    print(f"\nTrain click -> first preview layer: {latency:.3f} s (widget timing {w.timings['first_preview']:.3f} s)")
    assert latency < 10


def test_closing_the_viewer_ends_training_cleanly(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    w = TrainerWidget(viewer)
    viewer.window.add_dock_widget(w)
    image, strokes, _ = blobs((40, 40), n=3)
    add_pair(viewer, image, strokes)
    configure(w, steps=100_000)
    with qtbot.waitSignal(w.preview_updated, timeout=20_000):
        worker = w.train()
    trainer = w._run.trainer
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=20_000)
    assert worker.abort_requested
    assert 1 <= trainer.model.provenance["steps"] < 100_000


def test_three_classes_give_one_probability_layer_per_foreground_class(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, centres = blobs((40, 40), n=4, radius=4)
    cy, cx = centres[-1]
    strokes[cy - 1 : cy + 2, cx - 1 : cx + 2] = 3
    add_pair(viewer, image, strokes, classes=("background", "round", "odd"))
    train_and_wait(qtbot, w)
    assert w.controller.model.class_names == ["background", "round", "odd"]
    assert "img p(round)" in viewer.layers and "img p(odd)" in viewer.layers
    assert "img p(background)" not in viewer.layers
    assert set(np.unique(viewer.layers["img segmentation"].data)) <= {1, 2, 3}
    assert [w.class_combo.itemText(i) for i in range(w.class_combo.count())] == ["round", "odd"]
    w.class_combo.setCurrentIndex(1)
    assert w.count().params["threshold"] == 0.5
    assert viewer.layers["img objects"].metadata["class"] == "odd"


def test_predicting_while_training_and_gui_stays_responsive(viewer_widget, qtbot):
    from qtpy.QtCore import QTimer

    viewer, w = viewer_widget
    image, strokes, _ = blobs((64, 64), n=4)
    add_pair(viewer, image, strokes)
    train_and_wait(qtbot, w)
    configure(w, steps=100_000)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    with qtbot.waitSignal(w.preview_updated, timeout=20_000):
        w.train()
    with qtbot.waitSignal(w.prediction_finished, timeout=20_000):
        w.apply_btn.click()  # a prediction worker next to the training worker
    # the event loop keeps turning while training runs (however loaded the machine is) ...
    start = len(ticks)
    qtbot.waitUntil(lambda: len(ticks) >= start + 25, timeout=20_000)
    assert w._train_worker is not None
    with qtbot.waitSignal(w.training_finished, timeout=20_000):
        w.stop()
    wait_idle(qtbot, w)
    timer.stop()
    # ... and never freezes for long (a generous bound: this is not a speed test)
    gaps = np.diff(ticks)
    assert gaps.max() < 2.0, gaps.max()


def test_deleting_the_widget_stops_its_workers(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    w = TrainerWidget(viewer)
    viewer.window.add_dock_widget(w)
    image, strokes, _ = blobs((40, 40), n=3)
    add_pair(viewer, image, strokes)
    configure(w, steps=100_000)
    with qtbot.waitSignal(w.preview_updated, timeout=20_000):
        worker = w.train()
    viewer.window.remove_dock_widget(w)
    w.deleteLater()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=20_000)
    assert worker.abort_requested


def test_uncertainty_layer_and_least_certain_line_follow_the_preview(viewer_widget, qtbot):
    viewer, w = viewer_widget
    viewer.open_sample("napari-mpf", "membrane_em")
    w.image_combo.set_layer(viewer.layers["EM membranes"])
    train_and_wait(qtbot, w)
    layer = viewer.layers["EM membranes uncertainty"]
    assert isinstance(layer, Image) and not layer.visible  # hidden until the user wants it
    prob = viewer.layers[f"EM membranes p({w.controller.model.class_names[1]})"].data
    np.testing.assert_allclose(layer.data, 1 - np.abs(2 * prob - 1), atol=1e-5)  # two classes: 1 - margin
    hint = w.last_hint
    assert hint is not None and f"row {hint.y}, column {hint.x}" in w.hint_label.text()
    strokes = viewer.layers["EM membranes labels"].data
    assert strokes[hint.y, hint.x] == 0  # never points at a stroke already painted
    painted = strokes > 0
    wrong = np.mean(np.where(prob[painted] > 0.5, 2, 1) != strokes[painted])  # the line says how many
    assert f"disagrees with {wrong:.0%} of the painted pixels" in w.hint_label.text()


def test_warm_up_on_open_then_train_pressed_early_starts_when_ready(make_napari_viewer, qtbot, notes, monkeypatch):
    monkeypatch.setattr(TrainerWidget, "warm_up_on_open", True)
    viewer = make_napari_viewer()
    image, strokes, _ = blobs((48, 48), n=2, radius=5)
    viewer.add_image(image, name="img")
    viewer.add_labels(strokes, name="img labels")
    w = TrainerWidget(viewer)
    configure(w, steps=2)
    assert not w.engine_ready and "Preparing the engine" in w.status.text()
    assert w.train() is None  # pressed while compiling: remembered, not refused
    qtbot.waitUntil(lambda: w.engine_ready, timeout=120_000)
    qtbot.waitUntil(lambda: w.controller.model is not None, timeout=60_000)
    wait_idle(qtbot, w)
    assert w.timings["warm_up"] > 0 and w.controller.model.provenance["steps"] == 2
    w.close_workers()


def test_basic_panel_and_collapsed_sections(viewer_widget):
    """A new user sees the basic controls; the rest waits in collapsed sections."""
    _, w = viewer_widget
    for section in (w.options_section, w.outputs_section, w.model_section):
        assert not section.isExpanded()
    basic = [w.image_combo, w.labels_combo, w.new_labels_btn, w.classes_edit, w.spec_combo,
             w.train_btn, w.stop_btn, w.live_check]
    body = w.train_btn.parentWidget()
    assert all(c.parentWidget() is body for c in basic)
    inputs = (QComboBox, QLineEdit, QPushButton, QCheckBox, QSpinBox, QDoubleSpinBox)
    on_top = [c for c in body.children() if isinstance(c, inputs)]
    assert len(on_top) <= 8, [type(c).__name__ for c in on_top]


def test_outputs_go_under_the_strokes_and_leave_them_selected(viewer_widget, qtbot):
    """After training the strokes layer stays on top and selected (the user keeps painting), the
    objects are only counted when asked, and the class box names the user's classes."""
    viewer, w = viewer_widget
    image, strokes, _ = blobs((24, 24), n=2, radius=3)
    img, lab = add_pair(viewer, image, strokes, classes=("cell", "nucleus"))
    assert [w.class_combo.itemText(i) for i in range(w.class_combo.count())] == ["nucleus"]
    w.count_check.setChecked(False)
    viewer.layers.selection.active = lab
    train_and_wait(qtbot, w)
    names = [ly.name for ly in viewer.layers]
    assert names[0] == "img" and names[-1] == "img labels", names
    assert "img p(nucleus)" in names and "img objects" not in names
    assert viewer.layers.selection.active is lab
    res = w.count()
    assert f"{res.count} object(s) of nucleus" in w.count_label.text()
    assert viewer.layers.selection.active is lab


def test_progress_counts_the_steps_and_continuing_counts_on(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((24, 24), n=2, radius=3)
    add_pair(viewer, image, strokes)
    w.steps_spin.setValue(6)
    assert (w.progress.minimum(), w.progress.maximum(), w.progress.value()) == (0, 6, 0)
    train_and_wait(qtbot, w)
    assert w.loss_plot.steps == list(range(1, 7)) and w.progress.value() == 6
    shift = w.controller.model.provenance["prior_shift"]
    w.steps_spin.setValue(3)
    train_and_wait(qtbot, w)  # continues from the current weights
    assert w.loss_plot.steps == list(range(1, 10))
    assert w.controller.model.provenance["prior_shift"] == shift  # the same image: the correction is kept
    assert (w.progress.maximum(), w.progress.value()) == (9, 9)
    assert w.controller.model.provenance["steps"] == 9
    assert w.controller.model.provenance["recipe"]["steps"] == 3  # what the last run was asked for

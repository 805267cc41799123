"""Superpixel branch, image-level head and superpixel refinement in the controller and the widget."""

from __future__ import annotations

import numpy as np
import pytest
from qt_helpers import add_pair, configure, train_and_wait

from napari_mpf._qt.controller import Controller, TrainSettings, UserError
from napari_mpf._qt.trainer_widget import SMALL_SPEC
from napari_mpf._sample_data import blobs
from napari_mpf.engine import Model, predict_proba, save_model
from napari_mpf.engine.network.heads import add_image_head, add_superpixel_branch
from napari_mpf.engine.network.predict import predict, refine_with_superpixels


def _run(trainer):
    gen = trainer.run()
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# ----------------------------------------------------------------------------- controller, no clicks


def test_controller_heads_image_probability_and_refinement(make_napari_viewer):
    viewer = make_napari_viewer()
    image, strokes, _ = blobs((40, 40), n=3, radius=4)
    img, lab = add_pair(viewer, image, strokes)
    c = Controller(viewer)
    tset = c.gather(img, lab)
    settings = TrainSettings(spec=SMALL_SPEC, steps=4, augment=False, superpixel_branch=True, superpixel_size=50,
                             superpixel_pool="mean", image_head=True, image_head_weight=0.5)
    trainer = c.make_trainer(tset, settings)
    assert trainer.model.superpixels == {"size": 50.0, "compactness": 0.3, "pool": "mean"}
    assert trainer.model.image_head == {"loss_weight": 0.5}
    model = c.adopt(_run(trainer), tset)

    (z, raw, head), = list(c.predict_iter(model, img, [None]))
    assert z is None and head.shape == (1,) and 0 < head[0] < 1
    np.testing.assert_allclose(head, predict(model, image).image_probabilities)
    (_, refined, head2), = list(c.predict_iter(model, img, [None], refine=30))
    np.testing.assert_array_equal(head2, head)  # refinement leaves the image-level output alone
    assert not np.allclose(refined, raw)
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(refined, refine_with_superpixels(model, image, raw, 30), atol=1e-6)

    c.show_probabilities(img, z, refined, tset.class_names, head)
    assert viewer.layers["img p(blob)"].metadata["image_probability_per_slice"] == [pytest.approx(float(head[0]))]
    assert c.image_probability(img, 1) == pytest.approx(float(head[0]))
    c.count(img, 1, 0.5, min_area=5)
    meta = viewer.layers["img objects"].metadata
    assert meta["image_probability"] == pytest.approx(float(head[0]))
    # a model without the head clears it
    c.show_probabilities(img, z, raw, tset.class_names, None)
    assert c.image_probability(img, 1) is None
    c.count(img, 1, 0.5, min_area=5)
    assert "image_probability" not in viewer.layers["img objects"].metadata


def test_controller_continues_only_with_the_same_heads(make_napari_viewer):
    viewer = make_napari_viewer()
    image, strokes, _ = blobs((32, 32), n=2, radius=3)
    img, lab = add_pair(viewer, image, strokes)
    c = Controller(viewer)
    tset = c.gather(img, lab)
    base = dict(spec=SMALL_SPEC, steps=2)
    c.model, continued = c.build_model(tset, TrainSettings(**base, image_head=True))
    assert not continued and c.model.image_head is not None and c.model.superpixels is None
    model, continued = c.build_model(tset, TrainSettings(**base, image_head=True, image_head_weight=2.0))
    assert continued and model.image_head == {"loss_weight": 2.0}  # the loss weight may change
    model, continued = c.build_model(tset, TrainSettings(**base))
    assert not continued and model.image_head is None  # heads differ: a new network
    c.model, _ = c.build_model(tset, TrainSettings(**base, superpixel_branch=True, superpixel_size=60))
    assert c.build_model(tset, TrainSettings(**base, superpixel_branch=True, superpixel_size=60))[1]
    assert not c.build_model(tset, TrainSettings(**base, superpixel_branch=True, superpixel_size=80))[1]
    assert not c.build_model(tset, TrainSettings(**base, superpixel_branch=True, superpixel_size=60, superpixel_pool="mean"))[1]


def test_controller_refuses_heads_it_cannot_use(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    image, strokes, _ = blobs((32, 32), n=2, radius=3)
    img, lab = add_pair(viewer, image, strokes)
    c = Controller(viewer)
    tset = c.gather(img, lab)
    with pytest.raises(UserError, match="Cannot add the image-level head: heads need a network whose last layer is 1x1"):
        c.build_model(tset, TrainSettings(spec="IN12x12, C3x3x4, C3x3x2", image_head=True))
    model, _ = c.build_model(tset, TrainSettings(spec=SMALL_SPEC, superpixel_branch=True, superpixel_size=50))
    with pytest.raises(UserError, match="superpixel branch, which needs whole slices"):
        c.zarr_job(model, img, tmp_path / "out.zarr")
    with pytest.raises(UserError, match="superpixel branch, which needs whole slices"):
        c.lazy_outputs(model, img)


# ----------------------------------------------------------------------------- the widget


def test_train_with_heads_on_the_sample_shows_the_image_probability(viewer_widget, qtbot):
    viewer, w = viewer_widget
    viewer.open_sample("napari-mpf", "surface_defects")
    name = "surface defects"
    w.image_combo.set_layer(viewer.layers[name])
    configure(w, steps=3)
    w.superpixel_check.setChecked(True)
    w.superpixel_size_spin.setValue(300)
    w.superpixel_pool_combo.setCurrentText("mean")
    w.image_head_check.setChecked(True)
    w.image_head_weight_spin.setValue(0.5)
    train_and_wait(qtbot, w)
    model = w.controller.model
    assert model.superpixels == {"size": 300.0, "compactness": 0.3, "pool": "mean"}
    assert model.image_head == {"loss_weight": 0.5}
    prob, seg, obj = (viewer.layers[f"{name} {s}"] for s in ("p(defect)", "segmentation", "objects"))
    assert prob.data.shape == seg.data.shape == obj.data.shape == (256, 256)
    expected = float(predict(model, np.asarray(viewer.layers[name].data, np.float32)).image_probabilities[0])
    assert obj.metadata["image_probability"] == pytest.approx(expected, abs=1e-6)
    assert f"image head p(defect) = {expected:.2f}" in w.count_label.text()
    assert "object(s) of defect — " in w.count_label.text()
    assert "heads: superpixel branch (mean, ~300 px), image-level head (loss weight 0.5)" in w.model_info.toPlainText()


def test_refinement_changes_the_probability_layer(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, centres = blobs((40, 40), n=4, radius=4)
    cy, cx = centres[-1]
    strokes[cy - 1 : cy + 2, cx - 1 : cx + 2] = 3  # three classes: the maps shown do not sum to 1 by themselves
    add_pair(viewer, image, strokes, classes=("background", "round", "odd"))
    train_and_wait(qtbot, w)
    model = w.controller.model
    raw = predict_proba(model, image)
    np.testing.assert_allclose(viewer.layers["img p(round)"].data, raw[1], atol=1e-6)
    w.refine_check.setChecked(True)
    w.refine_size_spin.setValue(30)
    with qtbot.waitSignal(w.prediction_finished, timeout=20_000):
        w.predict_btn.click()
    refined = refine_with_superpixels(model, image, raw, 30)
    shown = np.stack([viewer.layers[f"img p({n})"].data for n in ("round", "odd")])
    np.testing.assert_allclose(shown, refined[1:], atol=1e-6)
    assert not np.allclose(shown, raw[1:])
    assert (shown.sum(0) <= 1 + 1e-5).all()
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(viewer.layers["img segmentation"].data, refined.argmax(0) + 1)
    assert "image head" not in w.count_label.text()


def test_imported_head_model_sets_the_controls_and_predicts(viewer_widget, qtbot, tmp_path):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((40, 40), n=3, radius=4)
    add_pair(viewer, image, strokes)
    model = Model.for_data([image], [strokes], spec=SMALL_SPEC, class_names=["background", "blob"])
    add_superpixel_branch(model, 60, pool="max")
    add_image_head(model, 2.0)
    rng = np.random.default_rng(0)
    for a in (*model.weights, *model.biases):  # some weights, so the head says something
        a[...] = rng.normal(scale=0.3, size=a.shape)
    path = save_model(model, tmp_path / "heads.npz")
    assert w.import_model(path) is not None
    assert w.superpixel_check.isChecked() and w.superpixel_size_spin.value() == 60
    assert w.image_head_check.isChecked() and w.image_head_weight_spin.value() == 2.0
    with qtbot.waitSignal(w.prediction_finished, timeout=20_000):
        w.apply_btn.click()
    expected = predict(model, image)
    np.testing.assert_allclose(viewer.layers["img p(blob)"].data, expected.probabilities[1], atol=1e-6)
    assert f"image head p(blob) = {float(expected.image_probabilities[0]):.2f}" in w.count_label.text()
    # continuing from the imported model keeps its heads
    configure(w, steps=2)
    train_and_wait(qtbot, w)
    assert w.controller.model.superpixels["size"] == 60 and w.controller.model.provenance["steps"] == 2


def test_stack_keeps_one_image_probability_per_slice(make_napari_viewer):
    viewer = make_napari_viewer()
    image, strokes, _ = blobs((32, 32), n=2, radius=3)
    stack = viewer.add_image(np.stack([image, image[::-1], image[:, ::-1]]), name="stack")
    c = Controller(viewer)
    model = Model.for_data([image], [strokes], spec=SMALL_SPEC, class_names=["background", "blob"])
    add_image_head(model)
    model.biases[-1][...] = 1.5
    c.model = model
    results = list(c.predict_iter(model, stack, [0, 2]))
    assert [z for z, _, _ in results] == [0, 2]
    for z, proba, head in results:
        c.show_probabilities(stack, z, proba, model.class_names, head)
    per_slice = viewer.layers["stack p(blob)"].metadata["image_probability_per_slice"]
    assert per_slice[1] is None and per_slice[0] == pytest.approx(float(results[0][2][0]))
    assert c.image_probability(stack, 1, 2) == pytest.approx(float(results[1][2][0]))
    assert c.image_probability(stack, 1, 1) is None
    c.count(stack, 1, 0.5)
    meta = viewer.layers["stack objects"].metadata
    assert meta["image_probability_per_slice"] == per_slice and "image_probability" not in meta


def test_test_time_augmentation_in_predict(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((40, 40), n=4, radius=4)
    add_pair(viewer, image, strokes)
    train_and_wait(qtbot, w)
    model = w.controller.model
    assert not w.tta_check.isChecked() and w.settings().augment is False  # configure() turned training's off
    w.tta_check.setChecked(True)
    assert w.settings().augment is False  # the two "augment" controls are independent
    with qtbot.waitSignal(w.prediction_finished, timeout=20_000):
        w.predict_btn.click()
    augmented = predict_proba(model, image, augment=True)
    shown = viewer.layers["img p(blob)"].data
    np.testing.assert_allclose(shown, augmented[1], atol=1e-6)
    assert not np.allclose(shown, predict_proba(model, image)[1])


def test_training_augmentation_and_test_time_augmentation_are_separate_controls(make_napari_viewer):
    from napari_mpf._qt.trainer_widget import TrainerWidget
    from napari_mpf.engine.network.spec import DEFAULT_PRESET

    w = TrainerWidget(make_napari_viewer())
    assert w.settings().augment is True and not w.tta_check.isChecked()  # the defaults
    assert w.spec_combo.currentText() == DEFAULT_PRESET
    w.tta_check.setChecked(True)
    assert w.settings().augment is True
    w.augment_check.setChecked(False)
    assert w.settings().augment is False and w.tta_check.isChecked()
    w.close_workers()

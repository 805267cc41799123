"""(Z, Y, X) stacks (train on painted slices, preview the current one, predict all) and several images."""

from __future__ import annotations

import numpy as np
from qt_helpers import add_pair, configure, train_and_wait

from napari_mpf._sample_data import blobs


def _stack(n=3, shape=(32, 32)):
    imgs, labs, centres = [], [], []
    for z in range(n):
        img, lab, c = blobs(shape, n=2 + z % 2, radius=3, seed=10 + z)
        imgs.append(img)
        labs.append(lab)
        centres.append(c)
    return np.stack(imgs), np.stack(labs), centres


def test_stack_trains_on_painted_slices_and_predicts_all(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, _ = _stack(3)
    strokes[1] = 0  # slice 1 unpainted
    img, _ = add_pair(viewer, image, strokes, "stack")
    w.image_combo.set_layer(img)
    viewer.dims.set_current_step(0, 2)
    train_and_wait(qtbot, w)
    tset = w.controller.training_set
    assert [z for _, z in tset.origins] == [0, 2]
    assert tset.origins[tset.preview_index] == ("stack", 2)
    prob = viewer.layers["stack p(blob)"]
    assert prob.data.shape == (3, 32, 32)
    assert 2 in prob.metadata["predicted_slices"]
    assert not prob.data[1].any()  # only the shown slice was predicted after training, and it says so
    assert "Predicted slice 2; 'Predict all slices'" in w.status.text()
    with qtbot.waitSignal(w.prediction_finished, timeout=20_000):
        w.predict_btn.click()
    assert prob.metadata["predicted_slices"] == [0, 1, 2]
    assert prob.data[1].any()
    seg = viewer.layers["stack segmentation"]
    assert seg.data.shape == (3, 32, 32) and set(np.unique(seg.data)) <= {1, 2}
    obj = viewer.layers["stack objects"]
    assert obj.data.shape == (3, 32, 32)
    assert len(obj.metadata["counts_per_slice"]) == 3
    assert len(obj.metadata["defect_present_per_slice"]) == 3
    assert "per slice" in w.count_label.text()
    assert set(obj.features["slice"]) <= {0, 1, 2}
    # live mode: moving to another slice predicts it
    prob.data[1] = 0
    w._slice_timer.setInterval(10)
    w.live_check.setChecked(True)
    with qtbot.waitSignal(w.prediction_finished, timeout=20_000):
        viewer.dims.set_current_step(0, 1)
    assert prob.data[1].any()
    w.live_check.setChecked(False)


def test_pairs_train_on_several_images(viewer_widget, qtbot):
    viewer, w = viewer_widget
    a_img, a_lab, _ = blobs((32, 32), n=2, radius=3, seed=1)
    b_img, b_lab, _ = blobs((40, 36), n=3, radius=3, seed=2)
    a, _ = add_pair(viewer, a_img, a_lab, "a")
    add_pair(viewer, b_img, b_lab, "b")
    viewer.add_image(np.zeros((20, 20, 3), np.uint8), name="c", rgb=True)
    viewer.add_labels(np.ones((20, 20), np.uint8), name="c labels")  # RGB: skipped with a note
    viewer.add_image(np.zeros((10, 10), np.float32), name="d")
    viewer.add_labels(np.ones((11, 10), np.uint8), name="d labels")  # wrong shape: skipped
    w.image_combo.set_layer(a)
    w.pairs_check.setChecked(True)
    configure(w, steps=3)
    train_and_wait(qtbot, w)
    tset = w.controller.training_set
    assert sorted(name for name, _ in tset.origins) == ["a", "b"]
    assert len(tset.notes) == 2
    assert any("skipped 'c'" in n and "RGB" in n for n in tset.notes)
    assert any("skipped 'd'" in n and "pixel for pixel" in n for n in tset.notes)
    assert sorted(w.controller.model.provenance["trained_on"]) == ["a", "b"]
    assert "a p(blob)" in viewer.layers and "b p(blob)" not in viewer.layers


def test_rgb_image_trains_with_three_channels(viewer_widget, qtbot):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((32, 32), n=2, radius=3)
    rgb = (np.stack([image, image * 0.5, 1 - image], -1) * 255).astype(np.uint8)
    img = viewer.add_image(rgb, name="rgb", rgb=True)
    viewer.add_labels(strokes, name="rgb labels")
    w.image_combo.set_layer(img)
    train_and_wait(qtbot, w)
    assert w.controller.model.in_channels == 3
    assert viewer.layers["rgb p(foreground)"].data.shape == (32, 32)


def test_count_label_follows_the_slice_shown_for_the_image_head(viewer_widget, qtbot):
    """The image head's p(class) is per slice: moving through the stack updates the label (no recount)."""
    viewer, w = viewer_widget
    image, strokes, _ = _stack(3)
    img, _ = add_pair(viewer, image, strokes, "stack")
    w.image_combo.set_layer(img)
    configure(w, steps=2)
    w.image_head_check.setChecked(True)
    train_and_wait(qtbot, w)
    with qtbot.waitSignal(w.prediction_finished, timeout=20_000):
        w.predict_btn.click()
    per_slice = viewer.layers["stack p(blob)"].metadata["image_probability_per_slice"]
    assert len(per_slice) == 3
    for z in (0, 2, 1):
        viewer.dims.set_current_step(0, z)
        assert f"image head p(blob) = {per_slice[z]:.2f} (slice {z})" in w.count_label.text()
        assert "per slice (* = flagged)" in w.count_label.text()

"""The npe2 manifest, the widget docked through it, the sample data, the model-file reader, the
plain-Python controller (no clicks) and the loss plot."""

from __future__ import annotations

import numpy as np
import pytest
from qt_helpers import add_pair

from napari_mpf._qt.controller import Controller, TrainSettings
from napari_mpf._qt.loss_plot import LossPlot
from napari_mpf._qt.trainer_widget import SMALL_SPEC, TrainerWidget
from napari_mpf._reader import MODEL_SUFFIX, get_reader
from napari_mpf._sample_data import blobs, membrane_sample
from napari_mpf.engine import ModelFileError, save_model


def test_manifest_is_valid():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-mpf")
    pm.validate_imports()
    assert {c.key for c in pm.contributions.sample_data} == {"membrane_em", "surface_defects"}
    assert [w.display_name for w in pm.contributions.widgets] == ["MPF trainer"]
    assert [r.filename_patterns for r in pm.contributions.readers] == [["*" + MODEL_SUFFIX]]
    # napari's "Choose reader" dialog lists readers by plugin name: ours comes before "napari builtins"
    assert sorted([pm.display_name, "napari builtins"])[0] == pm.display_name  # as qt_reader_dialog sorts


def test_widget_docks_through_the_manifest_and_samples_open(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-mpf", "MPF trainer")
    assert isinstance(widget, TrainerWidget)
    viewer.open_sample("napari-mpf", "surface_defects")
    assert [ly.name for ly in viewer.layers] == ["surface defects", "surface defects labels"]
    lab = viewer.layers["surface defects labels"]
    assert set(np.unique(lab.data)) == {0, 1, 2}
    assert list(lab.features["class"]) == ["unpainted", "background", "defect"]
    assert widget.image_combo.layer() is viewer.layers["surface defects"]
    assert widget.labels_combo.layer() is lab
    assert widget.classes_edit.text() == "background, defect"


def test_samples_are_deterministic_and_small():
    a, b = membrane_sample(), membrane_sample()
    for (da, _, ta), (db, _, tb) in zip(a, b, strict=True):
        assert ta == tb and da.shape == (256, 256)
        np.testing.assert_array_equal(da, db)
    labels = a[1][0]
    assert labels.dtype == np.uint8 and 100 < np.count_nonzero(labels) < 5000


def test_reader_opens_model_files_only(make_napari_viewer, tmp_path):
    from napari.plugins import _npe2

    viewer = make_napari_viewer()
    image, strokes, _ = blobs((24, 24), n=2, radius=3)
    img, lab = add_pair(viewer, image, strokes)
    c = Controller(viewer)
    tset = c.gather(img, lab)
    model, _ = c.build_model(tset, TrainSettings(spec=SMALL_SPEC))
    path = save_model(model, tmp_path / "m.mpf.npz")
    old = save_model(model, tmp_path / "old.npz")  # a model saved before the .mpf.npz suffix
    other = tmp_path / "data.npz"
    np.savez(other, image=image)
    # napari's plugin machinery offers our reader for the model suffix only
    assert "napari-mpf" in _npe2.get_readers(str(path))
    assert "napari-mpf" in _npe2.get_readers(str(tmp_path / "M.MPF.NPZ"))
    assert "napari-mpf" not in _npe2.get_readers(str(other))
    assert "napari-mpf" not in _npe2.get_readers(str(old))
    assert get_reader(str(other)) is None
    assert get_reader(str(tmp_path / "m.tif")) is None
    assert get_reader(str(path)) is not None and get_reader(str(old)) is None
    viewer.open(str(path), plugin="napari-mpf")
    widget = viewer.window.dock_widgets["MPF trainer (napari-mpf)"]
    assert widget.controller.model is not None
    assert widget.controller.model.spec.text == model.spec.text
    assert len(viewer.layers) == 2  # a model file adds no layer
    widget.controller.model = None
    assert widget.import_model(old) is not None  # a model saved as plain .npz loads through Import


def test_reader_refuses_a_broken_model_file_with_the_reason(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = tmp_path / "data.mpf.npz"  # the model suffix, but an image inside
    np.savez(data, image=np.zeros((4, 4)))
    corrupt = tmp_path / "corrupt.mpf.npz"
    corrupt.write_bytes(b"not a zip archive")
    for path, reason in [(data, "not a napari-mpf model file (no 'header' entry)"),
                         (corrupt, "not a napari-mpf model file (not an .npz archive)")]:
        assert get_reader(str(path)) is not None  # claimed, so the refusal says why
        with pytest.raises(ModelFileError) as info:
            viewer.open(str(path), plugin="napari-mpf")
        assert str(info.value) == f"{reason}: {path}"
    assert not viewer.layers and "MPF trainer (napari-mpf)" not in viewer.window.dock_widgets


def test_widget_exports_with_the_model_suffix(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mpf", "MPF trainer")
    image, strokes, _ = blobs((24, 24), n=2, radius=3)
    img, lab = add_pair(viewer, image, strokes)
    model, _ = widget.controller.build_model(widget.controller.gather(img, lab), TrainSettings(spec=SMALL_SPEC))
    widget.controller.model = model
    assert widget.export_model(tmp_path / "a") == tmp_path / "a.mpf.npz"
    assert widget.export_model(tmp_path / "b.npz") == tmp_path / "b.npz"  # an explicit .npz is kept
    assert widget.import_model(tmp_path / "b.npz") is not None


def test_controller_trains_and_writes_layers_without_clicks(make_napari_viewer):
    viewer = make_napari_viewer()
    image, strokes, centres = blobs((40, 40), n=3, radius=4)
    img, lab = add_pair(viewer, image, strokes)
    c = Controller(viewer)
    tset = c.gather(img, lab)
    trainer = c.make_trainer(tset, TrainSettings(spec=SMALL_SPEC, steps=40, preview_every=20, augment=False, lr=0.02))
    previews = 0
    gen = trainer.run()
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            model = stop.value
            break
        if p.probabilities is not None:
            previews += 1
            c.show_probabilities(img, None, p.probabilities, tset.class_names)
    assert previews == 2
    c.adopt(model, tset)
    (z, proba, image_proba), = list(c.predict_iter(c.model, img, [None]))
    assert image_proba is None  # no image-level head
    c.show_probabilities(img, z, proba, tset.class_names)
    c.show_segmentation(img, z, proba, tset.class_names)
    res = c.count(img, 1, 0.5, min_area=5)
    assert res.count == len(centres)
    assert {"img p(blob)", "img segmentation", "img objects"} <= {ly.name for ly in viewer.layers}


def test_loss_plot_paints(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(200, 80)
    plot.grab()  # empty
    for i in range(1, 300):
        plot.add(i, 1.0 / i)
    plot.add(300, float("nan"))  # ignored
    assert len(plot.losses) == 299
    img = plot.grab().toImage()
    assert img.width() == 200
    plot.clear()
    assert not plot.losses

"""Input filters in the controller and the widget: a new network gets them, continuing needs the
same ones, an imported model sets the control."""

from __future__ import annotations

import numpy as np
from qt_helpers import add_pair, configure, train_and_wait

from napari_mpf._qt.controller import Controller, TrainSettings
from napari_mpf._qt.trainer_widget import SMALL_SPEC
from napari_mpf._sample_data import blobs
from napari_mpf.engine import Model, predict_proba, save_model
from napari_mpf.engine.network.features import check_filters


def test_controller_builds_and_continues_with_the_same_filters(make_napari_viewer):
    viewer = make_napari_viewer()
    image, strokes, _ = blobs((32, 32), n=2, radius=3)
    img, lab = add_pair(viewer, image, strokes)
    c = Controller(viewer)
    tset = c.gather(img, lab)
    c.model, continued = c.build_model(tset, TrainSettings(spec=SMALL_SPEC, filters="multiscale"))
    assert not continued and c.model.filters == check_filters("multiscale")
    assert c.model.weights[0].shape[1] == 19
    assert c.build_model(tset, TrainSettings(spec=SMALL_SPEC, filters="multiscale"))[1]
    model, continued = c.build_model(tset, TrainSettings(spec=SMALL_SPEC))
    assert not continued and model.filters is None  # other filters: a new network


def test_widget_trains_with_filters_and_shows_them(viewer_widget, qtbot, tmp_path):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((40, 40), n=3, radius=4)
    add_pair(viewer, image, strokes)
    configure(w, steps=2)
    w.spec_combo.setCurrentText(SMALL_SPEC)
    w.filters_combo.setCurrentText("multiscale")
    assert "parameters" in w.spec_info.text()
    train_and_wait(qtbot, w)
    model = w.controller.model
    assert model.filters == check_filters("multiscale")
    np.testing.assert_allclose(viewer.layers["img p(blob)"].data, predict_proba(model, image)[1], atol=1e-6)
    assert "input filters (multiscale)" in w.model_info.toPlainText()

    # an imported model without filters sets the control back; a custom bank is shown as such
    plain = Model.for_data([image], [strokes], spec=SMALL_SPEC, class_names=["background", "blob"])
    assert w.import_model(save_model(plain, tmp_path / "plain.npz")) is not None
    assert w.filters_combo.currentText() == "none"
    custom = Model.for_data([image], [strokes], spec=SMALL_SPEC, class_names=["background", "blob"],
                            filters={"smooth": [3.0]})
    assert w.import_model(save_model(custom, tmp_path / "custom.npz")) is not None
    assert w.filters_combo.currentText() == "custom"
    assert w.settings().filters == {"smooth": [3.0], "gradient": [], "hessian": []}

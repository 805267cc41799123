"""Auto-context in the controller and the widget: a second stage trains after the first, continuing
keeps both stages, an imported two-stage model sets the controls."""

from __future__ import annotations

import numpy as np
from qt_helpers import add_pair, configure, train_and_wait

from napari_mpf._qt.controller import Controller, TrainSettings
from napari_mpf._qt.trainer_widget import SMALL_SPEC
from napari_mpf._sample_data import blobs
from napari_mpf.engine import Model, TrainConfig, Trainer, predict_proba, save_model


def test_controller_continues_a_two_stage_model_only_with_the_same_stages(make_napari_viewer):
    viewer = make_napari_viewer()
    image, strokes, _ = blobs((32, 32), n=2, radius=3)
    img, lab = add_pair(viewer, image, strokes)
    c = Controller(viewer)
    tset = c.gather(img, lab)
    settings = TrainSettings(spec=SMALL_SPEC, context="fast", steps=4)
    trainer = c.make_trainer(tset, settings)
    assert trainer.config.context == "fast"  # a new network: two stages
    for _ in trainer.run():
        pass
    c.model = trainer.model
    assert c.model.context is not None and c.model.context.spec.text.startswith("C3x3")
    assert c.model_fits(c.model, tset, settings)
    assert c.make_trainer(tset, settings).config.context is None  # continuing trains the second stage
    assert not c.model_fits(c.model, tset, TrainSettings(spec=SMALL_SPEC))
    assert not c.model_fits(c.model, tset, TrainSettings(spec=SMALL_SPEC, context="wide"))


def test_widget_trains_two_stages_and_shows_them(viewer_widget, qtbot, tmp_path):
    viewer, w = viewer_widget
    image, strokes, _ = blobs((40, 40), n=3, radius=4)
    add_pair(viewer, image, strokes)
    configure(w, steps=4)
    w.spec_combo.setCurrentText(SMALL_SPEC)
    w.context_combo.setCurrentText("fast")
    train_and_wait(qtbot, w)
    model = w.controller.model
    assert model.context is not None
    np.testing.assert_allclose(viewer.layers["img p(blob)"].data, predict_proba(model, image)[1], atol=1e-6)
    assert "auto-context" in w.model_info.toPlainText()
    # the network line counts both stages: the second reads the first's outputs over its own window
    params = model.n_params + model.context.n_params
    assert w.spec_info.text() == f"two stages: window 31×31 · {params:,} parameters"  # 8 + 24 - 1
    w.context_combo.setCurrentText("none")
    assert w.spec_info.text() == f"window 8×8 · {model.context.n_params:,} parameters"
    w.context_combo.setCurrentText("fast")

    # an imported one-stage model sets the control back; a two-stage one names both stages
    plain = Model.for_data([image], [strokes], spec=SMALL_SPEC, class_names=["background", "blob"])
    assert w.import_model(save_model(plain, tmp_path / "plain.npz")) is not None
    assert w.context_combo.currentText() == "none"
    first = Model.for_data([image], [strokes], spec="fast", class_names=["background", "blob"])
    two = Trainer(first, [image], [strokes], TrainConfig(steps=2, context="wide"))
    for _ in two.run():
        pass
    assert w.import_model(save_model(two.model, tmp_path / "two.npz")) is not None
    assert (w.spec_combo.currentText(), w.context_combo.currentText()) == ("fast", "wide")

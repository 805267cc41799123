"""Helpers for the widget tests (kept out of conftest.py so test modules can import them)."""

from __future__ import annotations

import numpy as np

from napari_mpf._qt.trainer_widget import SMALL_SPEC, TrainerWidget


def configure(widget: TrainerWidget, steps: int = 4) -> None:
    widget.spec_combo.setCurrentText(SMALL_SPEC)
    widget.steps_spin.setValue(steps)
    widget.preview_spin.setValue(2)
    widget.augment_check.setChecked(False)
    widget.min_area_spin.setValue(5)
    widget.count_check.setChecked(True)


def wait_idle(qtbot, widget: TrainerWidget, timeout: int = 30_000) -> None:
    """Wait until no training or prediction worker is running."""
    qtbot.waitUntil(lambda: widget._train_worker is None and widget._predict_worker is None, timeout=timeout)


def train_and_wait(qtbot, widget: TrainerWidget, timeout: int = 30_000, **kwargs):
    """Start training inside ``waitSignal`` and wait for it and the prediction that follows."""
    with qtbot.waitSignal(widget.training_finished, timeout=timeout):
        worker = widget.train(**kwargs)
        assert worker is not None, widget.messages[-1:]
    wait_idle(qtbot, widget, timeout)
    return worker


def add_pair(viewer, image: np.ndarray, strokes: np.ndarray, name: str = "img", classes=("background", "blob")):
    from napari_mpf._layer_style import class_features

    img = viewer.add_image(image, name=name)
    lab = viewer.add_labels(strokes, name=f"{name} labels", features=class_features(list(classes)))
    return img, lab

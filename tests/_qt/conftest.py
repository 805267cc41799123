"""Fixtures for the widget tests: a viewer with the trainer docked, tiny data, waiting helpers."""

from __future__ import annotations

import pytest
from qt_helpers import configure

from napari_mpf._qt.trainer_widget import TrainerWidget


@pytest.fixture
def notes(monkeypatch):
    """Capture the napari notifications the widget sends: list of (level, text)."""
    import napari_mpf._qt.trainer_widget as tw

    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(tw, "show_error", lambda msg: sent.append(("error", str(msg))))
    monkeypatch.setattr(tw, "show_warning", lambda msg: sent.append(("warning", str(msg))))
    monkeypatch.setattr(tw, "show_info", lambda msg: sent.append(("info", str(msg))))
    return sent


@pytest.fixture
def viewer_widget(make_napari_viewer, qtbot, notes):
    """A viewer with the trainer docked, set to the small spec and a few steps."""
    viewer = make_napari_viewer()
    widget = TrainerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MPF trainer")
    configure(widget)
    yield viewer, widget
    widget.close_workers()
    qtbot.wait(10)

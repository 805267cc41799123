"""Fixtures for the widget tests: a viewer with the trainer docked, tiny data, waiting helpers."""

from __future__ import annotations

import pytest
from qt_helpers import configure

from napari_mpf._qt.trainer_widget import TrainerWidget


@pytest.fixture(autouse=True)
def no_warm_up(monkeypatch):
    """Widgets open without compiling ahead (the session fixture below compiled the small spec);
    test_warm_up turns it back on."""
    monkeypatch.setattr(TrainerWidget, "warm_up_on_open", False)


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


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    """Compile the kernels of the small spec once, by the widget's own warm-up path, before any
    widget test waits for a signal with a timeout: on a clean checkout Numba compiles them cold,
    which took over 30 s on a busy 2-core machine and timed a test out."""
    from napari_mpf._qt.trainer_widget import SMALL_SPEC
    from napari_mpf.engine.training.warmup import warm_up

    warm_up(SMALL_SPEC)

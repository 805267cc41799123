"""The widget's job slots: one job per slot, stop by slot or by layer (with the job's own stop event)."""

from __future__ import annotations

import threading
import time

import pytest

from napari_mpf._qt.jobs import Jobs


def _until_stopped(stop: threading.Event):
    while not stop.is_set():
        time.sleep(0.01)
        yield 1


def test_one_job_per_slot_stop_by_layer_and_wait(qtbot):
    jobs, layer, stop = Jobs(), object(), threading.Event()
    done, items = [], []
    jobs.start("predict", _until_stopped, stop, on_item=items.append, on_done=lambda: done.append(jobs.running()),
               layer=layer, stop=stop)
    assert jobs.running("predict") and not jobs.running("train")
    with pytest.raises(RuntimeError, match="already running"):
        jobs.start("predict", _until_stopped, stop)
    qtbot.waitUntil(lambda: bool(items), timeout=5000)
    jobs.stop_for_layer(object())  # another layer: nothing stops
    assert not stop.is_set()
    with qtbot.waitSignal(jobs.get("predict").finished, timeout=5000):
        jobs.stop_for_layer(layer)
    assert stop.is_set() and done == [False]  # the slot was free when on_done ran
    assert jobs.aborted("predict") and jobs.get("predict") is None
    jobs.wait(1000)


def test_returned_value_and_errors_reach_their_handlers(qtbot):
    jobs, got = Jobs(), []

    def fail():
        raise ValueError("bad input")

    jobs.start("warm_up", lambda: 42, on_return=got.append)
    qtbot.waitUntil(lambda: not jobs.running(), timeout=5000)
    with qtbot.capture_exceptions():  # the worker also re-raises it in the Qt event loop
        jobs.start("train", fail, on_error=lambda exc: got.append(str(exc)))
        qtbot.waitUntil(lambda: not jobs.running(), timeout=5000)
    assert got == [42, "bad input"]

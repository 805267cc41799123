"""The widget's background jobs: one napari thread worker per slot, started, stopped and awaited alike.

Training (the engine's ``Trainer.run()`` generator), prediction (``Controller.predict_iter``),
"Predict to zarr" (``ZarrPrediction.iter_run``) and the engine's warm-up all run through
:meth:`Jobs.start`: the handlers run in the GUI thread; the slot is free again before ``on_done``
runs, so that a handler may start the next job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from napari.qt.threading import WorkerBase, create_worker

__all__ = ["Jobs"]


class Jobs:
    """Running workers by slot (``"train"``, ``"predict"``, ``"warm_up"``)."""

    def __init__(self) -> None:
        self._running: dict[str, WorkerBase] = {}
        self._closed = False  # the widget is gone: no ``on_done`` any more

    def start(self, slot: str, fn: Callable, *args, on_item: Callable | None = None,
              on_return: Callable | None = None, on_error: Callable | None = None,
              on_done: Callable | None = None, layer=None, stop: threading.Event | None = None) -> WorkerBase:
        """Run ``fn(*args)`` (a generator yields items to ``on_item``) in a worker in ``slot``.
        ``layer`` is the image the job works on (removing it stops the job); ``stop`` is an event
        the job itself watches (set by :meth:`stop` too, for work that yields seldom)."""
        if self.running(slot):
            raise RuntimeError(f"a {slot} job is already running")
        worker = create_worker(fn, *args, _start_thread=False)
        worker.layer, worker.stop_event = layer, stop
        if on_item is not None:
            worker.yielded.connect(on_item)
        if on_return is not None:
            worker.returned.connect(on_return)
        if on_error is not None:
            worker.errored.connect(on_error)

        def finished() -> None:
            if self._running.get(slot) is worker:
                del self._running[slot]
            if on_done is not None and not self._closed:
                on_done()

        worker.finished.connect(finished)
        self._running[slot] = worker
        worker.start()
        return worker

    def get(self, slot: str) -> WorkerBase | None:
        return self._running.get(slot)

    def running(self, *slots: str) -> bool:
        """Whether a job runs in any of ``slots`` (any slot when none is given)."""
        return any(s in self._running for s in slots) if slots else bool(self._running)

    def aborted(self, slot: str) -> bool:
        """Whether the job in ``slot`` was asked to stop (or is gone)."""
        worker = self._running.get(slot)
        return worker is None or worker.abort_requested

    def stop(self, *slots: str) -> None:
        """Ask the jobs in ``slots`` (all when none is given) to stop between two items."""
        for slot in slots or tuple(self._running):
            worker = self._running.get(slot)
            if worker is not None:
                worker.quit()
                if worker.stop_event is not None:
                    worker.stop_event.set()

    def stop_for_layer(self, layer) -> None:
        """Stop the jobs working on ``layer`` (it was removed)."""
        for slot, worker in list(self._running.items()):
            if worker.layer is layer:
                self.stop(slot)

    def stop_all(self, *_) -> None:
        """Stop every job for good (the widget was destroyed): their ``on_done`` will not run."""
        self._closed = True
        self.stop()

    @staticmethod
    def wait(timeout_ms: int) -> None:
        """Wait for every worker to end (raises if they do not within ``timeout_ms``)."""
        WorkerBase.await_workers(timeout_ms)

"""Running a whole volume into a zarr store: :class:`ZarrPrediction` writes a volume
(:class:`~napari_mpf.engine.io.volume.Volume`: a TIFF stack, zarr store, folder of images or an
in-memory array) into a zarr store chunk by chunk, as a dask graph of independent tasks (one
per output chunk, each reading its own region with the halo from the source) that runs on dask's
local scheduler or on a ``dask.distributed`` cluster, with progress, stop and resume (finished
chunks are skipped when the run is restarted), plus per-slice object counts
(:mod:`napari_mpf.engine.post.objects`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.volume import ArrayVolume, Volume
from ..network.inputs import InputError
from ..network.model import Model
from .counts import CountSettings, write_counts_csv
from .layouts import LabelsLayout, PlainLayout, layout_for
from .lazy import normalise_chunks
from .region import threads_per_task
from .store import FORMAT, PROB_DTYPES, VERSION, model_token, run_chunk, run_count

__all__ = ["RunProgress", "ZarrPrediction"]

@dataclass
class RunProgress:
    """Progress of a :class:`ZarrPrediction` run: tasks (chunks + slice counts) done of ``total``."""

    done: int
    total: int
    elapsed: float
    skipped: int = 0
    chunks_done: int = 0
    chunks_total: int = 0


class ZarrPrediction:
    """Predict a whole volume into a zarr store, chunk by chunk, resumably.

    ``volume``: a :class:`~napari_mpf.engine.io.volume.Volume` (see :func:`~napari_mpf.engine.io.volume.open_volume`)
    or an array (wrapped in :class:`~napari_mpf.engine.io.volume.ArrayVolume`). ``chunks``: output tile
    ``(rows, cols)`` (default 1024; clipped to the image). ``prob_dtype``: ``"uint8"`` (default),
    ``"float16"`` or ``"float32"``. ``counts``: per-slice object counts, or None. With an existing
    store from the same model, source, chunks and encoding, finished chunks are skipped (resume);
    anything else is refused unless ``overwrite``. A path ending in ``.ome.zarr`` gets an OME-Zarr
    image with ``levels`` pyramid levels (default: down to about 256 pixels; :mod:`.layouts`).
    """

    def __init__(self, model: Model, volume, path: str | Path, chunks=1024, prob_dtype: str = "uint8",
                 counts: CountSettings | None = None, overwrite: bool = False, levels: int | None = None):
        if prob_dtype not in PROB_DTYPES:
            raise InputError(f"prob_dtype must be one of {', '.join(PROB_DTYPES)}, got {prob_dtype!r}")
        if not isinstance(volume, Volume):
            volume = ArrayVolume(volume)
        if volume.channels != model.in_channels and not (volume.channels == 4 and model.in_channels == 3):
            raise InputError(f"{volume.name} has {volume.channels} channel(s) but the model expects {model.in_channels}")
        if counts is not None and not 0 <= counts.class_index < model.n_classes:
            raise InputError(f"count class {counts.class_index + 1} is not one of the model's {model.n_classes} classes")
        self.model = model
        self.volume = volume
        self.path = str(path)
        cy, cx = normalise_chunks(chunks, (volume.height, volume.width))
        self.chunks = (max(1, min(int(cy), volume.height)), max(1, min(int(cx), volume.width)))
        self.prob_dtype = prob_dtype
        self.counts = counts
        self.grid = (-(-volume.height // self.chunks[0]), -(-volume.width // self.chunks[1]))
        self.layout = layout_for(self.path, volume, self.chunks, levels)
        self.signature = {
            "model": model_token(model),
            "source": volume.source_id,
            "slices": [int(i) for i in volume.indices],
            "origin": [int(v) for v in volume.origin],
            "shape": list(volume.shape),
            "dtype": str(volume.dtype),
            "chunks": list(self.chunks),
            "prob_dtype": prob_dtype,
        }
        if not isinstance(self.layout, PlainLayout):  # (plain stores keep their signature: old stores resume)
            self.signature.update(layout=self.layout.kind, levels=self.layout.levels)
        if counts is not None and isinstance(self.layout, LabelsLayout):
            raise InputError("counting objects reads the probabilities, which a label image of the input does not keep; "
                             "write a separate .ome.zarr store to count")
        self._prepare(overwrite)

    # -- store
    def _prepare(self, overwrite: bool) -> None:
        import zarr

        p = Path(self.path)
        z, _, h, w = self.volume.shape
        k = self.model.n_classes
        ny, nx = self.grid
        existing = None
        if p.exists():
            if not p.is_dir():
                raise InputError(f"output {p} exists and is not a zarr store (a directory)")
            try:
                existing = zarr.open_group(str(p), mode="r").attrs.get("napari_mpf")
            except Exception:  # noqa: BLE001 - not a zarr group
                existing = None
            if existing is None and isinstance(self.layout, LabelsLayout):
                raise InputError(f"{p} holds a label image not written by napari-mpf; choose another name in labels/")
            if existing is None and any(p.iterdir()) and not overwrite:
                raise InputError(f"output {p} exists and is not a napari-mpf prediction store; choose another path or pass --overwrite")
        self.resumed = False
        if existing is not None and not overwrite:
            if existing.get("signature") != self.signature:
                old = existing.get("signature", {})
                diff = [k_ for k_ in self.signature if old.get(k_) != self.signature[k_]]
                raise InputError(
                    f"output {p} holds a prediction with a different {', '.join(diff) or 'setup'}; "
                    "start again with --overwrite (in Python: overwrite=True), or choose another path"
                )
            self.resumed = True
            g = zarr.open_group(str(p), mode="r+")
        else:
            g = zarr.open_group(str(p), mode="w", zarr_format=getattr(self.layout, "zarr_format", 3))
            seg_dtype = np.uint8 if k < 255 else np.uint16
            prob_dtype = PROB_DTYPES[self.prob_dtype][0]
            self.layout.create(g, (z, k, h, w), self.chunks, prob_dtype, seg_dtype, self.volume, self.model.class_names)
            self._books(g).create_array("class_pixels", shape=(z, ny, nx, k), chunks=(1, 1, 1, k), dtype=np.int64, fill_value=-1)
            g.attrs["napari_mpf"] = {
                "format": FORMAT,
                "version": VERSION,
                "signature": self.signature,
                "class_names": list(self.model.class_names),
                "model": self.model.describe(),
                "stack": self.volume.stack,
                "slice_names": list(self.volume.names),
                "probability_encoding": self.prob_dtype,
                "probability_scale": PROB_DTYPES[self.prob_dtype][1],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "run_id": uuid.uuid4().hex,
            }
        if self.counts is not None:
            want = self.counts.as_dict()
            have = None
            books = self._books(g)
            if "counts" in books:
                have = dict(books["counts"].attrs.get("settings", {}))
            if have != want:
                arr = books.create_array("counts", shape=(z, 3), chunks=(1, 3), dtype=np.int64, fill_value=-1, overwrite=True)
                arr.attrs["settings"] = want
                arr.attrs["columns"] = ["count", "object_pixels", "defect_present"]
        self.run_id = str(g.attrs["napari_mpf"].get("run_id", ""))

    def _books(self, g):
        """The group of the bookkeeping arrays (``class_pixels``, ``counts``)."""
        prefix = self.layout.prefix.strip("/")
        if not prefix:
            return g
        return g.require_group(prefix) if not g.read_only else g[prefix]

    def pending(self) -> tuple[list[tuple[int, int, int]], list[int]]:
        """``(chunks (z, iy, ix) still to predict, slices still to count)``."""
        import zarr

        books = self._books(zarr.open_group(self.path, mode="r"))
        marks = np.asarray(books["class_pixels"][..., 0])
        todo = [tuple(int(v) for v in idx) for idx in np.argwhere(marks < 0)]
        uncounted: list[int] = []
        if self.counts is not None:
            counted = np.asarray(books["counts"][:, 0]) >= 0
            uncounted = [int(z) for z in np.flatnonzero(~counted)]
        return todo, uncounted

    def _box(self, iy: int, ix: int) -> tuple[int, int, int, int]:
        cy, cx = self.chunks
        return iy * cy, min((iy + 1) * cy, self.volume.height), ix * cx, min((ix + 1) * cx, self.volume.width)

    # -- graph
    def tasks(self, n_threads: int | None = None):
        """The dask graph of what is left: ``(delayed tasks, chunks to do, chunks skipped)``;
        ``n_threads``: Numba threads per task (None: Numba's setting)."""
        import dask

        todo, uncounted = self.pending()
        total_chunks = self.volume.n_slices * self.grid[0] * self.grid[1]
        token = uuid.uuid4().hex[:8]
        model = dask.delayed(self.model, name=f"mpf-model-{token}", traverse=False)
        volume = dask.delayed(self.volume, name=f"mpf-volume-{token}", traverse=False)
        chunk_fn = dask.delayed(run_chunk, pure=False)
        by_slice: dict[int, list] = {}
        tasks = []
        for z, iy, ix in todo:
            t = chunk_fn(model, volume, self.layout, self.path, self.run_id, z, iy, ix, self._box(iy, ix), self.prob_dtype, n_threads,
                         dask_key_name=f"mpf-chunk-{token}-{z}-{iy}-{ix}")
            by_slice.setdefault(z, []).append(t)
            tasks.append(t)
        if self.counts is not None:
            count_fn = dask.delayed(run_count, pure=False)
            settings = self.counts.as_dict()
            for z in uncounted:
                tasks.append(count_fn(self.layout, self.path, self.run_id, z, self.prob_dtype, settings, *by_slice.get(z, []),
                                      dask_key_name=f"mpf-count-{token}-{z}"))
        return tasks, len(todo), total_chunks - len(todo)

    # -- running
    def run(self, scheduler="threads", num_workers: int | None = None, progress: Callable[[RunProgress], None] | None = None,
            stop: threading.Event | None = None) -> RunProgress:
        """Run what is left; returns the final :class:`RunProgress`.

        ``scheduler``: ``"threads"`` or ``"sync"`` (dask's local schedulers) or a
        ``dask.distributed.Client``. ``progress`` is called after every finished task; setting
        ``stop`` ends the run early (tasks already running finish and are kept; the next run resumes).
        """
        local_threads = isinstance(scheduler, str) and scheduler == "threads"
        tasks, n_chunks, skipped = self.tasks(threads_per_task(num_workers) if local_threads else None)
        total = len(tasks)
        chunks_total = n_chunks + skipped
        state = RunProgress(0, total, 0.0, skipped, skipped, chunks_total)
        t0 = time.perf_counter()

        def note(kind: str) -> None:
            state.done += 1
            if kind == "chunk":
                state.chunks_done += 1
            state.elapsed = time.perf_counter() - t0
            if progress is not None:
                progress(state)

        if not tasks:
            state.elapsed = time.perf_counter() - t0
            return state
        if isinstance(scheduler, str):
            self._run_local(tasks, scheduler, num_workers, note, stop)
        else:
            self._run_distributed(tasks, scheduler, note, stop)
        state.elapsed = time.perf_counter() - t0
        return state

    @staticmethod
    def _run_local(tasks, scheduler: str, num_workers, note, stop) -> None:
        import dask
        from dask.callbacks import Callback

        class _Stopped(Exception):
            pass

        def posttask(key, result, dsk, state, worker_id):
            if isinstance(result, tuple) and result and result[0] in ("chunk", "count"):
                note(result[0])
            if stop is not None and stop.is_set():
                raise _Stopped

        kwargs = {"scheduler": scheduler}
        if num_workers is not None and scheduler == "threads":
            kwargs["num_workers"] = int(num_workers)
        try:
            with Callback(posttask=posttask):
                dask.compute(*tasks, **kwargs)
        except _Stopped:
            pass

    @staticmethod
    def _run_distributed(tasks, client, note, stop) -> None:
        from distributed import as_completed

        futures = client.compute(tasks)
        finished = as_completed(futures)
        try:
            while not finished.is_empty():
                if stop is not None and stop.is_set():
                    break  # polled, so a stop works even if no task finishes any more
                batch = finished.next_batch(block=False)
                if not batch:
                    time.sleep(0.05)
                    continue
                for fut in batch:
                    try:
                        result = fut.result()
                    except Exception:
                        if stop is not None and stop.is_set():
                            break  # e.g. a worker stopped by the same Ctrl-C: what finished is kept
                        raise
                    note(result[0])
        finally:
            client.cancel([f for f in futures if not f.done()])

    def iter_run(self, scheduler="threads", num_workers: int | None = None,
                 stop: threading.Event | None = None) -> Iterator[RunProgress]:
        """:meth:`run` in a background thread as a generator of progress (for GUI workers).

        Setting ``stop`` or closing the generator stops the run after the running tasks.
        """
        import queue

        q: queue.Queue = queue.Queue()
        stop = stop if stop is not None else threading.Event()
        outcome: dict = {}

        def target():
            try:
                outcome["final"] = self.run(scheduler, num_workers, lambda p: q.put(RunProgress(**vars(p))), stop)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                outcome["error"] = exc
            finally:
                q.put(None)

        thread = threading.Thread(target=target, name="mpf-zarr-prediction", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                yield item
        finally:
            stop.set()
            thread.join()
        if "error" in outcome:
            raise outcome["error"]

    # -- results
    def complete(self) -> bool:
        todo, uncounted = self.pending()
        return not todo and not uncounted

    def summary(self) -> dict:
        """Class pixel totals over finished chunks, and the per-slice counts (if counted)."""
        import zarr

        books = self._books(zarr.open_group(self.path, mode="r"))
        cp = np.asarray(books["class_pixels"][...])
        finished = cp[..., 0] >= 0
        per_slice = np.where(finished[..., None], cp, 0).sum(axis=(1, 2))
        out = {"class_pixels": per_slice, "finished_chunks": int(finished.sum()), "total_chunks": int(finished.size)}
        if self.counts is not None and "counts" in books:
            out["counts"] = np.asarray(books["counts"][...])
        return out

    def write_csv(self, path: str | Path) -> Path:
        """Per-slice table: slice, name, objects, object pixels, defect present, fraction of each class."""
        info = self.summary()
        counts = info.get("counts")
        area = self.volume.height * self.volume.width
        rows = []
        for z in range(self.volume.n_slices):
            c = None if counts is None else tuple(int(v) for v in counts[z])
            rows.append((z, self.volume.names[z], c, info["class_pixels"][z] / area))
        return write_counts_csv(path, list(self.model.class_names), rows, with_counts=counts is not None)

"""Chunked, lazy and distributed prediction with dask, exactly equal to whole-image prediction.

Output pixel ``(y, x)`` of an image depends on the window ``padded[:, y:y+wh, x:x+ww]`` of the image
mirror-padded (NumPy ``mode="reflect"``: the edge pixel is not repeated) by ``wh // 2`` rows before
and ``wh - 1 - wh // 2`` after (columns likewise). A chunk of outputs ``[y0, y1) x [x0, x1)``
therefore needs rows ``[y0 - wh // 2, y1 + wh - 1 - wh // 2)`` of the *mirror-extended whole image*:
real neighbouring pixels inside the image, mirrored pixels only beyond its true border. Evaluated
from that region, every output pixel goes through the same arithmetic as in
:func:`~napari_mpf.engine.network.predict.predict_proba`, so the results agree to float rounding (in
practice bit for bit) whatever the chunking, including chunks smaller than the window.

Three ways to use it:

- :func:`predict_dask`: a lazy dask array of probabilities (or labels) for a dask/NumPy/zarr array of
  2-D images or a stack of them (``dask.array.map_overlap`` with a halo of the window's half-size and
  ``boundary="none"``; the mirror padding at the true border is done inside the block, because
  dask's ``"reflect"`` boundary repeats the edge pixel, NumPy's ``"symmetric"``).
- :func:`predict_region`: the building block, one region of one image, from a reader function.
- :class:`ZarrPrediction`: a whole volume (:class:`~napari_mpf.engine.io.files.Volume`: a TIFF stack,
  zarr store, folder of images or an in-memory array) written to a zarr store chunk by chunk, as a
  dask graph of independent tasks (one per output chunk, each reading its own region with the halo
  from the source) that runs on dask's local scheduler or on a ``dask.distributed`` cluster, with
  progress, stop and resume (finished chunks are skipped when the run is restarted), plus per-slice
  object counts (:mod:`napari_mpf.engine.post.objects`).

Output store layout (zarr v3 group): ``probabilities`` ``(Z, K, H, W)`` (uint8 = round(255 p),
float16 or float32), ``segmentation`` ``(Z, H, W)`` uint8 labels 1..K, ``class_pixels``
``(Z, ny, nx, K)`` int64 pixels per class of every output chunk (-1 = chunk not finished: the
resume marker, written last), and with counting ``counts`` ``(Z, 3)`` int64 (objects, object pixels,
defect present; -1 = not counted). The group's ``napari_mpf`` attribute holds the class names, the
model, the source and the encoding.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.files import ArrayVolume, Volume, atomic_open
from ..network.features import radius
from ..network.inputs import InputError
from ..network.model import Model
from ..network.padding import mirror_indices, padded_size
from ..network.predict import DEFAULT_TILE, logits_from_padded, normalise, segment, softmax
from ..post.objects import count_objects

__all__ = [
    "PROB_DTYPES",
    "halo",
    "numba_threads",
    "threads_per_task",
    "predict_tile_logits",
    "predict_region",
    "predict_dask",
    "segment_dask",
    "model_token",
    "encode_probabilities",
    "decode_probabilities",
    "CountSettings",
    "RunProgress",
    "ZarrPrediction",
    "open_prediction",
    "write_counts_csv",
]

#: probability encodings of the zarr output: name -> (dtype, scale): stored = p * scale
PROB_DTYPES = {"uint8": (np.uint8, 255.0), "float16": (np.float16, 1.0), "float32": (np.float32, 1.0)}

FORMAT = "napari-mpf-prediction"
VERSION = 1


# ----------------------------------------------------------------------------- one region


@contextmanager
def numba_threads(n: int | None):
    """Run the engine with ``n`` Numba threads in this thread (thread-local; None: unchanged).

    Several dask threads each running the engine's parallel kernels on all cores oversubscribe
    them; one thread per task (``cores // workers``) keeps each core busy with one task.
    """
    if not n:
        yield
        return
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def threads_per_task(workers: int | None) -> int:
    """Numba threads for each of ``workers`` concurrent tasks (all cores shared out)."""
    import numba

    return max(1, numba.config.NUMBA_NUM_THREADS // max(1, int(workers or numba.config.NUMBA_NUM_THREADS)))


def halo(model: Model, stage: bool = False) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((before, after) rows, (before, after) columns)`` of input around a region of outputs:
    the window's, plus the input filters' context, plus (unless ``stage``: this stage's own only)
    a ``context`` model's halo around that."""
    wh, ww = model.window
    r = radius(model.filters)
    (bh, ah), (bw, aw) = (wh // 2 + r, wh - 1 - wh // 2 + r), (ww // 2 + r, ww - 1 - ww // 2 + r)
    if model.context is not None and not stage:
        (cbh, cah), (cbw, caw) = halo(model.context)
        bh, ah, bw, aw = bh + cbh, ah + cah, bw + cbw, aw + caw
    return (bh, ah), (bw, aw)


def predict_tile_logits(model: Model, region: np.ndarray, tile: int = DEFAULT_TILE) -> np.ndarray:
    """Class scores ``(K, h, w)`` from a region that already holds the halo.

    ``region`` is ``(C, h + wh - 1, w + ww - 1)`` (or ``(h + wh - 1, w + ww - 1)`` for one channel)
    raw pixels: rows/columns ``[y0 - wh // 2, y1 + wh - 1 - wh // 2)`` of the mirror-extended image
    for the outputs ``[y0, y1)``; with input filters, their context more on every side (see
    :func:`halo`). Normalised with the model's statistics, then evaluated in tiles of at most
    ``tile`` outputs (rounded to the pooling factor), as :func:`predict_logits` does. For a model
    with a ``context``, ``region`` is the stage input (:meth:`Model.stage_input`) and the halo this
    stage's own (``halo(model, stage=True)``).
    """
    x = normalise(model, region, extended=True, staged=True)
    wh, ww = model.window
    py, px = model.spec.pool_factor
    _, hh, wwid = x.shape
    h, w = hh - wh + 1, wwid - ww + 1
    if h < 1 or w < 1:
        raise InputError(f"a region of {hh}x{wwid} pixels is smaller than the model's {wh}x{ww} window")
    oh, ow = padded_size(h, py), padded_size(w, px)
    if (oh, ow) != (h, w):  # extra outputs, discarded below: any valid pixel values do
        x = np.pad(x, ((0, 0), (0, oh - h), (0, ow - w)), mode="edge")
    return logits_from_padded(model, x, (h, w), tile)


def _source_range(n: int, start: int, stop: int, before: int, after: int) -> np.ndarray:
    """Indices into an axis of length ``n`` of the mirror-extended positions ``[start - before, stop + after)``."""
    return mirror_indices(n, before, after)[start : stop + before + after]


def predict_region(
    model: Model,
    read: Callable[[slice, slice], np.ndarray],
    image_shape: tuple[int, int],
    rows: tuple[int, int],
    cols: tuple[int, int],
    output: str = "probabilities",
) -> np.ndarray:
    """Predict outputs ``rows x cols`` (``(start, stop)`` pairs) of an image of ``image_shape`` ``(H, W)``.

    ``read(row_slice, col_slice)`` returns those pixels ``(C, h, w)`` of the image; it is called once,
    for the bounding box of the pixels the region needs (halo included, mirrored at the image border),
    and once more per ``context`` stage, whose probabilities are computed for the pixels of that box
    (so they equal the whole-image ones; :func:`halo` covers both).
    ``output``: ``"probabilities"`` ``(K, h, w)`` float32, ``"logits"`` (model dtype) or
    ``"segmentation"`` ``(h, w)`` labels 1..K.
    """
    (bh, ah), (bw, aw) = halo(model, stage=True)
    h_img, w_img = image_shape
    ridx = _source_range(h_img, rows[0], rows[1], bh, ah)
    cidx = _source_range(w_img, cols[0], cols[1], bw, aw)
    r0, r1 = int(ridx.min()), int(ridx.max()) + 1
    c0, c1 = int(cidx.min()), int(cidx.max()) + 1
    block = np.asarray(read(slice(r0, r1), slice(c0, c1)))
    if block.ndim == 2:
        block = block[None]
    if block.shape[0] == 4 and model.in_channels == 3:  # RGBA: the model reads RGB
        block = block[:3]
    if model.context is not None:  # the stage input: the first stage's probabilities of these pixels
        block = model.stage_input(block, predict_region(model.context, read, image_shape, (r0, r1), (c0, c1)))
    region = block[:, ridx - r0][:, :, cidx - c0]
    logits = predict_tile_logits(model, region)
    if output == "logits":
        return logits
    probs = softmax(logits.astype(np.float32))
    if output == "segmentation":
        return segment(probs)
    return probs


# ----------------------------------------------------------------------------- lazy dask arrays


def _merge_small(chunks: tuple[int, ...], size: int) -> tuple[int, ...]:
    """Chunks with every chunk at least ``size`` (small ones merged into their neighbours), so that
    a halo of ``size`` comes from the immediate neighbours only."""
    if size <= 0 or min(chunks) >= size:
        return tuple(chunks)
    out: list[int] = []
    acc = 0
    for c in chunks:
        acc += c
        if acc >= size:
            out.append(acc)
            acc = 0
    if acc:
        if out:
            out[-1] += acc
        else:
            out.append(acc)
    return tuple(out)


def _normalise_chunks(chunks, shape_hw: tuple[int, int]) -> tuple[int | str, int | str]:
    if chunks is None:
        return shape_hw
    if isinstance(chunks, (int, np.integer)):
        return int(chunks), int(chunks)
    cy, cx = chunks
    return cy, cx


def predict_dask(
    model: Model,
    array,
    chunks=None,
    *,
    rgb: bool = False,
    output: str = "probabilities",
    cache_tiles: int = 0,
    numba_threads_per_task: int | None = None,
):
    """Lazy prediction of a dask (or NumPy, zarr…) array, equal to :func:`predict_proba` per image.

    ``array``: ``(H, W)`` or a stack ``(..., H, W)`` of grayscale images; with ``rgb`` (napari's RGB
    layers) the last axis holds the colour channels; a multi-channel model otherwise reads
    ``(..., C, H, W)``. ``chunks``: output tile ``(rows, cols)`` or one int for both (default: the
    array's own chunks, or whole images). Leading (stack) axes keep their chunks.

    ``output``: ``"probabilities"`` -> ``(..., K, H, W)`` float32; ``"logits"`` -> the same in the
    model's dtype; ``"segmentation"`` -> ``(..., H, W)`` uint8 labels 1..K. ``cache_tiles`` keeps that
    many computed blocks in memory (e.g. for several napari layers that slice the same array).
    ``numba_threads_per_task``: Numba threads of each block (e.g. 1 when dask runs one thread per
    core; default: Numba's setting).
    Nothing runs until the result is computed (or sliced by napari).
    """
    import dask.array as da

    if output not in ("probabilities", "logits", "segmentation"):
        raise ValueError(f"output must be 'probabilities', 'logits' or 'segmentation', got {output!r}")
    if isinstance(array, da.Array):
        x = array
    else:  # one image of a stack per chunk (or the store's own chunks)
        own = getattr(array, "chunks", None)
        spatial = 3 if rgb else 2
        x = da.from_array(array, chunks=own if isinstance(own, tuple) else (1,) * (np.ndim(array) - spatial) + (-1,) * spatial)
    if rgb:
        x = da.moveaxis(x, -1, -3)
    elif model.in_channels == 1:
        x = x[..., None, :, :]
    if x.ndim < 3:
        raise InputError(
            f"the model expects {model.in_channels} channels: give (..., {model.in_channels}, H, W), or channels "
            f"last with rgb=True; got shape {tuple(array.shape)}"
        )
    c = x.shape[-3]
    if c == 4 and model.in_channels == 3:
        x = x[..., :3, :, :]
        c = 3
    if c != model.in_channels:
        raise InputError(f"the images have {c} channel(s) but the model expects {model.in_channels}")
    if x.dtype.kind not in "biuf":
        raise InputError(f"expected integer or floating-point pixels, got dtype {x.dtype}")
    h, w = x.shape[-2:]
    (bh, ah), (bw, aw) = halo(model)
    dy, dx = max(bh, ah), max(bw, aw)
    if chunks is not None:
        cy, cx = _normalise_chunks(chunks, (h, w))
        x = x.rechunk({x.ndim - 2: cy, x.ndim - 1: cx})
    x = x.rechunk({x.ndim - 3: -1})
    ychunks = _merge_small(x.chunks[-2], min(dy, h))
    xchunks = _merge_small(x.chunks[-1], min(dx, w))
    x = x.rechunk({x.ndim - 2: ychunks, x.ndim - 1: xchunks})
    ystarts = np.concatenate([[0], np.cumsum(ychunks)])
    xstarts = np.concatenate([[0], np.cumsum(xchunks)])
    lead = x.ndim - 3
    depth = {i: 0 for i in range(x.ndim)}
    depth[x.ndim - 2] = dy if len(ychunks) > 1 else 0
    depth[x.ndim - 1] = dx if len(xchunks) > 1 else 0

    k = model.n_classes
    frozen = model.copy()
    out_dtype = {"probabilities": np.dtype(np.float32), "logits": np.dtype(model.dtype), "segmentation": np.dtype(np.uint8 if k < 255 else np.uint16)}[output]
    cache: OrderedDict = OrderedDict()
    lock = threading.Lock()
    tag = uuid.uuid4().hex

    def block_fn(block: np.ndarray, block_id=None) -> np.ndarray:
        iy, ix = block_id[-2], block_id[-1]
        key = tuple(block_id)
        if cache_tiles:
            with lock:
                if key in cache:
                    cache.move_to_end(key)
                    return cache[key]
        y0, y1 = int(ystarts[iy]), int(ystarts[iy + 1])
        x0, x1 = int(xstarts[ix]), int(xstarts[ix + 1])
        oy = y0 - depth[x.ndim - 2] if iy > 0 else 0
        ox = x0 - depth[x.ndim - 1] if ix > 0 else 0
        lead_shape = block.shape[:lead]
        shape = (*lead_shape, k, y1 - y0, x1 - x0) if output != "segmentation" else (*lead_shape, y1 - y0, x1 - x0)
        res = np.empty(shape, out_dtype)
        with numba_threads(numba_threads_per_task):
            for idx in np.ndindex(*lead_shape):
                img = block[idx]

                def read(rs: slice, cs: slice, img=img) -> np.ndarray:
                    r0, r1, c0, c1 = rs.start - oy, rs.stop - oy, cs.start - ox, cs.stop - ox
                    if r0 < 0 or c0 < 0 or r1 > img.shape[1] or c1 > img.shape[2]:  # pragma: no cover - a bug
                        raise RuntimeError(f"block {block_id} lacks the halo: rows {rs}, cols {cs} from origin {(oy, ox)}")
                    return img[:, r0:r1, c0:c1]

                res[idx] = predict_region(frozen, read, (h, w), (y0, y1), (x0, x1), output)
        if cache_tiles:
            with lock:
                cache[key] = res
                while len(cache) > cache_tiles:
                    cache.popitem(last=False)
        return res

    lead_chunks = x.chunks[:lead]
    if output == "segmentation":
        out_chunks = (*lead_chunks, ychunks, xchunks)
        kwargs = {"drop_axis": x.ndim - 3}
    else:
        out_chunks = (*lead_chunks, (k,), ychunks, xchunks)
        kwargs = {}
    return da.map_overlap(
        block_fn, x, depth=depth, boundary="none", trim=False, dtype=out_dtype, chunks=out_chunks,
        name=f"mpf-{output}-{tag}", meta=np.empty((0,) * len(out_chunks), out_dtype), **kwargs,
    )


def segment_dask(probabilities):
    """Lazy labels ``(..., H, W)`` 1..K from lazy probabilities ``(..., K, H, W)``."""
    import dask.array as da

    p = probabilities.rechunk({probabilities.ndim - 3: -1})
    k = p.shape[-3]
    dtype = np.uint8 if k < 255 else np.uint16
    return da.map_blocks(
        lambda b: (np.argmax(b, axis=-3) + 1).astype(dtype), p, drop_axis=p.ndim - 3, dtype=dtype,
        meta=np.empty((0,) * (p.ndim - 1), dtype),
    )


# ----------------------------------------------------------------------------- zarr output


def model_token(model: Model) -> str:
    """A hash of everything that decides the model's outputs (spec, weights, normalisation, classes)."""
    h = hashlib.sha256()
    h.update(json.dumps([model.spec.text, model.activation, model.in_channels, list(model.class_names)]).encode())
    if model.filters:
        h.update(json.dumps(model.filters, sort_keys=True).encode())
    extra = (model.filter_mean, model.filter_std) if model.filters else ()
    for a in (*model.weights, *model.biases, model.norm_mean, model.norm_std, *extra):
        arr = np.ascontiguousarray(a)
        h.update(str(arr.dtype).encode())
        h.update(arr.tobytes())
    if model.context is not None:
        h.update(model_token(model.context).encode())
    return h.hexdigest()[:32]


def encode_probabilities(p: np.ndarray, prob_dtype: str) -> np.ndarray:
    dtype, scale = PROB_DTYPES[prob_dtype]
    if dtype == np.uint8:
        return np.rint(np.clip(p, 0.0, 1.0) * scale).astype(np.uint8)
    return p.astype(dtype)


def decode_probabilities(stored: np.ndarray, prob_dtype: str) -> np.ndarray:
    """Float32 probabilities from stored values (uint8: value / 255)."""
    _, scale = PROB_DTYPES[prob_dtype]
    out = np.asarray(stored, dtype=np.float32)
    return out / np.float32(scale) if scale != 1.0 else out


@dataclass(frozen=True)
class CountSettings:
    """Per-slice objects of class ``class_index`` (0-based): see :func:`~napari_mpf.engine.post.objects.count_objects`."""

    class_index: int = 1
    threshold: float = 0.5
    min_area: int = 1
    min_count: int | None = 1
    min_pixels: int | None = None

    def as_dict(self) -> dict:
        return {"class_index": int(self.class_index), "threshold": float(self.threshold), "min_area": int(self.min_area),
                "min_count": self.min_count, "min_pixels": self.min_pixels}


@dataclass
class RunProgress:
    """Progress of a :class:`ZarrPrediction` run: tasks (chunks + slice counts) done of ``total``."""

    done: int
    total: int
    elapsed: float
    skipped: int = 0
    chunks_done: int = 0
    chunks_total: int = 0


_OPENED: OrderedDict = OrderedDict()
_OPENED_LOCK = threading.Lock()


def _output(path: str, run_id: str, name: str):
    """Array ``name`` of the store, opened once per process (and per store creation: ``run_id``)."""
    import zarr

    key = (path, run_id, name)
    with _OPENED_LOCK:
        if key in _OPENED:
            return _OPENED[key]
    arr = zarr.open_array(path, path=name, mode="r+")
    with _OPENED_LOCK:
        _OPENED[key] = arr
        while len(_OPENED) > 16:
            _OPENED.popitem(last=False)
    return arr


def _run_chunk(model: Model, volume: Volume, path: str, run_id: str, z: int, iy: int, ix: int, box: tuple, prob_dtype: str,
               n_threads: int | None = None) -> tuple:
    """One output chunk: read its region (with the halo), predict, write probabilities, labels and
    (last, as the 'finished' marker) the class pixel counts."""
    y0, y1, x0, x1 = box
    try:
        with numba_threads(n_threads):
            probs = predict_region(model, lambda rs, cs: volume.read(z, rs, cs), (volume.height, volume.width), (y0, y1), (x0, x1))
    except InputError as exc:
        raise InputError(f"{volume.names[z]}: {exc}") from None
    seg = segment(probs)
    _output(path, run_id, "probabilities")[z, :, y0:y1, x0:x1] = encode_probabilities(probs, prob_dtype)
    _output(path, run_id, "segmentation")[z, y0:y1, x0:x1] = seg
    hist = np.bincount(seg.ravel(), minlength=model.n_classes + 1)[1:].astype(np.int64)
    _output(path, run_id, "class_pixels")[z, iy, ix, :] = hist
    return ("chunk", z, iy, ix)


def _run_count(path: str, run_id: str, z: int, prob_dtype: str, settings: dict, *chunks_done) -> tuple:
    """Objects in slice ``z`` from the stored probabilities (after all its chunks are written)."""
    import zarr

    p = decode_probabilities(_output(path, run_id, "probabilities")[z, settings["class_index"]], prob_dtype)
    res = count_objects(p, settings["threshold"], settings["min_area"], settings["min_count"], settings["min_pixels"])
    row = np.array([res.count, int(res.pixels.sum()), int(res.defect_present)], np.int64)
    zarr.open_array(path, path="counts", mode="r+")[z, :] = row  # not cached: recreated when the settings change
    return ("count", z, *row.tolist())


def open_prediction(path: str | Path) -> dict:
    """The ``napari_mpf`` attributes of a prediction store (class names, model, source, encoding…)."""
    import zarr

    g = zarr.open_group(str(path), mode="r")
    return dict(g.attrs.get("napari_mpf", {}))


class ZarrPrediction:
    """Predict a whole volume into a zarr store, chunk by chunk, resumably.

    ``volume``: a :class:`~napari_mpf.engine.io.files.Volume` (see :func:`~napari_mpf.engine.io.files.open_volume`)
    or an array (wrapped in :class:`~napari_mpf.engine.io.files.ArrayVolume`). ``chunks``: output tile
    ``(rows, cols)`` (default 1024; clipped to the image). ``prob_dtype``: ``"uint8"`` (default),
    ``"float16"`` or ``"float32"``. ``counts``: per-slice object counts, or None. With an existing
    store from the same model, source, chunks and encoding, finished chunks are skipped (resume);
    anything else is refused unless ``overwrite``.
    """

    def __init__(self, model: Model, volume, path: str | Path, chunks=1024, prob_dtype: str = "uint8",
                 counts: CountSettings | None = None, overwrite: bool = False):
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
        cy, cx = _normalise_chunks(chunks, (volume.height, volume.width))
        self.chunks = (max(1, min(int(cy), volume.height)), max(1, min(int(cx), volume.width)))
        self.prob_dtype = prob_dtype
        self.counts = counts
        self.grid = (-(-volume.height // self.chunks[0]), -(-volume.width // self.chunks[1]))
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
        self._prepare(overwrite)

    # -- store
    def _prepare(self, overwrite: bool) -> None:
        import zarr

        p = Path(self.path)
        z, _, h, w = self.volume.shape
        k = self.model.n_classes
        cy, cx = self.chunks
        ny, nx = self.grid
        existing = None
        if p.exists():
            if not p.is_dir():
                raise InputError(f"output {p} exists and is not a zarr store (a directory)")
            try:
                existing = zarr.open_group(str(p), mode="r").attrs.get("napari_mpf")
            except Exception:  # noqa: BLE001 - not a zarr group
                existing = None
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
            g = zarr.open_group(str(p), mode="w")
            seg_dtype = np.uint8 if k < 255 else np.uint16
            g.create_array("probabilities", shape=(z, k, h, w), chunks=(1, k, cy, cx), dtype=PROB_DTYPES[self.prob_dtype][0], fill_value=0,
                           dimension_names=("z", "class", "y", "x"))
            g.create_array("segmentation", shape=(z, h, w), chunks=(1, cy, cx), dtype=seg_dtype, fill_value=0,
                           dimension_names=("z", "y", "x"))
            g.create_array("class_pixels", shape=(z, ny, nx, k), chunks=(1, 1, 1, k), dtype=np.int64, fill_value=-1)
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
            if "counts" in g:
                have = dict(g["counts"].attrs.get("settings", {}))
            if have != want:
                arr = g.create_array("counts", shape=(z, 3), chunks=(1, 3), dtype=np.int64, fill_value=-1, overwrite=True)
                arr.attrs["settings"] = want
                arr.attrs["columns"] = ["count", "object_pixels", "defect_present"]
        self.run_id = str(g.attrs["napari_mpf"].get("run_id", ""))

    def pending(self) -> tuple[list[tuple[int, int, int]], list[int]]:
        """``(chunks (z, iy, ix) still to predict, slices still to count)``."""
        import zarr

        g = zarr.open_group(self.path, mode="r")
        marks = np.asarray(g["class_pixels"][..., 0])
        todo = [tuple(int(v) for v in idx) for idx in np.argwhere(marks < 0)]
        uncounted: list[int] = []
        if self.counts is not None:
            counted = np.asarray(g["counts"][:, 0]) >= 0
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
        chunk_fn = dask.delayed(_run_chunk, pure=False)
        by_slice: dict[int, list] = {}
        tasks = []
        for z, iy, ix in todo:
            t = chunk_fn(model, volume, self.path, self.run_id, z, iy, ix, self._box(iy, ix), self.prob_dtype, n_threads,
                         dask_key_name=f"mpf-chunk-{token}-{z}-{iy}-{ix}")
            by_slice.setdefault(z, []).append(t)
            tasks.append(t)
        if self.counts is not None:
            count_fn = dask.delayed(_run_count, pure=False)
            settings = self.counts.as_dict()
            for z in uncounted:
                tasks.append(count_fn(self.path, self.run_id, z, self.prob_dtype, settings, *by_slice.get(z, []),
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

        g = zarr.open_group(self.path, mode="r")
        cp = np.asarray(g["class_pixels"][...])
        finished = cp[..., 0] >= 0
        per_slice = np.where(finished[..., None], cp, 0).sum(axis=(1, 2))
        out = {"class_pixels": per_slice, "finished_chunks": int(finished.sum()), "total_chunks": int(finished.size)}
        if self.counts is not None and "counts" in g:
            out["counts"] = np.asarray(g["counts"][...])
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


def write_counts_csv(path: str | Path, class_names: list[str], rows, with_counts: bool = True,
                     extra: dict[str, list[float]] | None = None, stage=None) -> Path:
    """Write the per-slice table (atomically). ``rows``: ``(slice, name, (count, object_pixels,
    defect_present) or None, class fractions)``; a count of -1 (not counted) is left empty.
    ``extra``: more columns, one value per row (e.g. an image-level head's probabilities);
    ``stage``: an :class:`~napari_mpf.engine.io.atomic.Staged` that replaces the file when it commits."""
    extra = extra or {}
    header = ["slice", "name"] + (["count", "object_pixels", "defect_present"] if with_counts else [])
    header += [f"fraction_{n}" for n in class_names] + list(extra)
    lines = [",".join(_csv(h) for h in header)]
    for i, (z, name, c, fractions) in enumerate(rows):
        row = [str(int(z)), _csv(name)]
        if with_counts:
            if c is None or c[0] < 0:
                row += ["", "", ""]
            else:
                row += [str(int(c[0])), str(int(c[1])), "true" if c[2] else "false"]
        row += [f"{float(v):.6f}" for v in fractions]
        row += [f"{float(values[i]):.6f}" for values in extra.values()]
        lines.append(",".join(row))
    with atomic_open(path, stage) as fh:
        fh.write(("\n".join(lines) + "\n").encode())
    return Path(path)


def _csv(text: str) -> str:
    text = str(text)
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text

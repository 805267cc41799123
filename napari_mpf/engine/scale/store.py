"""The zarr store of a :class:`~napari_mpf.engine.scale.run.ZarrPrediction` and its tasks (one output
chunk; one slice's counts), which dask runs anywhere.

Plain store layout (zarr v3 group; OME-Zarr: :mod:`.layouts`): ``probabilities`` ``(Z, K, H, W)``
(uint8 = round(255 p), float16 or float32), ``segmentation`` ``(Z, H, W)`` uint8 labels 1..K, ``class_pixels``
``(Z, ny, nx, K)`` int64 pixels per class of every output chunk (-1 = chunk not finished: the
resume marker, written last), and with counting ``counts`` ``(Z, 3)`` int64 (objects, object pixels,
defect present; -1 = not counted). The group's ``napari_mpf`` attribute holds the class names, the
model, the source and the encoding.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..io.volume import Volume
from ..lru import LRUCache
from ..network.inputs import InputError
from ..network.model import Model
from ..network.predict import segment
from ..post.objects import count_objects
from .region import numba_threads, predict_region

__all__ = ["PROB_DTYPES", "model_token", "encode_probabilities", "decode_probabilities", "open_prediction", "run_chunk", "run_count"]

#: probability encodings of the zarr output: name -> (dtype, scale): stored = p * scale
PROB_DTYPES = {"uint8": (np.uint8, 255.0), "float16": (np.float16, 1.0), "float32": (np.float32, 1.0)}

FORMAT = "napari-mpf-prediction"
VERSION = 1



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


#: arrays opened once per process; an OME-Zarr task writes 2 per pyramid level (up to 8) + the bookkeeping
_OPENED: LRUCache = LRUCache(64)


def _output(path: str, run_id: str, name: str):
    """Array ``name`` of the store, opened once per process (and per store creation: ``run_id``)."""
    import zarr

    return _OPENED.get_or_compute((path, run_id, name), lambda: zarr.open_array(path, path=name, mode="r+"))


def run_chunk(model: Model, volume: Volume, layout, path: str, run_id: str, z: int, iy: int, ix: int, box: tuple,
              prob_dtype: str, n_threads: int | None = None) -> tuple:
    """One output chunk: read its region (with the halo), predict, write probabilities, labels (at
    every level of the ``layout``) and (last, as the 'finished' marker) the class pixel counts."""
    y0, y1, x0, x1 = box
    try:
        with numba_threads(n_threads):
            probs = predict_region(model, lambda rs, cs: volume.read(z, rs, cs), (volume.height, volume.width), (y0, y1), (x0, x1))
    except InputError as exc:
        raise InputError(f"{volume.names[z]}: {exc}") from None
    seg = segment(probs)
    layout.write(lambda name: _output(path, run_id, name), z, box, encode_probabilities(probs, prob_dtype), seg)
    hist = np.bincount(seg.ravel(), minlength=model.n_classes + 1)[1:].astype(np.int64)
    _output(path, run_id, layout.prefix + "class_pixels")[z, iy, ix, :] = hist
    return ("chunk", z, iy, ix)


def run_count(layout, path: str, run_id: str, z: int, prob_dtype: str, settings: dict, *chunks_done) -> tuple:
    """Objects in slice ``z`` from the stored probabilities (after all its chunks are written)."""
    import zarr

    stored = layout.probabilities(lambda name: _output(path, run_id, name), z, settings["class_index"])
    p = decode_probabilities(stored, prob_dtype)
    res = count_objects(p, settings["threshold"], settings["min_area"], settings["min_count"], settings["min_pixels"])
    row = np.array([res.count, int(res.pixels.sum()), int(res.defect_present)], np.int64)
    # not cached: recreated when the settings change
    zarr.open_array(path, path=layout.prefix + "counts", mode="r+")[z, :] = row
    return ("count", z, *row.tolist())


def open_prediction(path: str | Path) -> dict:
    """The ``napari_mpf`` attributes of a prediction store (class names, model, source, encoding…)."""
    import zarr

    g = zarr.open_group(str(path), mode="r")
    return dict(g.attrs.get("napari_mpf", {}))

"""One region of one image, predicted exactly as the whole image would be.

Output pixel ``(y, x)`` of an image depends on the window ``padded[:, y:y+wh, x:x+ww]`` of the image
mirror-padded (NumPy ``mode="reflect"``: the edge pixel is not repeated) by ``wh // 2`` rows before
and ``wh - 1 - wh // 2`` after (columns likewise). A chunk of outputs ``[y0, y1) x [x0, x1)``
therefore needs rows ``[y0 - wh // 2, y1 + wh - 1 - wh // 2)`` of the *mirror-extended whole image*:
real neighbouring pixels inside the image, mirrored pixels only beyond its true border. Evaluated
from that region, every output pixel goes through the same arithmetic as in
:func:`~napari_mpf.engine.network.predict.predict_proba`, so the results agree to float rounding (in
practice bit for bit) whatever the chunking, including chunks smaller than the window.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

from ..network.features import radius
from ..network.inputs import InputError
from ..network.model import Model
from ..network.padding import mirror_indices, padded_size
from ..network.predict import DEFAULT_TILE, logits_from_padded, normalise, segment, softmax

__all__ = ["halo", "numba_threads", "threads_per_task", "predict_tile_logits", "predict_region"]

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

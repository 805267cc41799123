"""Lazy dask arrays of predictions, chunk by chunk, equal to whole-image prediction:
:func:`predict_dask`: a lazy dask array of probabilities (or labels) for a dask/NumPy/zarr array
of 2-D images or a stack of them (``dask.array.map_overlap`` with a halo of the window's half-size
and ``boundary="none"``; the mirror padding at the true border is done inside the block, because
dask's ``"reflect"`` boundary repeats the edge pixel, NumPy's ``"symmetric"``).
"""

from __future__ import annotations

import uuid

import numpy as np

from ..lru import LRUCache
from ..network.inputs import InputError
from ..network.model import Model
from .region import halo, numba_threads, predict_region

__all__ = ["predict_dask", "segment_dask", "normalise_chunks"]

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


def normalise_chunks(chunks, shape_hw: tuple[int, int]) -> tuple[int | str, int | str]:
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
        cy, cx = normalise_chunks(chunks, (h, w))
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
    cache: LRUCache[np.ndarray] = LRUCache(cache_tiles or 0)
    tag = uuid.uuid4().hex

    def block_fn(block: np.ndarray, block_id=None) -> np.ndarray:
        iy, ix = block_id[-2], block_id[-1]
        key = tuple(block_id)
        hit = cache.get(key)
        if hit is not None:
            return hit
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
        cache.put(key, res)
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

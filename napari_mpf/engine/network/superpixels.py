"""Superpixel pooling (Schuurmans, Berman & Blaschko, 2018) and SLIC superpixels.

A segment map is an int32 ``(H, W)`` array of superpixel ids ``0..S-1``; negative ids mark pixels
that belong to no superpixel (they are ignored by pooling and get 0 from broadcasting). Pooling
reduces a ``(C, H, W)`` map to ``(C, S)`` (max or mean over each superpixel's pixels) in one raster
pass per channel; broadcasting is the reverse ``(K, S) -> (K, H, W)`` copy.

Every parallel loop runs over channels and each iteration writes only its own row, so there is no
racing ``+=`` and results do not depend on the thread count. Sums accumulate in float64 in raster
order, as ``np.bincount`` (and so ``scipy.ndimage.mean``) does.
"""

from __future__ import annotations

import hashlib
import operator

import numpy as np
from numba import njit, prange

from ..kernels.layers import _OPTS
from ..lru import LRUCache
from .inputs import InputError

__all__ = [
    "clear_superpixel_cache",
    "refine_probabilities",
    "relabel",
    "slic_superpixels",
    "sp_broadcast",
    "sp_broadcast_backward",
    "sp_pool_backward",
    "sp_pool_forward",
]

MODES = ("max", "mean")
_CACHE_SIZE = 32
_SLIC: LRUCache[np.ndarray] = LRUCache(_CACHE_SIZE)  # read-only results; callers get copies


# --------------------------------------------------------------------------------------- kernels


@njit(parallel=True, **_OPTS)
def _pool_max(x, seg, out, arg):
    """``out[c, s]`` = max of ``x[c]`` over superpixel ``s``, ``arg`` its first raster index (or -1)."""
    n_ch, h, w = x.shape
    for c in prange(n_ch):
        out[c, :] = 0
        arg[c, :] = -1
        for y in range(h):
            for i in range(w):
                s = seg[y, i]
                if s >= 0:
                    v = x[c, y, i]
                    if arg[c, s] < 0 or v > out[c, s]:
                        out[c, s] = v
                        arg[c, s] = y * w + i
    return out, arg


@njit(**_OPTS)
def _count(seg, counts):
    """``counts[s]`` = number of pixels of superpixel ``s`` (serial)."""
    counts[:] = 0
    h, w = seg.shape
    for y in range(h):
        for i in range(w):
            s = seg[y, i]
            if s >= 0:
                counts[s] += 1
    return counts


@njit(parallel=True, **_OPTS)
def _segment_sums(x, seg, out):
    """``out[c, s]`` = float64 sum of ``x[c]`` over superpixel ``s``, in raster order."""
    n_ch, h, w = x.shape
    for c in prange(n_ch):
        acc = out[c]
        acc[:] = 0.0
        cur, total = -1, 0.0  # the running sum of superpixel ``cur`` lives in a register
        for y in range(h):
            for i in range(w):
                s = seg[y, i]
                if s != cur:
                    if cur >= 0:
                        acc[cur] = total
                    cur = s
                    if s >= 0:
                        total = acc[s]
                if s >= 0:
                    total += x[c, y, i]
        if cur >= 0:
            acc[cur] = total
    return out


@njit(parallel=True, **_OPTS)
def _broadcast(values, seg, out):
    """``out[k, y, x] = values[k, seg[y, x]]``, 0 where ``seg < 0``."""
    n_k = values.shape[0]
    h, w = seg.shape
    for k in prange(n_k):
        for y in range(h):
            for i in range(w):
                s = seg[y, i]
                out[k, y, i] = values[k, s] if s >= 0 else 0
    return out


@njit(parallel=True, **_OPTS)
def _scatter_max(grad_pooled, arg, out):
    """``out[c, arg[c, s]] += grad_pooled[c, s]`` (``out`` is ``(C, H*W)`` and zeroed)."""
    n_ch, n_seg = grad_pooled.shape
    for c in prange(n_ch):
        for s in range(n_seg):
            j = arg[c, s]
            if j >= 0:
                out[c, j] += grad_pooled[c, s]
    return out


@njit(**_OPTS)
def _relabel_table(seg, max_label, out):
    """Flat ``seg`` -> ``out``: sorted contiguous ids through a ``max_label + 1`` table; returns S."""
    table = np.full(max_label + 1, -1, np.int64)
    for j in range(seg.size):
        if seg[j] >= 0:
            table[seg[j]] = 0
    n = 0
    for v in range(max_label + 1):
        if table[v] == 0:
            table[v] = n
            n += 1
    for j in range(seg.size):
        out[j] = table[seg[j]] if seg[j] >= 0 else -1
    return n


# ------------------------------------------------------------------------------------ validation


def _float_array(a, ndim: int, name: str) -> np.ndarray:
    """``a`` as a C-contiguous float32/float64 array with ``ndim`` dimensions."""
    arr = np.asarray(a)
    if arr.dtype not in (np.float32, np.float64):
        raise InputError(f"{name} has dtype {arr.dtype}; expected float32 or float64")
    if arr.ndim != ndim:
        raise InputError(f"{name} has shape {arr.shape}; expected {ndim} dimensions")
    return np.ascontiguousarray(arr)


def _segments(segments, hw: tuple[int, int], n_segments: int | None, what: str) -> np.ndarray:
    """Check a segment map against the ``(H, W)`` of ``what`` and ids ``< n_segments``; int32."""
    seg = np.asarray(segments)
    if seg.ndim != 2:
        raise InputError(f"segments must be 2-D (H, W), got shape {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise InputError(f"segments have dtype {seg.dtype}; expected integer superpixel ids")
    if seg.shape != tuple(hw):
        raise InputError(
            f"segments are {seg.shape[0]}x{seg.shape[1]} but {what} is {hw[0]}x{hw[1]}"
        )
    if n_segments is not None and seg.size:
        top = int(seg.max())
        if top >= n_segments:
            raise InputError(
                f"segments contain id {top} but there are only {n_segments} superpixels "
                f"(ids must be < {n_segments}; use relabel() to renumber)"
            )
    if seg.dtype != np.int32 and seg.size:
        lo, hi, i32 = int(seg.min()), int(seg.max()), np.iinfo(np.int32)
        if lo < i32.min or hi > i32.max:
            raise InputError(f"segments contain ids outside the int32 range ({lo}..{hi})")
    return np.ascontiguousarray(seg, dtype=np.int32)


def _count_arg(n, name: str) -> int:
    """A non-negative integer."""
    try:
        value = operator.index(n)
    except TypeError:
        raise InputError(f"{name} must be an integer, got {n!r}") from None
    if value < 0:
        raise InputError(f"{name} must be >= 0, got {value}")
    return value


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"pooling mode must be 'max' or 'mean', got {mode!r}")
    return mode


def _hw(shape) -> tuple[int, int]:
    try:
        h, w = (operator.index(v) for v in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape must be (H, W), got {shape!r}") from None
    if h < 0 or w < 0:
        raise InputError(f"shape must be non-negative, got {(h, w)}")
    return h, w


# ---------------------------------------------------------------------------------------- pooling


def sp_pool_forward(
    x: np.ndarray, segments: np.ndarray, n_segments: int, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Pool ``x`` ``(C, H, W)`` over superpixels into ``(C, S)`` (dtype of ``x``).

    Returns ``(pooled, aux)``. ``mode="max"``: ``aux`` is the int64 ``(C, S)`` raster index
    ``y * W + x`` of each maximum (first in raster order on ties). ``mode="mean"``: ``aux`` is the
    float64 ``(S,)`` pixel count of each superpixel. An empty superpixel pools to 0 (arg -1,
    count 0); pixels with a negative id are ignored.
    """
    x = _float_array(x, 3, "x")
    n_seg = _count_arg(n_segments, "n_segments")
    seg = _segments(segments, x.shape[1:], n_seg, "the image")
    if _mode(mode) == "max":
        pooled = np.empty((x.shape[0], n_seg), x.dtype)
        arg = np.empty((x.shape[0], n_seg), np.int64)
        return _pool_max(x, seg, pooled, arg)
    counts = _count(seg, np.empty(n_seg, np.float64))
    sums = _segment_sums(x, seg, np.empty((x.shape[0], n_seg), np.float64))
    return _safe_divide(sums, counts).astype(x.dtype, copy=False), counts


def _safe_divide(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``sums / counts`` along the last axis, 0 where the count is 0."""
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def sp_pool_backward(
    grad_pooled: np.ndarray,
    segments: np.ndarray,
    aux: np.ndarray,
    mode: str,
    shape: tuple[int, int],
) -> np.ndarray:
    """Gradient w.r.t. ``x`` ``(C, H, W)`` from the gradient w.r.t. the pooled ``(C, S)`` map.

    ``max`` routes ``grad_pooled[c, s]`` to the arg-max pixel, ``mean`` spreads
    ``grad_pooled[c, s] / count[s]`` over the superpixel; ignored pixels get 0.
    """
    g = _float_array(grad_pooled, 2, "grad_pooled")
    hw = _hw(shape)
    n_ch, n_seg = g.shape
    seg = _segments(segments, hw, n_seg, "the image")
    aux = np.asarray(aux)
    if _mode(mode) == "mean":
        if aux.shape != (n_seg,):
            raise InputError(f"mean-pooling counts have shape {aux.shape}; expected ({n_seg},)")
        scaled = _safe_divide(g.astype(np.float64), aux.astype(np.float64)).astype(g.dtype)
        return _broadcast(scaled, seg, np.empty((n_ch, *hw), g.dtype))
    if aux.shape != g.shape or not np.issubdtype(aux.dtype, np.integer):
        raise InputError(
            f"max-pooling arg-max has shape {aux.shape} and dtype {aux.dtype}; "
            f"expected integer {g.shape}"
        )
    if aux.size and int(aux.max()) >= hw[0] * hw[1]:
        raise InputError(f"arg-max index {int(aux.max())} is outside the {hw[0]}x{hw[1]} image")
    out = np.zeros((n_ch, hw[0] * hw[1]), g.dtype)
    _scatter_max(g, np.ascontiguousarray(aux, dtype=np.int64), out)
    return out.reshape(n_ch, *hw)


def sp_broadcast(values: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Paint ``values`` ``(K, S)`` back onto the image: ``(K, H, W)``, 0 where ``segments < 0``."""
    v = _float_array(values, 2, "values")
    seg = _segments(segments, np.shape(segments), v.shape[1], "the segment map")
    return _broadcast(v, seg, np.empty((v.shape[0], *seg.shape), v.dtype))


def sp_broadcast_backward(grad: np.ndarray, segments: np.ndarray, n_segments: int) -> np.ndarray:
    """Adjoint of :func:`sp_broadcast`: sum ``grad`` ``(K, H, W)`` over each superpixel -> ``(K, S)``."""
    g = _float_array(grad, 3, "grad")
    n_seg = _count_arg(n_segments, "n_segments")
    seg = _segments(segments, g.shape[1:], n_seg, "the gradient")
    sums = _segment_sums(g, seg, np.empty((g.shape[0], n_seg), np.float64))
    return sums.astype(g.dtype, copy=False)


def refine_probabilities(probabilities: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Average each class probability ``(K, H, W)`` over each superpixel; float32 ``(K, H, W)``.

    Any integer ids are accepted (they are renumbered); pixels with a negative id keep their own
    probabilities. Rows still sum to 1 up to rounding.
    """
    p = _float_array(probabilities, 3, "probabilities")
    if np.ndim(segments) != 2 or np.shape(segments) != p.shape[1:]:
        _segments(segments, p.shape[1:], None, "the probability map")  # raises the right sentence
    seg, n_seg = relabel(segments)
    pooled, _ = sp_pool_forward(p, seg, n_seg, "mean")
    out = sp_broadcast(pooled, seg).astype(np.float32, copy=False)
    ignored = seg < 0
    if ignored.any():
        out[:, ignored] = p[:, ignored]
    return out


def relabel(segments: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber ids to ``0..S-1`` in sorted order of the old ids; negative ids become -1.

    Returns the int32 map and ``S``.
    """
    seg = np.asarray(segments)
    if not np.issubdtype(seg.dtype, np.integer):
        raise InputError(f"segments have dtype {seg.dtype}; expected integer superpixel ids")
    if seg.dtype == np.uint64 and seg.size and int(seg.max()) > np.iinfo(np.int64).max:
        raise InputError("segments contain ids above the int64 range")
    seg = np.ascontiguousarray(seg, dtype=np.int64)
    out = np.empty(seg.shape, np.int32)
    top = int(seg.max()) if seg.size else -1
    if top < 0:
        out[...] = -1
        return out, 0
    if top <= 4 * seg.size + 1024:
        return out, int(_relabel_table(seg.ravel(), top, out.ravel()))
    valid = seg >= 0
    uniq, inverse = np.unique(seg[valid], return_inverse=True)
    out[...] = -1
    out[valid] = inverse
    return out, int(uniq.size)


# ------------------------------------------------------------------------------------------ SLIC


def slic_superpixels(image: np.ndarray, size: float, compactness: float = 0.3) -> np.ndarray:
    """SLIC superpixels of a normalised ``(C, H, W)`` image: int32 ``(H, W)`` ids ``0..S-1``.

    ``size`` is the mean superpixel area in pixels (``S`` is about ``H * W / size``). Results are
    cached (LRU, 32 entries) by image content, ``size`` and ``compactness``; a fresh copy is
    returned each time.
    """
    img = _slic_image(image)
    size, compactness = _positive(size, "size"), _positive(compactness, "compactness")
    key = (_digest(img), size, compactness)
    hit = _SLIC.get(key)
    if hit is not None:
        return hit.copy()
    h, w = img.shape[1:]
    n_segments = min(h * w, max(1, round(h * w / size)))
    labels = _run_slic(img, n_segments, compactness)
    _, inverse = np.unique(labels, return_inverse=True)
    result = inverse.reshape(h, w).astype(np.int32)
    result.flags.writeable = False
    _SLIC.put(key, result)
    return result.copy()


def clear_superpixel_cache() -> None:
    """Forget every cached SLIC result."""
    _SLIC.clear()


def _run_slic(image: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    """skimage SLIC on channels-first ``image``.

    skimage rescales the whole image to [0, 1] (one global min/max) and, left to itself, would
    treat any 3-channel image as RGB and convert it to Lab; ``convert2lab=False`` keeps the
    normalised channels as they are, whatever their number.
    """
    from skimage.segmentation import slic

    return slic(
        image,
        n_segments=n_segments,
        compactness=compactness,
        channel_axis=0,
        start_label=0,
        enforce_connectivity=True,
        convert2lab=False,
    )


def _slic_image(image) -> np.ndarray:
    """A finite, non-empty float32/float64 ``(C, H, W)`` array."""
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise InputError(f"image has shape {arr.shape}; expected (C, H, W)")
    if arr.size == 0:
        raise InputError(f"image is empty (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"image has dtype {arr.dtype}; expected real numbers")
    arr = np.ascontiguousarray(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32)
    if not np.isfinite(arr).all():
        raise InputError("image contains NaN or infinite values")
    return arr


def _positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not (v > 0 and np.isfinite(v)):
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _digest(img: np.ndarray) -> tuple:
    """Content key: blake2b of the bytes plus shape and dtype."""
    h = hashlib.blake2b(img.view(np.uint8), digest_size=16)
    return (h.hexdigest(), img.shape, img.dtype.str)

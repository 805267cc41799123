"""Mirror padding of the network's input: the window of an output pixel near the border reads the
image reflected at the edge (the edge pixel not repeated), the same for the network and for the
input filters (:mod:`.features`)."""

from __future__ import annotations

import numpy as np

__all__ = ["mirror_indices", "pad_image", "padded_size"]


def mirror_indices(n: int, before: int, after: int) -> np.ndarray:
    """Indices of a mirror ('reflect', edge not repeated) padding of an axis of length ``n``."""
    idx = np.arange(-before, n + after)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.mod(idx, period)
    return np.where(idx < n, idx, period - idx)


def pad_image(x: np.ndarray, window: tuple[int, int], out_shape: tuple[int, int]) -> np.ndarray:
    """Mirror-pad a ``(C, H, W)`` image so that outputs ``[0, out_h) x [0, out_w)`` can be computed.

    ``out_shape`` may exceed ``(H, W)``; the extra outputs are discarded by the caller.
    """
    _, h, w = x.shape
    (wh, ww), (oh, ow) = window, out_shape
    rows = mirror_indices(h, wh // 2, oh - h + wh - 1 - wh // 2)
    cols = mirror_indices(w, ww // 2, ow - w + ww - 1 - ww // 2)
    return np.ascontiguousarray(x[:, rows[:, None], cols[None, :]])


def padded_size(n: int, factor: int) -> int:
    """Smallest multiple of ``factor`` that is at least ``n``."""
    return -(-n // factor) * factor

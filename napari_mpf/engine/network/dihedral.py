"""The 8 rotations and flips of an image (the dihedral group of the square), and their inverses."""

from __future__ import annotations

import numpy as np

__all__ = ["dihedral", "undo_dihedral"]


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """Transform ``k`` (0-7) of the last two axes: a left-right flip if ``k >= 4``, then ``k % 4``
    quarter turns. A view."""
    if k >= 4:
        a = a[..., ::-1]
    return np.rot90(a, k % 4, axes=(-2, -1))


def undo_dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`dihedral`: ``undo_dihedral(dihedral(a, k), k)`` equals ``a``."""
    a = np.rot90(a, -(k % 4), axes=(-2, -1))
    return a[..., ::-1] if k >= 4 else a

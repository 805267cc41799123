"""Optional input filters ahead of the network: each normalised channel smoothed at several scales,
its gradient magnitude and the two eigenvalues of its Hessian (edges, ridges and blobs) at several
scales.

A fixed filter bank gives the first layer context, edges and curvature it would otherwise have to
learn: on ISBI membranes it lowered the pixel error at equal steps, on the magnetic tiles it raised
it (benchmarks/RESULTS_ACCURACY.md). The network still trains from the strokes alone; the bank has
no parameters.

The filters are local (a Gaussian truncated at 4 sigma, then central or second differences), and
the image is mirror-extended the same way as for the network's window
(:func:`~napari_mpf.engine.network.padding.mirror_indices`), so a region read with :func:`radius` extra
pixels on every side gives the same features as the whole image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .inputs import InputError
from .padding import mirror_indices

__all__ = ["FILTER_BANKS", "check_filters", "n_outputs", "radius", "apply_filters"]

_TRUNCATE = 4.0

_KINDS = ("smooth", "gradient", "hessian")

#: named banks: ``{"smooth": sigmas, "gradient": sigmas, "hessian": sigmas}``
FILTER_BANKS: dict[str, dict[str, list[float]]] = {
    "multiscale": {"smooth": [1.0, 2.0, 4.0, 8.0, 16.0], "gradient": [1.0, 2.0, 4.0, 8.0, 16.0],
                   "hessian": [1.0, 2.0, 4.0, 8.0]},
}


def check_filters(filters: dict | str | None) -> dict | None:
    """``filters`` as a checked ``{"smooth": [...], "gradient": [...], "hessian": [...]}`` (a bank's
    name allowed; a missing kind is no filter of that kind), or None."""
    if filters in (None, "", "none"):
        return None
    if isinstance(filters, str):
        if filters not in FILTER_BANKS:
            raise InputError(f"unknown input filters {filters!r}; choose one of none, {', '.join(FILTER_BANKS)}")
        filters = FILTER_BANKS[filters]
    out = {}
    for key in _KINDS:
        sigmas = [float(s) for s in filters.get(key, [])]
        if any(not (0 < s <= 64) for s in sigmas):
            raise InputError(f"input filter sigmas must be in (0, 64], got {key} {sigmas}")
        out[key] = sigmas
    unknown = set(filters) - set(_KINDS)
    if unknown:
        raise InputError(f"unknown input filter kind(s) {sorted(unknown)}; expected {', '.join(_KINDS)}")
    return out if any(out.values()) else None


def n_outputs(filters: dict | None) -> int:
    """Channels out per channel in: the channel itself, one per smoothing and gradient scale, two
    per Hessian scale."""
    if not filters:
        return 1
    return 1 + len(filters["smooth"]) + len(filters["gradient"]) + 2 * len(filters["hessian"])


def radius(filters: dict | None) -> int:
    """Pixels of context each side that the filters read (0 without filters)."""
    if not filters:
        return 0
    reach = [int(_TRUNCATE * s + 0.5) for s in filters["smooth"]]
    reach += [int(_TRUNCATE * s + 0.5) + 1 for s in (*filters["gradient"], *filters["hessian"])]  # + differences
    return max(reach, default=0)


def apply_filters(x: np.ndarray, filters: dict | None, extended: bool = False) -> np.ndarray:
    """``(C * n_outputs, H, W)`` features of a normalised ``(C, H, W)`` image: the C channels first,
    then per channel its smoothings, gradient magnitudes and Hessian eigenvalues (the larger first),
    derivatives scale-normalised (by sigma, sigma²).

    ``extended``: ``x`` already holds :func:`radius` pixels of context on every side (a region of a
    larger image); the result then has ``2 * radius`` fewer rows and columns.
    """
    if not filters:
        return x
    r = radius(filters)
    if extended:
        if x.shape[1] <= 2 * r or x.shape[2] <= 2 * r:
            raise InputError(f"a region of {x.shape[1]}x{x.shape[2]} pixels lacks the {r}-pixel context of the input filters")
        ext = x
    else:
        rows, cols = mirror_indices(x.shape[1], r, r), mirror_indices(x.shape[2], r, r)
        ext = x[:, rows[:, None], cols[None, :]]
    inner = (slice(r, ext.shape[1] - r), slice(r, ext.shape[2] - r))
    out = [ext[(slice(None), *inner)]]
    for c in range(ext.shape[0]):
        out.extend(_channel_features(ext[c], filters, inner))
    return np.ascontiguousarray(np.concatenate([o if o.ndim == 3 else o[None] for o in out]), dtype=x.dtype)


def _channel_features(img: np.ndarray, filters: dict, inner) -> list[np.ndarray]:
    img = np.asarray(img, np.float64)
    smoothed: dict[float, np.ndarray] = {}  # one Gaussian per scale, shared by the three kinds

    def gauss(sigma: float) -> np.ndarray:
        if sigma not in smoothed:
            smoothed[sigma] = ndi.gaussian_filter(img, sigma, mode="mirror", truncate=_TRUNCATE)
        return smoothed[sigma]

    out = [gauss(s)[inner] for s in filters["smooth"]]
    for s in filters["gradient"]:
        # central differences of the smoothed image: exactly zero on a constant
        g = gauss(s)
        gy, gx = np.zeros_like(g), np.zeros_like(g)
        gy[1:-1] = (g[2:] - g[:-2]) / 2
        gx[:, 1:-1] = (g[:, 2:] - g[:, :-2]) / 2
        out.append(np.hypot(gy[inner], gx[inner]) * s)
    for s in filters["hessian"]:
        # second differences of the smoothed image: exactly zero on a constant or a linear ramp
        g = gauss(s)
        a, b, c = np.zeros_like(g), np.zeros_like(g), np.zeros_like(g)
        a[1:-1] = g[2:] - 2 * g[1:-1] + g[:-2]
        c[:, 1:-1] = g[:, 2:] - 2 * g[:, 1:-1] + g[:, :-2]
        b[1:-1, 1:-1] = (g[2:, 2:] - g[2:, :-2] - g[:-2, 2:] + g[:-2, :-2]) / 4
        a, b, c = (v[inner] * s * s for v in (a, b, c))
        mid, half = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b * b)
        out += [mid + half, mid - half]
    return out

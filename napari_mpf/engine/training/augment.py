"""Random changes of a training batch beyond the rotations and flips.

- **Elastic deformation** (Simard et al. 2003; the U-Net recipe for ISBI 2012): a smooth random
  displacement field, cubic spline interpolated from a coarse grid of Gaussian vectors, moves
  every pixel of the batch's padded input (bilinear) and of its labels (nearest), so that the
  network sees plausible new shapes of the same structures. The labels are moved with the
  displacement of their own input pixel, so each stays with the pixel it was painted on.
- **Intensity jitter**: the normalised image's contrast and brightness change at random
  (``a * x + b``), and its input filters' outputs change exactly as filtering the changed image
  would change them (smoothings follow ``a * s + b``, derivatives ``a * d``), computed from the
  filters already applied. Only the image's channels change, not a first stage's probabilities
  (auto-context).
- **Shading**: the same change, but ``a`` and ``b`` vary smoothly across the batch (cubic spline
  interpolated from a 3 x 3 grid of random values spanning it), like an uneven light. The filter
  outputs follow the local ``a`` and ``b`` as under intensity jitter, which is exact only where
  the shading is flat over the filter's reach.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..network.features import n_outputs, offset_follows
from ..network.model import Model
from ..network.superpixels import relabel
from .loss import Batch

__all__ = ["GRID_SPACING", "elastic_deform", "displacement_field", "intensity_jitter", "shading"]

#: Spacing (pixels) of the coarse grid of random displacement vectors.
GRID_SPACING = 64


def displacement_field(shape: tuple[int, int], strength: float, rng: np.random.Generator,
                       spacing: int = GRID_SPACING) -> np.ndarray:
    """Displacements ``(2, H, W)`` (rows, columns): Gaussian vectors with standard deviation
    ``strength`` pixels on a grid of ``spacing`` pixels, cubic spline interpolated in between."""
    h, w = shape
    gh, gw = -(-h // spacing) + 1, -(-w // spacing) + 1
    coarse = rng.normal(0.0, strength, size=(2, gh, gw))
    # the coarse grid's first and last nodes sit on the field's first and last pixels
    rows = np.linspace(0, gh - 1, h)
    cols = np.linspace(0, gw - 1, w)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"))
    return np.stack([ndimage.map_coordinates(c, grid, order=3, mode="nearest") for c in coarse])


def elastic_deform(batch: Batch, window: tuple[int, int], strength: float, rng: np.random.Generator) -> Batch:
    """A new :class:`Batch` whose input, labels (and superpixels) are moved by one random smooth
    field of about ``strength`` pixels. Input pixels that come from outside the box are mirrored
    in; labels that come from outside it are unpainted (0)."""
    c, ph, pw = batch.padded.shape
    oh, ow = batch.labels.shape
    cy, cx = window[0] // 2, window[1] // 2
    field = displacement_field((ph, pw), strength, rng)
    coords = np.mgrid[0:ph, 0:pw].astype(np.float64) + field
    padded = np.empty_like(batch.padded)
    for k in range(c):
        ndimage.map_coordinates(batch.padded[k], coords, output=padded[k], order=1, mode="mirror")
    # the output pixel (i, j) is input pixel (i + cy, j + cx): it takes the label where that pixel came from
    src = np.rint(coords[:, cy : cy + oh, cx : cx + ow] - np.array([cy, cx])[:, None, None]).astype(np.intp)
    inside = (src[0] >= 0) & (src[0] < oh) & (src[1] >= 0) & (src[1] < ow)
    sy, sx = np.where(inside, src[0], 0), np.where(inside, src[1], 0)
    labels = np.where(inside, batch.labels[sy, sx], 0).astype(np.int32)
    out = Batch(padded, labels, valid=(oh, ow) if batch.valid is None else batch.valid,
                image_target=batch.image_target)
    if batch.segments is not None:
        segments = np.where(inside, batch.segments[sy, sx], -1)
        out.segments, out.n_segments = relabel(segments)
    return out


def intensity_jitter(batch: Batch, model: Model, amount: float, rng: np.random.Generator) -> Batch:
    """A new :class:`Batch` whose normalised image is ``a * x + b``, with ``log a`` and ``b`` drawn
    uniformly from ``[-amount, amount]`` (``b`` in units of the image's standard deviation), and
    its standardised filter outputs changed to match; a first stage's probabilities stay."""
    a = float(np.exp(rng.uniform(-amount, amount)))
    b = float(rng.uniform(-amount, amount))
    return _change_image(batch, model, a, b)


def shading(batch: Batch, model: Model, amount: float, rng: np.random.Generator) -> Batch:
    """A new :class:`Batch` whose normalised image channels are ``a * x + b`` with ``log a`` and
    ``b`` smooth random fields (standard deviation ``amount`` at the nodes of a 3 x 3 grid over the
    batch; ``b`` in units of the image's standard deviation), and their filter outputs changed to
    match (see the module's docstring)."""
    _, ph, pw = batch.padded.shape
    log_a, b = displacement_field((ph, pw), amount, rng, spacing=-(-max(ph, pw) // 2))
    return _change_image(batch, model, np.exp(log_a), b)


def _change_image(batch: Batch, model: Model, a, b) -> Batch:
    """The batch with its normalised image channels changed to ``a * x + b`` (numbers, or fields
    the batch's size) and their standardised filter outputs changed to match; a first stage's
    probabilities (channels ``in_channels`` to ``stage_channels``) and their filters stay."""
    padded = batch.padded.copy()
    image = model.in_channels
    padded[:image] = a * padded[:image] + b
    if model.filters:
        c, k = model.stage_channels, n_outputs(model.filters) - 1  # k filter outputs per channel, in turn
        follows = offset_follows(model.filters, 1)
        mean, std = np.asarray(model.filter_mean, np.float64), np.asarray(model.filter_std, np.float64)
        for i in range(image * k):
            # z = (f - m) / s and f -> a f + b [smoothings] give z -> a z + ((a - 1) m + b [smoothings]) / s
            padded[c + i] = a * padded[c + i] + ((a - 1) * mean[i] + b * follows[i % k]) / std[i]
    return Batch(padded, batch.labels, batch.segments, batch.n_segments, batch.valid, batch.image_target)

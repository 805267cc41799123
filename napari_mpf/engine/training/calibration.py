"""Class priors after training on strokes.

A network trained on strokes learns the class balance of the loss (equal classes with the balanced
loss, the painted shares without it), not that of the image: where the strokes leave room it
over-predicts the rarer class (52% membrane predicted where 22% is true, defects all over a tile).
:func:`prior_shift` estimates the image's class priors from the network's own probabilities over
every pixel, painted or not (one step of the EM of Saerens et al. 2002, from equal priors; more
steps ran away to a single class in the loop benchmark), and :func:`shift_model` adds
``log(prior * K)`` to the class scores through the last layer's biases. The model file stays a
plain network: an outside evaluator reads the corrected biases, and the shift itself is kept in
``provenance["prior_shift"]`` so that training can take it out before it continues, and put it back
after: a run that continues on the same images keeps the first estimate (estimated again after a
round of corrections of one kind, it ran away: membranes vanished in the loop benchmark). Which
images those were is kept as a fingerprint, :func:`images_key`, in ``provenance["prior_images"]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from ..network.model import Model

__all__ = ["PRIOR_FLOOR", "images_key", "prior_shift", "shift_model", "unshift_model", "shifted"]

#: the smallest prior a class is given (a class never predicted still keeps a finite score)
PRIOR_FLOOR = 1e-3


def prior_shift(probabilities: Iterable[np.ndarray]) -> np.ndarray:
    """``log(K * prior)`` per class, the prior being the mean probability over all pixels of the
    ``(K, H, W)`` arrays given (one EM step from equal priors)."""
    total, count = None, 0
    for p in probabilities:
        p = np.asarray(p, np.float64)
        s = p.reshape(p.shape[0], -1).sum(axis=1)
        total = s if total is None else total + s
        count += p[0].size
    if total is None or count == 0:
        raise ValueError("no probabilities to estimate the class priors from")
    prior = np.maximum(total / count, PRIOR_FLOOR)
    return np.log(prior / prior.sum() * prior.size)


def images_key(images: Iterable[np.ndarray]) -> str:
    """A fingerprint of images (their order, shapes, types and pixels)."""
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        a = np.ascontiguousarray(image)
        digest.update(f"{a.shape}{a.dtype.str};".encode())
        digest.update(a.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def shifted(probabilities: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``(K, ...)`` probabilities with ``shift`` added to their log (renormalised), float32."""
    z = np.log(np.maximum(np.asarray(probabilities, np.float64), 1e-30))
    z += np.asarray(shift, np.float64).reshape((-1,) + (1,) * (z.ndim - 1))
    z -= z.max(axis=0)
    e = np.exp(z)
    return (e / e.sum(axis=0)).astype(np.float32)


def _last_bias(model: Model) -> np.ndarray:
    return model.biases[model.n_layer_params - 1]


def shift_model(model: Model, shift: np.ndarray, images: str | None = None) -> None:
    """Add ``shift`` to the class scores of ``model`` (in place) and remember it in its provenance,
    with the :func:`images_key` of the images it was estimated on if given."""
    bias = _last_bias(model)
    bias += np.asarray(shift, bias.dtype)
    model.provenance["prior_shift"] = [float(v) for v in shift]
    if images is not None:
        model.provenance["prior_images"] = images


def unshift_model(model: Model) -> list[float] | None:
    """Take a shift made by :func:`shift_model` back out (in place) and return it (``None`` if
    there is none)."""
    shift = model.provenance.pop("prior_shift", None)
    model.provenance.pop("prior_images", None)
    if shift is not None:
        bias = _last_bias(model)
        bias -= np.asarray(shift, bias.dtype)
    return shift

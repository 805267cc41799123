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
images those were is kept as a fingerprint, :func:`images_key`, in ``provenance["prior_images"]``;
:class:`PriorCorrection` does all this for a training run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import numpy as np

from ..network.model import Model
from ..network.predict import predict_proba

__all__ = ["PRIOR_FLOOR", "PriorCorrection", "images_key", "prior_shift", "shift_model", "unshift_model", "shifted"]

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


def _hashed(digest, image: np.ndarray) -> np.ndarray:
    """``image``, its shape, type and pixels added to ``digest`` on the way."""
    a = np.ascontiguousarray(image)
    digest.update(f"{a.shape}{a.dtype.str};".encode())
    digest.update(a.reshape(-1).view(np.uint8))
    return image


def images_key(images: Iterable[np.ndarray]) -> str:
    """A fingerprint of images (their order, shapes, types and pixels)."""
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        _hashed(digest, image)
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


class PriorCorrection:
    """The correction of one training run: taken out of the network before it trains, then put back
    at the end, kept if it was estimated on the same images, else estimated again."""

    def __init__(self) -> None:
        self.shift: np.ndarray | None = None  # the kept correction (None: estimate it at the end)
        self.images: str | None = None  # the images_key it was estimated on

    def take_out(self, model: Model, images: Callable[[], Iterable[np.ndarray]], keep: bool = True) -> None:
        """Take the correction out of ``model`` (in place); keep it if ``keep`` and it was estimated
        on ``images()``."""
        key = model.provenance.get("prior_images")
        shift = unshift_model(model)
        same = keep and shift is not None and key is not None and key == images_key(images())
        self.shift = np.asarray(shift, np.float64) if same else None
        self.images = key if same else None

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """A preview's probabilities corrected: by the kept correction, else by their own priors."""
        return shifted(probabilities, self.shift if self.shift is not None else prior_shift([probabilities]))

    def put_back(self, model: Model, images: Callable[[], Iterable[np.ndarray]]) -> None:
        """Correct ``model`` (in place) by the kept correction, else by the class priors it sees on
        ``images()`` (each image loaded, predicted and fingerprinted once)."""
        if self.shift is not None:
            shift_model(model, self.shift, self.images)
            return
        digest = hashlib.blake2b(digest_size=16)
        shift = prior_shift(predict_proba(model, _hashed(digest, image)) for image in images())
        shift_model(model, shift, digest.hexdigest())

"""How much each class of strokes weighs in the loss.

The mean loss over the painted pixels learns the classes in the amounts painted, so a painter who
paints the background in 20 strokes and a defect in 5 gets a network that hides the defect (and the
prior correction, estimated from equal class shares, leans the same way). Weighing every painted
pixel the same is right for a painter who paints each class about as often; weighing every class
the same (the papers' balanced loss) over-predicts a small defect, whose strokes cover few pixels
because the defect is small. :func:`class_weights` sits between them: a class painted in fewer
strokes than the others weighs more, toward as many strokes per class, but never more than equal
pixel shares would give it (nor less than the plain mean). A stroke is an 8-connected piece of one
class; fully painted label images (dense masks) have no strokes, and train on the plain mean.
The trainer keeps a network's weights with its prior correction, so that corrections (often all of
one class) count at the first run's weights instead of weighing their own class down.
On a tiny defect several strokes merge into one piece, so the defect weighs more there too: more
false defects in a first preview (benchmarks/README.md, "Other painters").
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

__all__ = ["class_weights", "stroke_counts", "weights_for_labels"]

_EIGHT = np.ones((3, 3), bool)


def stroke_counts(labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Painted pixels and strokes of each class ``1..n_classes`` in a label image (0 = unpainted);
    a label image without an unpainted pixel has no strokes."""
    lab = np.asarray(labels)
    pixels = np.bincount(lab.ravel().astype(np.int64), minlength=n_classes + 1)[1 : n_classes + 1]
    strokes = np.zeros(n_classes, np.int64)
    if lab.size and not lab.all():
        for k in np.flatnonzero(pixels):
            strokes[k] = ndimage.label(lab == k + 1, structure=_EIGHT)[1]
    return pixels, strokes


def class_weights(pixels: np.ndarray, strokes: np.ndarray) -> np.ndarray:
    """Per-class weights of a painted pixel (1 for all: the plain mean) from the painted pixels and
    strokes of every class: each present class is weighed toward the mean stroke count over its
    own, clipped between 1 and what equal pixel shares would give it. Classes not painted get 0."""
    pixels, strokes = np.asarray(pixels, np.float64), np.asarray(strokes, np.float64)
    present = pixels > 0
    weights = np.zeros(pixels.shape)
    if not present.any():
        return weights
    by_pixels = pixels[present].mean() / pixels[present]
    stroked = strokes[present]
    mean = stroked[stroked > 0].mean() if stroked.any() else 1.0
    by_strokes = np.where(stroked > 0, mean / np.maximum(stroked, 1), 1.0)
    weights[present] = np.clip(by_strokes, np.minimum(1.0, by_pixels), np.maximum(1.0, by_pixels))
    return weights


def weights_for_labels(labels: Iterable[np.ndarray], n_classes: int) -> np.ndarray:
    """:func:`class_weights` over the strokes of all the label images given."""
    pixels, strokes = np.zeros(n_classes, np.int64), np.zeros(n_classes, np.int64)
    for lab in labels:
        p, s = stroke_counts(lab, n_classes)
        pixels += p
        strokes += s
    return class_weights(pixels, strokes)

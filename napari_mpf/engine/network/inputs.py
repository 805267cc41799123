"""Checks that turn user images and labels into the engine's arrays, or say clearly what is wrong."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["InputError", "as_image", "as_labels", "check_training_pairs"]


#: the largest float32: image values beyond it cannot reach the network
FLOAT32_MAX = float(np.finfo(np.float32).max)


class InputError(ValueError):
    """Images or labels the engine cannot use, with a sentence that says why."""


def as_image(image, in_channels: int | None = None, name: str = "image") -> np.ndarray:
    """Return ``image`` as a float ``(C, H, W)`` array (float64 stays float64, else float32).

    Refuses (with :class:`InputError`) empty, complex, non-numeric, NaN/inf images, values beyond
    float32's range, more than three
    dimensions, channels-last RGB and a channel count different from ``in_channels``.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name} has dtype {arr.dtype}; expected integer or floating-point pixels")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        if arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
            raise InputError(
                f"{name} has shape {arr.shape}, which looks like channels-last RGB(A); "
                "pass channels first as (C, H, W), e.g. np.moveaxis(image, -1, 0)"
            )
    else:
        raise InputError(
            f"{name} has {arr.ndim} dimensions {arr.shape}; expected (H, W) or (C, H, W) "
            "(for a stack, pass the slices one by one)"
        )
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if in_channels is not None and arr.shape[0] != in_channels:
        raise InputError(
            f"{name} has {arr.shape[0]} channel(s) but the model expects {in_channels}"
        )
    out = arr.astype(np.float64 if arr.dtype == np.float64 else np.float32, copy=False)
    if not np.isfinite(out).all():
        raise InputError(f"{name} contains NaN or infinite values")
    if out.dtype == np.float64 and max(float(out.max()), -float(out.min())) > FLOAT32_MAX:
        big = max(float(out.max()), -float(out.min()))
        raise InputError(
            f"{name} has values up to {big:.3g}, beyond the float32 range (±{FLOAT32_MAX:.3g}) the network "
            "computes in; rescale the image"
        )
    return out


def as_labels(labels, shape: tuple[int, int], name: str = "labels") -> np.ndarray:
    """Return ``labels`` as an int32 ``(H, W)`` array of classes (0 = unpainted), checked against ``shape``."""
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D (H, W), got shape {arr.shape}")
    if arr.shape != tuple(shape):
        raise InputError(
            f"{name} have shape {arr.shape} but the image is {tuple(shape)}: they must match pixel for pixel"
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or np.any(arr != np.round(arr)):
            raise InputError(f"{name} must hold whole numbers (0 = unpainted, 1..K = classes)")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} have dtype {arr.dtype}; expected integers")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} contain negative values; use 0 for unpainted and 1..K for classes")
    if arr.size and arr.max() > 255:
        raise InputError(f"{name} contain class {int(arr.max())}; at most 255 classes are supported")
    return arr.astype(np.int32)


def check_training_pairs(
    images: Sequence, labels: Sequence, in_channels: int | None = None, n_classes: int | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate (image, labels) pairs for training; returns ``(C, H, W)`` images and int32 labels.

    Needs at least one painted pixel and at least two classes over all pairs, and (if given) no class
    above ``n_classes``.
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images, labels = [images], [labels]
    images, labels = list(images), list(labels)
    if not images:
        raise InputError("no training images given")
    if len(images) != len(labels):
        raise InputError(f"{len(images)} image(s) but {len(labels)} label image(s): give one labels array per image")
    out_images, out_labels = [], []
    for n, (img, lab) in enumerate(zip(images, labels, strict=True)):
        suffix = f" {n + 1}" if len(images) > 1 else ""
        im = as_image(img, in_channels, name=f"image{suffix}")
        if in_channels is None:
            in_channels = im.shape[0]
        out_images.append(im)
        out_labels.append(as_labels(lab, im.shape[1:], name=f"labels{suffix}"))
    present = np.unique(np.concatenate([np.unique(lab) for lab in out_labels]))
    present = present[present > 0]
    if present.size == 0:
        raise InputError("no strokes: the labels have no painted pixels (0 means unpainted); paint at least two classes")
    if present.size == 1:
        raise InputError(
            f"only one class is painted (class {int(present[0])}); paint strokes of at least two classes"
        )
    if n_classes is not None and present.max() > n_classes:
        raise InputError(
            f"the labels use class {int(present.max())} but the model has {n_classes} classes"
        )
    return out_images, out_labels

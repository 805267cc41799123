"""Reading and writing images, label masks and outputs for the command line (no Qt, no napari):
the names of :mod:`.read`, :mod:`.write`, :mod:`.volume` and :mod:`.selection` in one namespace.

Readers return plain NumPy arrays: a *stack* file gives several 2-D images, an RGB file one
``(C, H, W)`` image. Every problem raises :class:`InputError` with a sentence naming the file.

Formats read: ``.tif``/``.tiff`` (tifffile), ``.png``/``.jpg``/``.jpeg`` (imageio), ``.npy``,
``.npz`` (one array by key), a zarr store (a directory named ``*.zarr`` or holding zarr metadata; in a
group the key picks the array) and a folder of images (one 2-D or RGB image per file, in natural
order: ``img2`` before ``img10``), which is read as a stack. :func:`open_volume` opens any of these
lazily as a :class:`Volume` that reads region by region (for volumes larger than memory). Formats written (atomically: a temporary file in the same directory,
then :func:`os.replace`): ``.tif``/``.tiff``, ``.npy``, ``.npz``, ``.png`` (8/16-bit only).

Layout rules for images:

- ``(H, W)``: one grayscale image;
- ``(H, W, 3|4)``: one RGB(A) image, returned channels first ``(C, H, W)``; a constant alpha
  channel is dropped (a PNG/JPEG's last axis is always colour: gray+alpha too);
- ``(Z, H, W)``: a stack of ``Z`` grayscale images (or, with ``channels_first=True``, one
  ``(C, H, W)`` image);
- ``(Z, H, W, 3|4)``: a stack of RGB(A) images; ``(Z, C, H, W)`` with ``channels_first=True``.

``slices`` (``"0:5"``, ``"3"``, ``"0,4,7"``, ``"::2"``) selects images of a stack along its first
axis; ``crop`` (``"0:256,128:384"``) cuts the same rows and columns out of every image.
"""

from __future__ import annotations

from ..network.inputs import InputError  # the engine's error type, so callers catch one class
from .read import (
    FOLDER_EXTENSIONS,
    MAX_CLASSES,
    MAX_LABEL,
    READ_EXTENSIONS,
    ImageSet,
    folder_files,
    is_zarr,
    read_array,
    read_images,
    read_labels,
)
from .selection import parse_crop, parse_slices
from .volume import ArrayVolume, Volume, open_volume
from .write import WRITE_EXTENSIONS, atomic_open, write_array

__all__ = [
    "InputError",
    "READ_EXTENSIONS",
    "FOLDER_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "MAX_LABEL",
    "MAX_CLASSES",
    "ImageSet",
    "parse_slices",
    "parse_crop",
    "read_array",
    "read_images",
    "read_labels",
    "write_array",
    "atomic_open",
    "Volume",
    "ArrayVolume",
    "open_volume",
    "is_zarr",
    "folder_files",
]

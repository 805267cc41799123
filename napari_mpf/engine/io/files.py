"""Reading and writing images, label masks and outputs for the command line (no Qt, no napari):
the names of :mod:`.read`, :mod:`.write`, :mod:`.volume` and :mod:`.selection` in one namespace.

Formats, layout rules, slices and crops: :mod:`.read`; atomic writing: :mod:`.write`; lazy volumes
larger than memory: :mod:`.volume`.
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

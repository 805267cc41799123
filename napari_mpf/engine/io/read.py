"""Reading images and label masks (no Qt, no napari).

Readers return plain NumPy arrays: a *stack* file gives several 2-D images, an RGB file one
``(C, H, W)`` image. Every problem raises :class:`InputError` with a sentence naming the file.

Formats read: ``.tif``/``.tiff`` (tifffile), ``.png``/``.jpg``/``.jpeg`` (imageio), ``.npy``,
``.npz`` (one array by key), a zarr store (a directory named ``*.zarr`` or holding zarr metadata; in a
group the key picks the array) and a folder of images (one 2-D or RGB image per file, in natural
order: ``img2`` before ``img10``), which is read as a stack. :func:`open_volume` opens any of these
lazily as a :class:`~napari_mpf.engine.io.volume.Volume` that reads region by region (for volumes
larger than memory).

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

import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..network.inputs import InputError  # the engine's error type, so callers catch one class
from .ngff import ngff_metadata, open_ngff
from .selection import parse_crop, parse_slices, select_indices

__all__ = [
    "READ_EXTENSIONS", "FOLDER_EXTENSIONS", "IMAGEIO_EXTENSIONS", "MAX_LABEL", "MAX_CLASSES", "ImageSet", "check_path",
    "read_array", "read_images", "read_labels", "is_zarr", "folder_files", "natural_key", "open_zarr",
]

READ_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".npz")
#: extensions of the files read from a folder of images (one image per file)
FOLDER_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
IMAGEIO_EXTENSIONS = (".png", ".jpg", ".jpeg")
#: the largest label value :func:`read_labels` accepts by default (16-bit masks); training takes
#: at most 255 classes (:data:`MAX_CLASSES`, as :func:`~napari_mpf.engine.network.inputs.as_labels`)
MAX_LABEL = 65535
MAX_CLASSES = 255


@dataclass
class ImageSet:
    """Images (or label masks) read from one file.

    ``arrays``: one array per image, ``(H, W)`` or ``(C, H, W)``; ``stack``: the file held a stack
    (so outputs keep a leading axis even for one selected slice); ``names``: a short name per image
    for messages, e.g. ``"train.npz:images[3]"``; ``indices``: the index of each image in the stack.
    """

    path: Path
    arrays: list[np.ndarray]
    stack: bool
    names: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.arrays)



# ----------------------------------------------------------------------------- reading


def check_path(path: str | os.PathLike, role: str) -> Path:
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in READ_EXTENSIONS:
        raise InputError(
            f"{role} file {p}: unknown extension '{p.suffix}'; use one of " + ", ".join(READ_EXTENSIONS)
        )
    if not p.exists():
        raise InputError(f"{role} file {p} does not exist")
    if p.is_dir():
        raise InputError(f"{role} file {p} is a directory, not a file")
    return p


def read_array(
    path: str | os.PathLike,
    key: str | None = None,
    *,
    default_key: str | None = None,
    role: str = "image",
    level: int | None = None,
) -> tuple[np.ndarray, str]:
    """Read the raw array of a file and return it with a short name for messages.

    For ``.npz`` files and zarr groups ``key`` picks the array; without it the only array, or
    ``default_key`` when present, is used. ``key`` given for another format is an error. A folder of
    images is read as a stack (all images must have the same shape). ``level``: the resolution level
    of an OME-Zarr image (default 0), read as ``(Z, C, H, W)`` with the axes it has.
    """
    if _is_store_or_folder(path):
        return _read_store_or_folder(Path(path), key, default_key, role, level)
    if level is not None:
        raise InputError(f"{role} file {path}: --level applies to OME-Zarr images only")
    p = check_path(path, role)
    ext = p.suffix.lower()
    if key is not None and ext != ".npz":
        raise InputError(f"{role} file {p}: a key ('{key}') only applies to .npz files")
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(p)
            name = str(p)
        elif ext in IMAGEIO_EXTENSIONS:
            import imageio.v3 as iio

            if role == "labels" and ext == ".png":
                from PIL import Image

                with Image.open(p) as im:  # palette (indexed) masks: keep the indices, not colours
                    arr = np.asarray(im) if im.mode in ("P", "L", "I", "I;16", "1") else iio.imread(p, plugin="pillow")
            else:
                arr = iio.imread(p, plugin="pillow")
            name = str(p)
        elif ext == ".npy":
            arr = np.load(p, allow_pickle=False)
            name = str(p)
        else:
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.files)
                if key is None:
                    if len(keys) == 1:
                        key = keys[0]
                    elif default_key is not None and default_key in keys:
                        key = default_key
                    else:
                        raise InputError(
                            f"{role} file {p} holds several arrays ({', '.join(keys) or 'none'}); "
                            f"choose one with --{'labels' if role == 'labels' else 'image'}-key"
                        )
                elif key not in keys:
                    raise InputError(
                        f"{role} file {p} has no array '{key}'; it holds: {', '.join(keys) or 'nothing'}"
                    )
                arr = z[key]
            name = f"{p}:{key}"
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, TypeError) as exc:
        raise InputError(f"{role} file {p} could not be read as {ext[1:]}: {exc}") from None
    except Exception as exc:  # decoders raise their own types (e.g. tifffile.TiffFileError)
        raise InputError(f"{role} file {p} could not be read as {ext[1:]}: {type(exc).__name__}: {exc}") from None
    arr = np.asarray(arr)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"{name}: the array is empty (shape {arr.shape})")
    return arr, name


def _crop(arr: np.ndarray, crop: tuple[slice, slice] | None, name: str) -> np.ndarray:
    if crop is None:
        return arr
    h, w = arr.shape[-2:]
    for axis, sl, n in (("rows", crop[0], h), ("columns", crop[1], w)):
        start = 0 if sl.start is None else sl.start
        stop = n if sl.stop is None else sl.stop
        if stop > n or start >= stop:
            raise InputError(
                f"--crop {axis} {start}:{stop} do not fit {name}, whose images are {h}x{w} (rows x columns)"
            )
    return arr[..., crop[0], crop[1]]


def _drop_constant_alpha(img: np.ndarray) -> np.ndarray:
    """``(4, H, W)`` RGBA or ``(2, H, W)`` gray+alpha with a constant alpha channel: drop it."""
    if img.shape[0] in (2, 4) and img[-1].min() == img[-1].max():
        img = img[:-1]
    return img[0] if img.shape[0] == 1 else img


def read_images(
    path: str | os.PathLike,
    key: str | None = None,
    slices: str | slice | list[int] | None = None,
    *,
    crop: str | tuple[slice, slice] | None = None,
    channels_first: bool = False,
    level: int | None = None,
) -> ImageSet:
    """Read the images of one file: a list of ``(H, W)`` or ``(C, H, W)`` arrays (see module doc).

    Values are kept in the file's dtype (booleans become uint8); NaN or infinite values are refused.
    An OME-Zarr image's axes say where its channels are (``channels_first`` does not apply).
    """
    if is_zarr(path):
        node, name = open_zarr(Path(path), key, "images", "image", level)
        channels_first = getattr(node, "channels_first", channels_first)
        arr = np.asarray(node[...])
    else:
        arr, name = read_array(path, key, default_key="images", role="image", level=level)
    sel = parse_slices(slices) if isinstance(slices, str) else slices
    crop_ = parse_crop(crop) if isinstance(crop, str) else crop
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    nd = arr.ndim
    rgb_last = nd >= 3 and arr.shape[-1] in (3, 4) and min(arr.shape[-3:-1]) > 4
    if nd == 3 and Path(path).suffix.lower() in IMAGEIO_EXTENSIONS and not channels_first:
        rgb_last = True  # PNG/JPEG hold one image: the last axis is colour (LA, RGB, RGBA)
    if nd == 2 or (nd == 3 and (channels_first or rgb_last)):
        if sel is not None:
            kind = "(C, H, W) image" if nd == 3 and channels_first else "single image"
            raise InputError(
                f"--slices selects images of a stack, but {name} holds one {kind} of shape {arr.shape}"
            )
        img = np.moveaxis(arr, -1, 0) if nd == 3 and not channels_first else arr
        if nd == 3 and not channels_first:
            img = _drop_constant_alpha(img)
        images, stack, idx = [np.ascontiguousarray(_crop(img, crop_, name))], False, [0]
    elif nd == 3 or (nd == 4 and (channels_first or rgb_last)):
        idx = select_indices(arr.shape[0], sel, name)
        images = []
        for i in idx:
            img = arr[i]
            if nd == 4 and not channels_first:
                img = _drop_constant_alpha(np.moveaxis(img, -1, 0))
            images.append(np.ascontiguousarray(_crop(img, crop_, name)))
        stack = True
    elif nd == 4:
        raise InputError(
            f"{name}: a 4-D array of shape {arr.shape} is ambiguous; store a stack of colour images "
            "as (Z, H, W, 3|4), or as (Z, C, H, W) and pass --channels-first"
        )
    else:
        raise InputError(
            f"{name}: expected a 2-D image, an RGB image (H, W, 3|4) or a stack (Z, H, W); got shape {arr.shape}"
        )
    names = [f"{name}[{i}]" for i in idx] if stack else [name]
    if arr.dtype.kind == "f":
        for img, n in zip(images, names, strict=True):
            if not np.isfinite(img).all():
                bad = int(np.size(img) - np.count_nonzero(np.isfinite(img)))
                raise InputError(f"{n}: {bad} pixel(s) are NaN or infinite; images must be finite")
    return ImageSet(Path(path), images, stack, names, idx)


def read_labels(
    path: str | os.PathLike,
    key: str | None = None,
    slices: str | slice | list[int] | None = None,
    *,
    crop: str | tuple[slice, slice] | None = None,
    offset: int = 0,
    max_label: int = MAX_LABEL,
) -> ImageSet:
    """Read label masks: a list of ``(H, W)`` int32 arrays (0 = unpainted, 1..K = classes).

    ``offset`` is added to **every** pixel (``offset=1`` turns a dense 0/1 mask, where 0 is a class
    too, into classes 1/2). A grey RGB label image (three equal channels) is read as one channel.
    Non-integer, negative or non-finite values, and values above ``max_label`` (after ``offset``),
    raise :class:`InputError` before anything is allocated per label value.
    """
    arr, name = read_array(path, key, default_key="labels", role="labels")
    sel = parse_slices(slices) if isinstance(slices, str) else slices
    crop_ = parse_crop(crop) if isinstance(crop, str) else crop
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim >= 3 and arr.shape[-1] in (3, 4) and min(arr.shape[-3:-1]) > 4:
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise InputError(
                f"{name}: labels must be single-channel integer images (0 = unpainted, 1..K = classes); "
                f"this is a colour image of shape {arr.shape}"
            )
        arr = arr[..., 0]
    if arr.ndim == 2:
        if sel is not None:
            raise InputError(f"--slices selects images of a stack, but {name} holds one mask of shape {arr.shape}")
        masks, stack, idx = [arr], False, [0]
    elif arr.ndim == 3:
        idx = select_indices(arr.shape[0], sel, name)
        masks, stack = [arr[i] for i in idx], True
    else:
        raise InputError(f"{name}: labels must be (H, W) or a stack (Z, H, W); got shape {arr.shape}")
    names = [f"{name}[{i}]" for i in idx] if stack else [name]
    out = []
    for m, n in zip(masks, names, strict=True):
        m = _crop(m, crop_, name)
        if m.dtype.kind == "f":
            if not np.isfinite(m).all():
                raise InputError(f"{n}: labels contain NaN or infinite values")
            if not np.array_equal(m, np.round(m)):
                raise InputError(f"{n}: labels must be whole numbers (0 = unpainted, 1..K = classes)")
        lo, hi = float(m.min()), float(m.max())
        if lo + offset < 0:
            raise InputError(
                f"{n}: labels must not be negative (found {lo:g}"
                + (f" with --label-offset {offset}" if offset else "")
                + ")"
            )
        if hi + offset > max_label:
            shifted = f" + --label-offset {offset} = {hi + offset:.0f}" if offset else ""
            raise InputError(
                f"{n}: the labels go up to {hi:.0f}{shifted}; at most {max_label} classes are supported "
                f"(0 = unpainted, 1..{max_label} = classes)"
            )
        m = m.astype(np.int32)
        if offset:
            m += np.int32(offset)
        out.append(np.ascontiguousarray(m))
    return ImageSet(Path(path), out, stack, names, idx)



# ----------------------------------------------------------------------------- zarr stores and folders

_ZARR_META = ("zarr.json", ".zarray", ".zgroup")


def is_zarr(path: str | os.PathLike) -> bool:
    """A directory that is a zarr store (named ``*.zarr`` or holding zarr metadata)."""
    p = Path(path)
    return p.is_dir() and (p.suffix.lower() == ".zarr" or any((p / m).exists() for m in _ZARR_META))


def _is_store_or_folder(path: str | os.PathLike) -> bool:
    """A zarr store, or a directory whose name does not look like a file (a folder of images)."""
    p = Path(path)
    return p.is_dir() and (is_zarr(p) or p.suffix.lower() not in READ_EXTENSIONS)


def natural_key(p: Path) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", p.name) if t]


def folder_files(path: str | os.PathLike) -> list[Path]:
    """The image files of a folder (``FOLDER_EXTENSIONS``, no hidden files), in natural order."""
    p = Path(path)
    files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in FOLDER_EXTENSIONS]
    return sorted(files, key=natural_key)


def open_zarr(path: Path, key: str | None, default_key: str | None, role: str, level: int | None = None):
    """The zarr array of a store: the store's only array, the array of a group picked by ``key``, or
    level ``level`` of an OME-Zarr image (an :class:`~.ngff.NgffView`, channels before rows)."""
    import zarr

    opt = "--labels-key" if role == "labels" else "--image-key"
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise InputError(f"{role} store {path} could not be opened as zarr: {type(exc).__name__}: {exc}") from None
    meta = ngff_metadata(node) if isinstance(node, zarr.Group) else None
    if meta is not None:
        if key is not None:
            raise InputError(f"{role} store {path} is an OME-Zarr image: choose a resolution with --level, not a key ('{key}')")
        return open_ngff(path, node, meta, level, role)
    if level is not None:
        raise InputError(f"{role} store {path}: --level applies to OME-Zarr images (with 'multiscales' metadata) only")
    if isinstance(node, zarr.Group):
        names = sorted(node.array_keys())
        if key is None:
            if len(names) == 1:
                key = names[0]
            elif default_key is not None and default_key in names:
                key = default_key
            else:
                raise InputError(
                    f"{role} store {path} holds {'several arrays (' + ', '.join(names) + ')' if names else 'no array'}; "
                    f"choose one with {opt}"
                )
        try:
            node = node[key]
        except KeyError:
            raise InputError(f"{role} store {path} has no array '{key}'; it holds: {', '.join(names) or 'nothing'}") from None
        if not isinstance(node, zarr.Array):
            raise InputError(f"{role} store {path}: '{key}' is a group, not an array")
        name = f"{path}:{key}"
    else:
        if key is not None:
            raise InputError(f"{role} store {path} holds one array; a key ('{key}') only applies to a zarr group")
        name = str(path)
    if node.dtype.kind not in "biuf":
        raise InputError(f"{name}: expected a numeric array, got dtype {node.dtype}")
    if node.size == 0:
        raise InputError(f"{name}: the array is empty (shape {node.shape})")
    return node, name


def _read_store_or_folder(p: Path, key: str | None, default_key: str | None, role: str,
                          level: int | None = None) -> tuple[np.ndarray, str]:
    if is_zarr(p):
        arr, name = open_zarr(p, key, default_key, role, level)
        return np.asarray(arr[...]), name
    if level is not None:
        raise InputError(f"{role} {p}: --level applies to OME-Zarr images only")
    if key is not None:
        raise InputError(f"{role} folder {p}: a key ('{key}') only applies to .npz files and zarr stores")
    files = folder_files(p)
    if not files:
        raise InputError(f"{role} folder {p} holds no images (" + ", ".join(FOLDER_EXTENSIONS) + ")")
    arrays: list[np.ndarray] = []
    for f in files:
        a, _ = read_array(f, role=role)
        if arrays and a.shape != arrays[0].shape:
            raise InputError(
                f"{role} folder {p}: {f.name} has shape {a.shape} but {files[0].name} has {arrays[0].shape}; "
                "all images of a folder must have the same shape"
            )
        arrays.append(a)
    return np.stack(arrays), str(p)

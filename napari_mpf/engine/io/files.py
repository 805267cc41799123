"""Reading and writing images, label masks and outputs for the command line (no Qt, no napari).

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

import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..network.inputs import InputError  # the engine's error type, so callers catch one class
from .atomic import Staged, make_temp, write_error_text

__all__ = [
    "InputError",
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
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

READ_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".npz")
#: extensions of the files read from a folder of images (one image per file)
FOLDER_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
WRITE_EXTENSIONS = (".tif", ".tiff", ".npy", ".npz", ".png")
_IMAGEIO = (".png", ".jpg", ".jpeg")
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


# ----------------------------------------------------------------------------- option parsing


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{what}: '{text}' is not an integer") from None


def parse_slices(text: str | None) -> slice | list[int] | None:
    """Parse a selection of stack slices: ``"0:5"``, ``"3"``, ``"0,4,7"``, ``"::2"`` or ``None``.

    Ranges follow Python (stop excluded). Raises :class:`InputError` for text that is not one.
    """
    if text is None:
        return None
    s = str(text).strip()
    what = f"bad --slices '{text}'"
    if not s:
        raise InputError(f"{what}: give a range such as 0:5, an index such as 3 or a list such as 0,4,7")
    if ":" in s:
        if "," in s:
            raise InputError(f"{what}: use either a range (0:5) or a list (0,4,7), not both")
        parts = s.split(":")
        if len(parts) > 3:
            raise InputError(f"{what}: a range has at most start:stop:step")
        start, stop, *rest = (p.strip() for p in parts)
        step = rest[0] if rest else ""
        sl = slice(
            _int(start, what) if start else None,
            _int(stop, what) if stop else None,
            _int(step, what) if step else None,
        )
        if sl.step is not None and sl.step <= 0:
            raise InputError(f"{what}: the step must be positive")
        return sl
    return [_int(p.strip(), what) for p in s.split(",")]


def parse_crop(text: str | None) -> tuple[slice, slice] | None:
    """Parse a crop ``"y0:y1,x0:x1"`` (either part may be ``:`` for all) into two slices."""
    if text is None:
        return None
    what = f"bad --crop '{text}'"
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise InputError(f"{what}: give rows and columns as y0:y1,x0:x1 (e.g. 0:256,0:256)")
    out = []
    for p in parts:
        bits = p.split(":")
        if len(bits) != 2:
            raise InputError(f"{what}: each part must be a range start:stop such as 0:256")
        a, b = (x.strip() for x in bits)
        start = _int(a, what) if a else None
        stop = _int(b, what) if b else None
        if (start is not None and start < 0) or (stop is not None and stop < 0):
            raise InputError(f"{what}: use non-negative pixel positions")
        out.append(slice(start, stop))
    return out[0], out[1]


def _select(n: int, sel: slice | list[int] | None, src: str) -> list[int]:
    """Indices of a stack of ``n`` selected by ``sel``, refusing anything out of range or empty."""
    if sel is None:
        return list(range(n))
    if isinstance(sel, slice):
        for name, v in (("start", sel.start), ("stop", sel.stop)):
            if v is not None and not (-n <= v <= n) or (name == "start" and v is not None and v == n):
                raise InputError(
                    f"--slices {_fmt_slice(sel)}: {name} {v} is outside {src}, which has {n} slices (0..{n - 1})"
                )
        idx = list(range(n))[sel]
        if not idx:
            raise InputError(f"--slices {_fmt_slice(sel)} selects no slice of {src} ({n} slices, 0..{n - 1})")
        return idx
    out = []
    for i in sel:
        if not -n <= i < n:
            raise InputError(f"--slices: index {i} is outside {src}, which has {n} slices (0..{n - 1})")
        out.append(i % n)
    return out


def _fmt_slice(sel: slice) -> str:
    s = f"{'' if sel.start is None else sel.start}:{'' if sel.stop is None else sel.stop}"
    return s + (f":{sel.step}" if sel.step is not None else "")


# ----------------------------------------------------------------------------- reading


def _check_path(path: str | os.PathLike, role: str) -> Path:
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
) -> tuple[np.ndarray, str]:
    """Read the raw array of a file and return it with a short name for messages.

    For ``.npz`` files and zarr groups ``key`` picks the array; without it the only array, or
    ``default_key`` when present, is used. ``key`` given for another format is an error. A folder of
    images is read as a stack (all images must have the same shape).
    """
    if _is_store_or_folder(path):
        return _read_store_or_folder(Path(path), key, default_key, role)
    p = _check_path(path, role)
    ext = p.suffix.lower()
    if key is not None and ext != ".npz":
        raise InputError(f"{role} file {p}: a key ('{key}') only applies to .npz files")
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(p)
            name = str(p)
        elif ext in _IMAGEIO:
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
) -> ImageSet:
    """Read the images of one file: a list of ``(H, W)`` or ``(C, H, W)`` arrays (see module doc).

    Values are kept in the file's dtype (booleans become uint8); NaN or infinite values are refused.
    """
    arr, name = read_array(path, key, default_key="images", role="image")
    sel = parse_slices(slices) if isinstance(slices, str) else slices
    crop_ = parse_crop(crop) if isinstance(crop, str) else crop
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    nd = arr.ndim
    rgb_last = nd >= 3 and arr.shape[-1] in (3, 4) and min(arr.shape[-3:-1]) > 4
    if nd == 3 and Path(path).suffix.lower() in _IMAGEIO and not channels_first:
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
        idx = _select(arr.shape[0], sel, name)
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
        idx = _select(arr.shape[0], sel, name)
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


# ----------------------------------------------------------------------------- writing


@contextmanager
def atomic_open(path: str | os.PathLike, stage: Staged | None = None) -> Iterator:
    """Open a temporary file next to ``path`` for binary writing; on success move it over ``path``
    (with ``stage``, leave that to :meth:`~napari_mpf.engine.io.atomic.Staged.commit`).

    On any error the temporary file is removed and an existing ``path`` is left untouched. Temporary
    files of ``path`` left by a killed writer are removed first.
    """
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"cannot write {p}: the directory {directory} does not exist")
    if p.is_dir():
        raise InputError(f"cannot write {p}: it is a directory")
    try:
        mode = p.stat().st_mode & 0o777 if p.exists() else 0o644
        fd, tmp = make_temp(p)
    except OSError as exc:
        raise InputError(write_error_text(exc, p)) from None
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:  # a named file: some writers (tifffile) want its name
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if stage is not None:
            stage.add(tmp, p, mode)
            return
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def write_array(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    key: str = "data",
    extra: dict[str, np.ndarray] | None = None,
    allowed: tuple[str, ...] = WRITE_EXTENSIONS,
    role: str = "output",
    stage: Staged | None = None,
) -> Path:
    """Write ``array`` atomically (with ``stage``, once the stage commits); the format follows the
    extension.

    ``.npz`` stores ``array`` under ``key`` plus the arrays in ``extra``. ``.png`` accepts 2-D (or
    ``(H, W, 3|4)``) integer arrays with values 0..65535 only (8-bit when they fit).
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in allowed:
        raise InputError(f"{role} file {p}: unknown extension '{p.suffix}'; use one of " + ", ".join(allowed))
    a = np.asarray(array)
    if ext == ".png":
        if a.dtype.kind not in "biu" or not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
            raise InputError(
                f"{role} file {p}: PNG holds one 2-D 8/16-bit image; got {a.dtype} of shape {a.shape}; "
                "write .tif, .npy or .npz instead"
            )
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise InputError(f"{role} file {p}: values {lo}..{hi} do not fit a 16-bit PNG; write .tif instead")
        a = a.astype(np.uint8 if hi < 256 else np.uint16)
    try:
        with atomic_open(p, stage) as fh:
            if ext == ".npy":
                np.save(fh, a, allow_pickle=False)
            elif ext == ".npz":
                np.savez_compressed(fh, **{key: a}, **(extra or {}))
            elif ext in (".tif", ".tiff"):
                import tifffile

                # never RGB: (3, H, W) probabilities are three planes, not a colour image
                tifffile.imwrite(fh, a, photometric="minisblack")
            else:
                import imageio.v3 as iio

                iio.imwrite(fh, a, extension=".png")
    except InputError:
        raise
    except OSError as exc:
        raise InputError(write_error_text(exc, p)) from None
    return p


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


def _natural_key(p: Path) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", p.name) if t]


def folder_files(path: str | os.PathLike) -> list[Path]:
    """The image files of a folder (``FOLDER_EXTENSIONS``, no hidden files), in natural order."""
    p = Path(path)
    files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in FOLDER_EXTENSIONS]
    return sorted(files, key=_natural_key)


def _open_zarr(path: Path, key: str | None, default_key: str | None, role: str):
    """The zarr array of a store: the store's only array, or the array of a group picked by ``key``."""
    import zarr

    opt = "--labels-key" if role == "labels" else "--image-key"
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise InputError(f"{role} store {path} could not be opened as zarr: {type(exc).__name__}: {exc}") from None
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


def _read_store_or_folder(p: Path, key: str | None, default_key: str | None, role: str) -> tuple[np.ndarray, str]:
    if is_zarr(p):
        arr, name = _open_zarr(p, key, default_key, role)
        return np.asarray(arr[...]), name
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


# ----------------------------------------------------------------------------- volumes (lazy, region by region)


def _layout(shape: tuple[int, ...], channels_first: bool, name: str, single_image: bool = False) -> tuple[bool, str | None]:
    """``(stack, channel axis)`` of an array shape, by the rules of :func:`read_images`.

    The channel axis is ``None`` (grayscale), ``"first"`` (``(C, H, W)`` / ``(Z, C, H, W)``) or
    ``"last"`` (``(H, W, C)`` / ``(Z, H, W, C)``).
    """
    nd = len(shape)
    rgb_last = nd >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4
    if nd == 3 and single_image and not channels_first:
        rgb_last = True
    if nd == 2:
        return False, None
    if nd == 3:
        if channels_first:
            return False, "first"
        return (False, "last") if rgb_last else (True, None)
    if nd == 4:
        if channels_first:
            return True, "first"
        if rgb_last:
            return True, "last"
        raise InputError(
            f"{name}: a 4-D array of shape {shape} is ambiguous; store a stack of colour images "
            "as (Z, H, W, 3|4), or as (Z, C, H, W) and pass --channels-first"
        )
    raise InputError(f"{name}: expected a 2-D image, an RGB image (H, W, 3|4) or a stack (Z, H, W); got shape {shape}")


class Volume:
    """A stack of 2-D images (``n_slices`` x ``channels`` x ``height`` x ``width``) read region by region.

    Nothing is read until :meth:`read` asks for a region, so a volume may be far larger than memory.
    ``stack`` says whether the source was a stack (outputs keep a leading axis); ``names`` gives a
    short name per slice for messages and tables. A volume pickles without its open file handles, so
    it can be sent to dask workers. Subclasses implement :meth:`_plane`.
    """

    def __init__(self, name: str, raw_shape: tuple[int, ...], dtype, stack: bool, channel_axis: str | None,
                 slices=None, crop=None, names: list[str] | None = None):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.stack = bool(stack)
        self.channel_axis = channel_axis
        shape = list(raw_shape)
        n_raw = shape.pop(0) if stack else 1
        if channel_axis == "first":
            self.channels = shape.pop(0)
        elif channel_axis == "last":
            self.channels = shape.pop()
        else:
            self.channels = 1
        h, w = shape
        sel = parse_slices(slices) if isinstance(slices, str) else slices
        if not stack and sel is not None:
            raise InputError(f"--slices selects images of a stack, but {name} holds one image of shape {tuple(raw_shape)}")
        self.indices = _select(n_raw, sel, name) if stack else [0]
        crop_ = parse_crop(crop) if isinstance(crop, str) else crop
        if crop_ is None:
            self.origin = (0, 0)
            self.height, self.width = h, w
        else:
            bounds = []
            for axis, sl, n in (("rows", crop_[0], h), ("columns", crop_[1], w)):
                start = 0 if sl.start is None else sl.start
                stop = n if sl.stop is None else sl.stop
                if stop > n or start >= stop:
                    raise InputError(f"--crop {axis} {start}:{stop} do not fit {name}, whose images are {h}x{w} (rows x columns)")
                bounds.append((start, stop))
            self.origin = (bounds[0][0], bounds[1][0])
            self.height, self.width = bounds[0][1] - bounds[0][0], bounds[1][1] - bounds[1][0]
        if names is not None:
            self.names = [names[i] for i in self.indices]
        else:
            self.names = [f"{name}[{i}]" for i in self.indices] if stack else [name]

    @property
    def n_slices(self) -> int:
        return len(self.indices)

    @property
    def source_id(self) -> str:
        """What the volume reads (an absolute path for files), to recognise the same input again."""
        path = getattr(self, "path", None)
        if path is None:
            return self.name
        key = getattr(self, "key", None)
        return f"{path}:{key}" if key else str(path)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(Z, C, H, W)``."""
        return self.n_slices, self.channels, self.height, self.width

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.n_slices

    def read(self, z: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Pixels ``(C, h, w)`` (file dtype) of slice ``z`` (0-based in the selection), rows and columns
        relative to the crop."""
        r0, r1, _ = rows.indices(self.height)
        c0, c1, _ = cols.indices(self.width)
        oy, ox = self.origin
        plane = self._plane(self.indices[z], slice(oy + r0, oy + r1), slice(ox + c0, ox + c1))
        plane = np.asarray(plane)
        if self.channel_axis == "last":
            plane = np.moveaxis(plane, -1, 0)
        elif self.channel_axis is None:
            plane = plane[None]
        if plane.dtype == bool:
            plane = plane.astype(np.uint8)
        return plane

    def _plane(self, zi: int, rows: slice, cols: slice) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _index(self, zi: int, rows: slice, cols: slice) -> tuple:
        """Index of a region into an array laid out like the source."""
        idx: tuple = (zi,) if self.stack else ()
        if self.channel_axis == "first":
            idx += (slice(None),)
        return (*idx, rows, cols)

    def __repr__(self) -> str:
        z, c, h, w = self.shape
        return f"{type(self).__name__}({self.name!r}, {z} slice(s) of {h}x{w}, {c} channel(s), {self.dtype})"


class ArrayVolume(Volume):
    """A volume over an array already open in this process: NumPy, zarr, dask or any array that slices.

    ``rgb``: the last axis holds colour channels (napari's RGB layers); otherwise a 3-D array is a
    stack of grayscale images. (Not for sending to another process: the array goes with it.)
    """

    def __init__(self, array, rgb: bool = False, name: str = "array", slices=None, crop=None):
        self.array = array
        shape = tuple(array.shape)
        nd = len(shape) - (1 if rgb else 0)
        if nd not in (2, 3):
            raise InputError(f"{name}: expected (H, W) or (Z, H, W) (with a colour axis last if RGB), got shape {shape}")
        super().__init__(name, shape, array.dtype, nd == 3, "last" if rgb else None, slices, crop)

    def _plane(self, zi, rows, cols):
        region = self.array[self._index(zi, rows, cols)]
        if hasattr(region, "compute"):  # dask: compute this region here, without nesting schedulers
            region = region.compute(scheduler="sync")
        return np.asarray(region)


class _PlaneCache:
    """The last few whole planes decoded in this process (formats that cannot read a region)."""

    def __init__(self, size: int = 2):
        import threading

        self.size = size
        self.lock = threading.Lock()
        self.items: dict = {}

    def get(self, key, load):
        with self.lock:
            if key in self.items:
                value = self.items.pop(key)
                self.items[key] = value
                return value
        value = load()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.pop(next(iter(self.items)))
        return value


_PLANES = _PlaneCache()


class FileVolume(Volume):
    """A volume over one file or zarr store, opened lazily in each process that reads it.

    ``.npy`` and uncompressed TIFF are memory-mapped; zarr, and compressed TIFF through tifffile's
    zarr view, decode only the chunks (strips, tiles) a region touches; ``.npz``, PNG and JPEG are
    read once, whole.
    """

    def __init__(self, path, key=None, slices=None, crop=None, channels_first=False, role="image"):
        p = Path(path)
        self.path, self.key, self.role = p.resolve(), key, role
        self._given = p  # names in messages keep the path as given; workers open the absolute path
        self._handle = None
        self._kind, raw_shape, dtype, name = self._probe(key, role)
        stack, caxis = _layout(raw_shape, channels_first, name, single_image=p.suffix.lower() in _IMAGEIO)
        super().__init__(name, raw_shape, dtype, stack, caxis, slices, crop)

    def _probe(self, key, role):
        p = self._given
        if is_zarr(p):
            arr, name = _open_zarr(p, key, "images" if role == "image" else "labels", role)
            self._handle = arr
            return "zarr", tuple(arr.shape), arr.dtype, name
        ext = p.suffix.lower()
        if ext in (".tif", ".tiff") and key is None:
            _check_path(p, role)
            import tifffile

            try:
                mm = tifffile.memmap(p, mode="r")
                self._handle = mm
                return "tiff-memmap", tuple(mm.shape), mm.dtype, str(p)
            except Exception:  # noqa: BLE001 - compressed or not contiguous: read page by page
                pass
            try:  # compressed: tifffile's zarr view decodes only the strips/tiles a region touches
                arr = self._tiff_zarr(p)
            except Exception as exc:  # noqa: BLE001 - tifffile raises its own types
                raise InputError(f"{role} file {p} could not be read as tif: {type(exc).__name__}: {exc}") from None
            if arr.dtype.kind in "biuf" and arr.size:
                self._handle = arr
                return "tiff-zarr", tuple(arr.shape), arr.dtype, str(p)
        if ext == ".npy" and key is None:
            _check_path(p, role)
            try:
                mm = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"{role} file {p} could not be read as npy: {exc}") from None
            if mm.dtype.kind in "biuf" and mm.size:
                self._handle = mm
                return "npy", tuple(mm.shape), mm.dtype, str(p)
        arr, name = read_array(p, key, default_key="images" if role == "image" else "labels", role=role)
        self._handle = arr
        return "memory", tuple(arr.shape), arr.dtype, name

    @staticmethod
    def _tiff_zarr(path):
        import tifffile
        import zarr

        return zarr.open(tifffile.imread(path, aszarr=True), mode="r")

    def __getstate__(self):
        state = dict(self.__dict__)
        if self._kind != "memory":
            state["_handle"] = None
        return state

    def _open(self):
        if self._handle is None:
            if self._kind == "zarr":
                self._handle, _ = _open_zarr(self.path, self.key, "images" if self.role == "image" else "labels", self.role)
            elif self._kind == "tiff-memmap":
                import tifffile

                self._handle = tifffile.memmap(self.path, mode="r")
            elif self._kind == "tiff-zarr":
                self._handle = self._tiff_zarr(self.path)
            elif self._kind == "npy":
                self._handle = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._handle

    def _plane(self, zi, rows, cols):
        return np.asarray(self._open()[self._index(zi, rows, cols)])


class FolderVolume(Volume):
    """A folder of images as a stack: slice ``z`` is the ``z``-th file in natural order."""

    def __init__(self, path, slices=None, crop=None, channels_first=False, role="image"):
        p = Path(path)
        self.path, self.role = p.resolve(), role
        self.files = folder_files(self.path)
        if not self.files:
            raise InputError(f"{role} folder {p} holds no images (" + ", ".join(FOLDER_EXTENSIONS) + ")")
        first, _ = read_array(self.files[0], role=role)
        self.plane_shape = first.shape
        _, caxis = _layout(first.shape, channels_first, str(self.files[0]), single_image=self.files[0].suffix.lower() in _IMAGEIO)
        raw_shape = (len(self.files), *first.shape)
        super().__init__(str(p), raw_shape, first.dtype, True, caxis, slices, crop, names=[f.name for f in self.files])

    def _plane(self, zi, rows, cols):
        f = self.files[zi]

        def load():
            arr, _ = read_array(f, role=self.role)
            if arr.shape != self.plane_shape:
                raise InputError(
                    f"{self.role} folder {self.path}: {f.name} has shape {arr.shape} but {self.files[0].name} has "
                    f"{self.plane_shape}; all images of a folder must have the same shape"
                )
            return arr

        plane = _PLANES.get((str(f), 0), load)
        return plane[self._index(zi, rows, cols)[1:]]


def open_volume(
    path: str | os.PathLike,
    key: str | None = None,
    slices: str | slice | list[int] | None = None,
    *,
    crop: str | tuple[slice, slice] | None = None,
    channels_first: bool = False,
    role: str = "image",
) -> Volume:
    """Open a file, zarr store or folder of images as a lazy :class:`Volume` (same layout rules,
    ``slices`` and ``crop`` as :func:`read_images`)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{role} file {p} does not exist")
    if p.is_dir() and not is_zarr(p):
        if p.suffix.lower() in READ_EXTENSIONS:
            raise InputError(f"{role} file {p} is a directory, not a file")
        if key is not None:
            raise InputError(f"{role} folder {p}: a key ('{key}') only applies to .npz files and zarr stores")
        return FolderVolume(p, slices, crop, channels_first, role)
    return FileVolume(p, key, slices, crop, channels_first, role)

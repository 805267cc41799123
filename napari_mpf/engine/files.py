"""Reading and writing images, label masks and outputs for the command line (no Qt, no napari).

Readers return plain NumPy arrays: a *stack* file gives several 2-D images, an RGB file one
``(C, H, W)`` image. Every problem raises :class:`InputError` with a sentence naming the file.

Formats read: ``.tif``/``.tiff`` (tifffile), ``.png``/``.jpg``/``.jpeg`` (imageio), ``.npy``,
``.npz`` (one array by key). Formats written (atomically: a temporary file in the same directory,
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
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .inputs import InputError  # the engine's error type, so callers catch one class

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
]

READ_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".npz")
WRITE_EXTENSIONS = (".tif", ".tiff", ".npy", ".npz", ".png")
_IMAGEIO = (".png", ".jpg", ".jpeg")


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

    For ``.npz`` files ``key`` picks the array; without it the only array, or ``default_key`` when
    present, is used. ``key`` given for another format is an error.
    """
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
) -> ImageSet:
    """Read label masks: a list of ``(H, W)`` int32 arrays (0 = unpainted, 1..K = classes).

    ``offset`` is added to **every** pixel (``offset=1`` turns a dense 0/1 mask, where 0 is a class
    too, into classes 1/2). A grey RGB label image (three equal channels) is read as one channel.
    Non-integer, negative or non-finite values raise :class:`InputError`.
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
        if hi + offset > np.iinfo(np.int32).max // 2:
            raise InputError(f"{n}: label value {hi:g} is too large")
        m = m.astype(np.int32)
        if offset:
            m += np.int32(offset)
        out.append(np.ascontiguousarray(m))
    return ImageSet(Path(path), out, stack, names, idx)


# ----------------------------------------------------------------------------- writing


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator:
    """Open a temporary file next to ``path`` for binary writing; on success move it over ``path``.

    On any error the temporary file is removed and an existing ``path`` is left untouched.
    """
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"cannot write {p}: the directory {directory} does not exist")
    if p.is_dir():
        raise InputError(f"cannot write {p}: it is a directory")
    try:
        mode = p.stat().st_mode & 0o777 if p.exists() else 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InputError(f"cannot write {p}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:  # a named file: some writers (tifffile) want its name
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
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
) -> Path:
    """Write ``array`` atomically; the format follows the extension.

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
        with atomic_open(p) as fh:
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
        raise InputError(f"cannot write {p}: {exc.strerror or exc}") from None
    return p

"""Writing outputs atomically: a temporary file in the same directory, then :func:`os.replace`
(or, with a :class:`~napari_mpf.engine.io.atomic.Staged`, when the stage commits). Formats:
``.tif``/``.tiff``, ``.npy``, ``.npz``, ``.png`` (8/16-bit only)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from ..network.inputs import InputError
from .atomic import Staged, make_temp, write_error_text

__all__ = ["WRITE_EXTENSIONS", "atomic_open", "write_array"]

WRITE_EXTENSIONS = (".tif", ".tiff", ".npy", ".npz", ".png")

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

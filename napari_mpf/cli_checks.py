"""Checks the command line makes before any work: outputs writable, memory enough, labels sensible.

Also the argument parser whose errors take the one documented form, ``napari-mpf: error: <what is
wrong>`` with exit code 2, and the last resort of ``train`` when the model cannot be written where
asked (it is saved elsewhere, so the training is not lost).
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .engine import save_model
from .engine.io.atomic import make_temp, write_error_text
from .engine.network.spec import network_bytes

PROG = "napari-mpf"
#: errno values of a failed write or read that are the user's environment, not a bug
ENVIRONMENT_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
    if e is not None
)


class CLIError(Exception):
    """A user error found by the command line itself (turned into exit code 2)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors read ``napari-mpf: error: <command>: <message>`` (exit 2),
    like every other user error, with a pointer to ``--help`` instead of the usage text."""

    def error(self, message: str):
        command = self.prog[len(PROG):].strip()
        where = f"{command}: " if command else ""
        hint = f"see '{self.prog} --help'"
        self.exit(2, f"{PROG}: error: {where}{message} ({hint})\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


# ----------------------------------------------------------------------------- outputs


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_writable(path: str | os.PathLike, need: int = 0, inside: bool = False) -> None:
    """Refuse (:class:`CLIError`) an output that cannot be written: its folder read-only or not ours
    (a temporary file is made there and removed), or fewer than ``need`` bytes free. ``inside``:
    ``path`` is a folder (a zarr store) whose contents are written."""
    p = Path(path)
    probe = p / ".napari-mpf-probe" if inside else p
    try:
        fd, tmp = make_temp(probe)
    except OSError as exc:
        raise CLIError(write_error_text(exc, p)) from None
    os.close(fd)
    os.unlink(tmp)
    if need > 0:
        try:
            free = shutil.disk_usage(p if inside else _folder(p)).free
        except OSError:
            return
        if free < need:
            raise CLIError(f"cannot write {p}: the disk is full ({human_bytes(free)} free, about "
                           f"{human_bytes(need)} needed)")


def save_elsewhere(model, out: Path, exc: BaseException) -> CLIError:
    """The trained model could not be written to ``out``: save it in the current folder or the
    temporary folder instead and return the error that says where it went."""
    why = write_error_text(exc, out) if isinstance(exc, OSError) else str(exc)
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        target = folder / out.name
        if target.resolve() == out.resolve() or target.exists():
            target = folder / f"{out.stem}.rescued{out.suffix}"
        try:
            save_model(model, target)
        except Exception:  # noqa: BLE001 - any failure here: try the next folder
            continue
        return CLIError(f"{why}; the trained model was saved to {target} instead")
    return CLIError(f"{why}; the trained model could not be saved anywhere (also tried {Path.cwd()} and "
                    f"{tempfile.gettempdir()})")


def model_file_bytes(model) -> int:
    """About the size of ``model``'s file (float32 weights and a header)."""
    n = model.n_params
    context = getattr(model, "context", None)
    while context is not None:
        n += context.n_params
        context = getattr(context, "context", None)
    return 4 * int(n) + 65536


# ----------------------------------------------------------------------------- memory


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def predict_memory(model, shapes: Sequence[tuple[int, ...]], augment: bool = False) -> int:
    """Bytes an in-memory prediction of images of ``shapes`` (``(H, W)`` or ``(C, H, W)``) needs:
    per image its float copy, normalised and padded input, scores, probabilities and their encoding,
    and one tile's activations; for all images the probabilities and labels kept for the output."""
    k = model.n_classes
    item = np.dtype(model.dtype).itemsize
    n_in = model.net_in_channels
    tile, _ = network_bytes(model.spec, n_in)
    tile -= 16 * model.n_params  # network_bytes counts training state; prediction needs the weights once
    peak = kept = 0
    for shape in shapes:
        h, w = int(shape[-2]), int(shape[-1])
        c = int(shape[0]) if len(shape) == 3 else 1
        wh, ww = model.window
        one = 4 * h * w * c + item * (n_in * h * w + n_in * (h + wh) * (w + ww) + 3 * k * h * w) + max(tile, 0)
        if augment:
            one += 4 * k * h * w * 2
        if model.context is not None:
            one += predict_memory(model.context, [shape])
        peak = max(peak, one)
        kept += 4 * k * h * w + h * w
    return peak + 2 * kept


def check_predict_memory(model, shapes: Sequence[tuple[int, ...]], augment: bool = False) -> None:
    """Refuse an in-memory prediction that needs more memory than is available, pointing to .zarr."""
    need = predict_memory(model, shapes, augment)
    have = available_memory()
    if have is not None and need > have:
        h, w = shapes[0][-2:]
        what = f"{len(shapes)} image(s) of {h}x{w} pixels" if len(shapes) > 1 else f"an image of {h}x{w} pixels"
        raise CLIError(
            f"predicting {what} in memory needs about {human_bytes(need)}, but {human_bytes(have)} is available; "
            "write --out NAME.zarr instead to predict chunk by chunk in bounded memory"
        )


# ----------------------------------------------------------------------------- labels


def unpainted_classes_note(counts: np.ndarray) -> str | None:
    """A warning when label values between 1 and the largest are never painted (e.g. only 1 and 5):
    the model still gets a class for each, which it never learns."""
    top = len(counts) - 1
    missing = [k for k in range(1, top + 1) if counts[k] == 0]
    if not missing:
        return None
    painted = [k for k in range(1, top + 1) if counts[k]]
    shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
    return (f"{PROG}: warning: label value(s) {shown} are never painted (painted: "
            f"{', '.join(map(str, painted[:10]))}{', ...' if len(painted) > 10 else ''}); the model gets "
            f"{top} classes and never learns {len(missing)} of them; renumber the labels 1..K to avoid that")


def warn(text: str | None) -> None:
    if text:
        print(text, file=sys.stderr)

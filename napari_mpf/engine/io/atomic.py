"""Atomic writes: temporary files next to the target, stale ones cleaned, several outputs committed together.

A write goes to ``.NAME.<pid>.<random>.tmp`` in the target's folder and is renamed over ``NAME`` at
the end. A process killed mid-write (``kill -9``, power cut) leaves its temporary file behind; the
next write of the same ``NAME`` removes those whose process is gone (and untagged ones older than an
hour, from earlier versions). :class:`Staged` holds finished temporary files until every output of a
command is written, then renames them all, so a command that fails writes nothing.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from contextlib import suppress
from pathlib import Path

__all__ = ["Staged", "clean_stale_temps", "make_temp", "write_error_text"]

#: an untagged temporary file (an earlier version's) counts as stale after this many seconds
UNTAGGED_STALE_S = 3600.0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or we cannot tell: keep its file
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed writer of ``path`` left; return the ones removed."""
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    prefix = f".{p.name}."
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        middle = name[len(prefix):-len(".tmp")]
        m = re.fullmatch(r"(\d+)\.[A-Za-z0-9_]+", middle)
        try:
            if m is not None:
                stale = not _alive(int(m.group(1)))
            elif re.fullmatch(r"[A-Za-z0-9_]+", middle):
                stale = now - entry.stat(follow_symlinks=False).st_mtime > UNTAGGED_STALE_S
            else:
                stale = False
            if stale and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def make_temp(path: str | os.PathLike) -> tuple[int, str]:
    """``(fd, name)`` of a new temporary file for ``path`` in its folder, after cleaning stale ones."""
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    clean_stale_temps(p)
    return tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=".tmp", dir=directory)


def write_error_text(exc: OSError, path: str | os.PathLike) -> str:
    """A sentence for a failed write of ``path``, naming a full disk or a read-only file system.

    NumPy reports a short write as ``OSError('4608 requested and 992 written')`` without an errno,
    so a folder with (almost) no free space also counts as a full disk.
    """
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"cannot write {p}: the disk is full (no space left on the device)"
    if code == errno.EROFS:
        return f"cannot write {p}: the file system is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot write {p}: permission denied"
    if "requested and" in str(exc) and "written" in str(exc):
        return f"cannot write {p}: the disk is full (only part of the data could be written)"
    with suppress(OSError):
        if shutil.disk_usage(directory).free < 1 << 20:
            return f"cannot write {p}: the disk is full ({exc.strerror or exc})"
    return f"cannot write {p}: {exc.strerror or exc}"


class Staged:
    """Finished temporary files waiting to replace their targets: :meth:`commit` renames them all,
    :meth:`discard` removes them (used as a context manager: commit on success, discard on error)."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Path, int]] = []

    def add(self, tmp: str, target: Path, mode: int) -> None:
        self.pending.append((tmp, Path(target), mode))

    def commit(self) -> None:
        for tmp, _, mode in self.pending:
            os.chmod(tmp, mode)
        while self.pending:
            tmp, target, _ = self.pending[0]
            os.replace(tmp, target)
            self.pending.pop(0)

    def discard(self) -> None:
        for tmp, _, _ in self.pending:
            with suppress(OSError):
                os.unlink(tmp)
        self.pending.clear()

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            try:
                self.commit()
            finally:
                self.discard()
        else:
            self.discard()

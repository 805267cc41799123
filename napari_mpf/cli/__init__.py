"""Command line: ``napari-mpf train | predict | info | demo`` (no Qt, no napari).

Every user error (missing or unreadable file, bad spec or option, shapes that do not match, labels
with no strokes, a corrupt model file, an output that cannot be written) ends with
``napari-mpf: error: <message>`` on stderr and exit code 2, without a traceback; every output is
checked before any work and written atomically, all at the end. Ctrl-C exits with code 130.
"""

from __future__ import annotations

import sys

try:  # Ctrl-C while the command starts (NumPy's import): no traceback, as after any Ctrl-C
    import argparse
    import contextlib
    import os
    from collections.abc import Sequence

    from .. import engine
    from ..cli_checks import ENVIRONMENT_ERRNOS, CLIError
    from ..engine.io import files
    from ..engine.io.atomic import write_error_text
    from .arguments import build_parser
    from .common import PROG
except KeyboardInterrupt:  # pragma: no cover - exercised in a subprocess by the tests
    sys.stderr.write("napari-mpf: aborted\n")
    raise SystemExit(130) from None

__all__ = ["build_parser", "main"]


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [CLIError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError]
    errors.append(files.InputError)
    for name in ("InputError", "SpecError", "ModelFileError"):
        cls = getattr(engine, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename is not None else exc.strerror
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 user error, 130 interrupted)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        errors = _user_errors()
        return _run(args, errors)
    except KeyboardInterrupt:  # also while the engine is imported (the first second)
        print(f"{PROG}: aborted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, errors: tuple[type[BaseException], ...]) -> int:
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `napari-mpf info model.npz | head`: the reader left; not an error
        # Python would report the pipe again when flushing stdout at exit
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except errors as exc:
        print(f"{PROG}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only file system: the environment, not a bug
        if exc.errno not in ENVIRONMENT_ERRNOS and "requested and" not in str(exc):
            raise
        what = write_error_text(exc, exc.filename or "an output")
        print(f"{PROG}: error: {what}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{PROG}: error: out of memory; for big images write --out NAME.zarr (chunk by chunk, bounded memory)",
              file=sys.stderr)
        return 2


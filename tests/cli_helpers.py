"""Helpers for the command-line tests (imported by test_cli.py and test_cli_scale.py)."""

from __future__ import annotations

from napari_mpf import cli


def run(capsys, *argv):
    """``main(argv)`` -> (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, *argv) -> str:
    """Run a command that must fail cleanly; return its message."""
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("napari-mpf: error: "), err
    assert "Traceback" not in err
    return err

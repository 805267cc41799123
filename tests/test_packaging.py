"""The base install is the engine and the command line: neither imports napari or Qt, and the
base requirements do not list them (they are the ``napari`` extra's)."""

import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")

_PROBE = """
import contextlib, io, json, sys
import napari_mpf, napari_mpf.engine, napari_mpf.cli, napari_mpf._reader, napari_mpf._sample_data
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        napari_mpf.cli.main(["--help"])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "help": out.getvalue(),
                  "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_engine_and_cli_import_neither_napari_nor_qt():
    res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    probe = json.loads(res.stdout.strip().splitlines()[-1])
    assert probe["code"] in (0, None) and "napari-mpf" in probe["help"]
    assert not set(GUI_MODULES) & set(probe["loaded"])


def _requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower().replace("_", "-"))
    return names


def test_base_requirements_leave_napari_and_qt_to_extras():
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    base = _requirement_names(cfg["options"]["install_requires"])
    assert {"numpy", "numba", "scipy", "dask"} <= base
    assert not base & {"napari", "qtpy", "magicgui", "npe2", "pyqt5", "pyqt6", "pyside2", "pyside6"}
    extras = cfg["options.extras_require"]
    assert {"napari", "qtpy"} <= _requirement_names(extras["napari"])
    assert {"napari", "qtpy", "npe2", "pyqt6", "pytest-qt"} <= _requirement_names(extras["testing"])
    # the plugin stays discoverable by an existing napari in every install
    assert "napari_mpf:napari.yaml" in cfg["options.entry_points"]["napari.manifest"]

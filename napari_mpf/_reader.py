"""npe2 reader for napari-mpf model files: opening one loads it into the trainer widget.

A model file adds no layer; the reader docks the trainer (if needed), loads the model there and
returns napari's "read, nothing to add" sentinel ``[(None,)]``. Other ``.npz`` files are declined.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

__all__ = ["get_reader", "is_model_file", "read_model"]

PLUGIN = "napari-mpf"
WIDGET = "MPF trainer"


def is_model_file(path) -> bool:
    """True if ``path`` is an ``.npz`` whose header says it is a napari-mpf model (cheap check)."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        import numpy as np

        with np.load(path, allow_pickle=False) as data:
            if "header" not in data.files:
                return False
            header = json.loads(str(data["header"]))
    except (OSError, ValueError, zipfile.BadZipFile, KeyError):
        return False
    return isinstance(header, dict) and header.get("format") == "napari-mpf-model"


def get_reader(path):
    """Return :func:`read_model` for one napari-mpf model file, else None."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    return read_model if is_model_file(path) else None


def read_model(path):
    """Load the model into the current viewer's trainer widget; adds no layer."""
    import napari

    if isinstance(path, list | tuple):
        path = path[0]
    viewer = napari.current_viewer()
    if viewer is None:
        raise ValueError("open a napari viewer first: a model file is loaded into the MPF trainer widget")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    if widget.import_model(path) is None:
        raise ValueError(f"{path}: not a usable napari-mpf model file")
    return [(None,)]

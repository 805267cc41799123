"""npe2 reader for napari-mpf model files: opening one loads it into the trainer widget.

The manifest registers the reader for the model suffix ``*.mpf.npz`` only, so other ``.npz`` files
stay napari's. A model file adds no layer; the reader docks the trainer (if needed), loads the
model there and returns napari's "read, nothing to add" sentinel ``[(None,)]``. A ``*.mpf.npz``
that is not a usable model is refused with the reason. Models named plain ``.npz`` (older files)
load through the widget's Import and the command line (npe2 offers a reader only the files its
patterns match, even when the plugin is named).
"""

from __future__ import annotations

import os
from pathlib import Path

from .engine import ModelFileError, load_model
from .engine.io.modelfile import MODEL_SUFFIX

__all__ = ["MODEL_SUFFIX", "get_reader", "is_model_path", "read_model"]

PLUGIN = "napari-mpf"
WIDGET = "MPF trainer"


def is_model_path(path: str | os.PathLike) -> bool:
    """True if ``path`` is named like a model file (``*.mpf.npz``, any case); its content is not read."""
    return Path(path).name.lower().endswith(MODEL_SUFFIX)


def get_reader(path):
    """Return :func:`read_model` for one ``*.mpf.npz`` file, else None.

    Every ``*.mpf.npz`` file is claimed, so that one that is not a usable model is refused by
    :func:`read_model` with the reason rather than by napari's generic "refused the file".
    """
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    return read_model if is_model_path(path) and not os.path.isdir(path) else None


def read_model(path):
    """Load the model into the current viewer's trainer widget; adds no layer.

    Raises :class:`~napari_mpf.engine.ModelFileError` (reason first, then the path) if the file
    is not a usable model, before any widget is docked.
    """
    if isinstance(path, list | tuple):
        path = path[0]
    try:
        model = load_model(path)
    except ModelFileError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise ModelFileError(f"{reason}: {path}") from exc
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read the model file ({type(exc).__name__}: {exc}): {path}") from exc

    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        raise ValueError("open a napari viewer first: a model file is loaded into the MPF trainer widget")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.use_model(model, Path(path).name)
    return [(None,)]

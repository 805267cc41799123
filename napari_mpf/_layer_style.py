"""How class labels look in napari: names as Labels ``features``, fixed colours. No Qt, no napari."""

from __future__ import annotations

import numpy as np

from .engine.post.colors import class_color

__all__ = ["DEFAULT_CLASS_NAMES", "class_colormap", "class_features", "class_names_from_features"]

DEFAULT_CLASS_NAMES = ("background", "foreground")


def class_colormap(n_classes: int) -> dict:
    """A direct label colormap dict (0 transparent) for ``n_classes`` classes."""
    cmap: dict = {None: "transparent", 0: "transparent"}
    for k in range(1, n_classes + 1):
        cmap[k] = class_color(k)
    return cmap


def class_features(class_names: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """Labels-layer ``features`` naming each label value (napari shows them under the cursor)."""
    names = ["unpainted", *class_names]
    return {"index": np.arange(len(names)), "class": np.array(names, dtype=object)}


def class_names_from_features(features, n_classes: int | None = None) -> list[str] | None:
    """Read class names back from a Labels layer's features table (None if absent)."""
    try:
        if features is None or "class" not in features or "index" not in features:
            return None
        mapping = {int(i): str(c) for i, c in zip(features["index"], features["class"], strict=True)}
    except (TypeError, ValueError, KeyError):
        return None
    top = max(mapping) if mapping else 0
    if n_classes is not None:
        top = max(top, n_classes)
    if top < 1:
        return None
    return [mapping.get(k, f"class {k}") for k in range(1, top + 1)]

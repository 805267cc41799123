"""How class labels look in napari: names as Labels ``features``, fixed colours. No Qt, no napari."""

from __future__ import annotations

import numpy as np

#: label value -> colour of the ground-truth classes (1 = background, 2 = foreground, ...).
CLASS_COLORS: dict[int, str] = {
    1: "#1f77ff",  # background: blue
    2: "#ffd500",  # membrane / defect: yellow
    3: "#ff3b30",
    4: "#34c759",
    5: "#af52de",
    6: "#ff9500",
    7: "#00c7be",
    8: "#ff2d55",
}

DEFAULT_CLASS_NAMES = ("background", "foreground")


def class_colormap(n_classes: int) -> dict:
    """A direct label colormap dict (0 transparent) for ``n_classes`` classes."""
    cmap: dict = {None: "transparent", 0: "transparent"}
    for k in range(1, n_classes + 1):
        cmap[k] = CLASS_COLORS.get(k, "#cccccc")
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

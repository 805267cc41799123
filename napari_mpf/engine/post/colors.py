"""The fixed colour of each class label, shared by the napari layers and the OME-Zarr
``image-label`` metadata of a prediction store."""

from __future__ import annotations

__all__ = ["CLASS_COLORS", "class_color", "class_rgba"]

#: label value -> colour of the classes (1 = background, 2 = foreground, ...).
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
OTHER_COLOR = "#cccccc"


def class_color(label: int) -> str:
    """``#rrggbb`` of label value ``label`` (1-based)."""
    return CLASS_COLORS.get(int(label), OTHER_COLOR)


def class_rgba(label: int, alpha: int = 255) -> list[int]:
    """``[r, g, b, a]`` (0..255) of label value ``label``."""
    h = class_color(label).lstrip("#")
    return [int(h[i:i + 2], 16) for i in (0, 2, 4)] + [int(alpha)]

"""Per-slice object counts: the settings and the CSV table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..io.write import atomic_open

__all__ = ["CountSettings", "write_counts_csv"]

@dataclass(frozen=True)
class CountSettings:
    """Per-slice objects of class ``class_index`` (0-based): see :func:`~napari_mpf.engine.post.objects.count_objects`."""

    class_index: int = 1
    threshold: float = 0.5
    min_area: int = 1
    min_count: int | None = 1
    min_pixels: int | None = None

    def as_dict(self) -> dict:
        return {"class_index": int(self.class_index), "threshold": float(self.threshold), "min_area": int(self.min_area),
                "min_count": self.min_count, "min_pixels": self.min_pixels}


def write_counts_csv(path: str | Path, class_names: list[str], rows, with_counts: bool = True,
                     extra: dict[str, list[float]] | None = None, stage=None) -> Path:
    """Write the per-slice table (atomically). ``rows``: ``(slice, name, (count, object_pixels,
    defect_present) or None, class fractions)``; a count of -1 (not counted) is left empty.
    ``extra``: more columns, one value per row (e.g. an image-level head's probabilities);
    ``stage``: an :class:`~napari_mpf.engine.io.atomic.Staged` that replaces the file when it commits."""
    extra = extra or {}
    header = ["slice", "name"] + (["count", "object_pixels", "defect_present"] if with_counts else [])
    header += [f"fraction_{n}" for n in class_names] + list(extra)
    lines = [",".join(_csv(h) for h in header)]
    for i, (z, name, c, fractions) in enumerate(rows):
        row = [str(int(z)), _csv(name)]
        if with_counts:
            if c is None or c[0] < 0:
                row += ["", "", ""]
            else:
                row += [str(int(c[0])), str(int(c[1])), "true" if c[2] else "false"]
        row += [f"{float(v):.6f}" for v in fractions]
        row += [f"{float(values[i]):.6f}" for values in extra.values()]
        lines.append(",".join(row))
    with atomic_open(path, stage) as fh:
        fh.write(("\n".join(lines) + "\n").encode())
    return Path(path)


def _csv(text: str) -> str:
    text = str(text)
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text

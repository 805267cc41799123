"""Selections of a stack and crops given as text: ``slices`` (``"0:5"``, ``"3"``, ``"0,4,7"``,
``"::2"``) and ``crop`` (``"0:256,128:384"``)."""

from __future__ import annotations

from ..network.inputs import InputError

__all__ = ["parse_slices", "parse_crop", "select_indices"]

# ----------------------------------------------------------------------------- option parsing


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{what}: '{text}' is not an integer") from None


def parse_slices(text: str | None) -> slice | list[int] | None:
    """Parse a selection of stack slices: ``"0:5"``, ``"3"``, ``"0,4,7"``, ``"::2"`` or ``None``.

    Ranges follow Python (stop excluded). Raises :class:`InputError` for text that is not one.
    """
    if text is None:
        return None
    s = str(text).strip()
    what = f"bad --slices '{text}'"
    if not s:
        raise InputError(f"{what}: give a range such as 0:5, an index such as 3 or a list such as 0,4,7")
    if ":" in s:
        if "," in s:
            raise InputError(f"{what}: use either a range (0:5) or a list (0,4,7), not both")
        parts = s.split(":")
        if len(parts) > 3:
            raise InputError(f"{what}: a range has at most start:stop:step")
        start, stop, *rest = (p.strip() for p in parts)
        step = rest[0] if rest else ""
        sl = slice(
            _int(start, what) if start else None,
            _int(stop, what) if stop else None,
            _int(step, what) if step else None,
        )
        if sl.step is not None and sl.step <= 0:
            raise InputError(f"{what}: the step must be positive")
        return sl
    return [_int(p.strip(), what) for p in s.split(",")]


def parse_crop(text: str | None) -> tuple[slice, slice] | None:
    """Parse a crop ``"y0:y1,x0:x1"`` (either part may be ``:`` for all) into two slices."""
    if text is None:
        return None
    what = f"bad --crop '{text}'"
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise InputError(f"{what}: give rows and columns as y0:y1,x0:x1 (e.g. 0:256,0:256)")
    out = []
    for p in parts:
        bits = p.split(":")
        if len(bits) != 2:
            raise InputError(f"{what}: each part must be a range start:stop such as 0:256")
        a, b = (x.strip() for x in bits)
        start = _int(a, what) if a else None
        stop = _int(b, what) if b else None
        if (start is not None and start < 0) or (stop is not None and stop < 0):
            raise InputError(f"{what}: use non-negative pixel positions")
        out.append(slice(start, stop))
    return out[0], out[1]


def select_indices(n: int, sel: slice | list[int] | None, src: str) -> list[int]:
    """Indices of a stack of ``n`` selected by ``sel``, refusing anything out of range or empty."""
    if sel is None:
        return list(range(n))
    if isinstance(sel, slice):
        for name, v in (("start", sel.start), ("stop", sel.stop)):
            if v is not None and not (-n <= v <= n) or (name == "start" and v is not None and v == n):
                raise InputError(
                    f"--slices {_fmt_slice(sel)}: {name} {v} is outside {src}, which has {n} slices (0..{n - 1})"
                )
        idx = list(range(n))[sel]
        if not idx:
            raise InputError(f"--slices {_fmt_slice(sel)} selects no slice of {src} ({n} slices, 0..{n - 1})")
        return idx
    out = []
    for i in sel:
        if not -n <= i < n:
            raise InputError(f"--slices: index {i} is outside {src}, which has {n} slices (0..{n - 1})")
        out.append(i % n)
    return out


def _fmt_slice(sel: slice) -> str:
    s = f"{'' if sel.start is None else sel.start}:{'' if sel.stop is None else sel.stop}"
    return s + (f":{sel.step}" if sel.step is not None else "")

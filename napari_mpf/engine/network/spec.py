"""Network specs in the papers' notation, e.g. ``C7x7x8, MPF2x2, C5x5x8, MPF2x2, C5x5x8, FC100, FC2``.

Tokens (comma or space separated, case-insensitive):

- ``C<kh>x<kw>x<n>`` (or ``C<k>x<n>``): valid convolution, ``n`` output maps, then the activation
  (``C5x5``, with the two numbers equal, is refused as ambiguous: kernel without maps?);
- ``MPF<p>x<p>`` / ``MP<p>``: max-pooling with stride ``p`` (evaluated densely as fragments);
- ``FC<n>``: fully connected; a convolution over the remaining extent of the map;
- optional leading ``IN<h>x<w>`` (or ``IN<s>``): the declared input window; checked going forwards.

Without ``IN`` the window is derived backwards from a 1×1 output (so an FC layer covers 1×1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PRESET", "SpecError", "LayerSpec", "NetworkSpec", "PRESETS", "MAX_NETWORK_BYTES", "check_network_size",
    "network_bytes", "parse_spec", "resolve_spec",
]


class SpecError(ValueError):
    """A network spec that cannot work, with a message saying what and where."""


@dataclass(frozen=True)
class LayerSpec:
    """One layer: ``kind`` is ``"conv"``, ``"pool"`` or ``"fc"``.

    ``size`` is the kernel (conv/fc) or pooling (pool) size ``(h, w)``; ``maps`` the number of output
    maps (0 for pooling). For ``fc`` the size is the extent it covers, known once the spec is resolved.
    """

    kind: str
    size: tuple[int, int]
    maps: int = 0

    def __str__(self) -> str:
        h, w = self.size
        if self.kind == "conv":
            return f"C{h}x{w}x{self.maps}"
        if self.kind == "pool":
            return f"MPF{h}x{w}"
        return f"FC{self.maps}"


@dataclass(frozen=True)
class NetworkSpec:
    """A resolved network: layers with sizes, the input window and the total pooling factor."""

    layers: tuple[LayerSpec, ...]
    window: tuple[int, int]

    @property
    def pool_factor(self) -> tuple[int, int]:
        fy = fx = 1
        for layer in self.layers:
            if layer.kind == "pool":
                fy *= layer.size[0]
                fx *= layer.size[1]
        return fy, fx

    @property
    def n_classes(self) -> int:
        return self.layers[-1].maps

    @property
    def text(self) -> str:
        return ", ".join(str(layer) for layer in self.layers)

    @property
    def centre(self) -> tuple[int, int]:
        """Offset of the classified pixel inside the window (``w // 2``; for even windows the lower)."""
        return self.window[0] // 2, self.window[1] // 2

    def __str__(self) -> str:
        return self.text


#: Named networks. The final ``FC<classes>`` is appended when the spec is resolved.
#: the preset a new network gets unless told otherwise (CLI, widget and Python API alike); chosen by
#: the loop benchmark (benchmarks/loop.py)
DEFAULT_PRESET = "fast"

PRESETS: dict[str, str] = {
    # small and quick for interactive use: 24x24 window
    "fast": "C5x5x16, MPF2x2, C5x5x16, MPF2x2, C3x3x24, FC48",
    # between fast and n3: three pooling stages for a 52x52 window (more context at ~2x fast's cost)
    "wide": "C5x5x16, MPF2x2, C5x5x16, MPF2x2, C5x5x24, MPF2x2, C3x3x32, FC64",
    # wide with twice the maps: the lowest ISBI pixel error at equal steps, ~4x wide's time per step
    "wide2": "C5x5x32, MPF2x2, C5x5x32, MPF2x2, C5x5x48, MPF2x2, C3x3x48, FC128",
    # Masci et al. 2013 steel-defect net: window 34x34 (the paper quotes 31)
    "steel": "C7x7x8, MPF2x2, C5x5x8, MPF2x2, C5x5x8, FC100",
    # Ciresan et al. 2012 N3 membrane net: window 63x63 (the paper quotes 65)
    "n3": "C4x4x48, MPF2x2, C5x5x48, MPF2x2, C4x4x48, MPF2x2, C4x4x48, MPF2x2, FC200",
}

_TOKEN = re.compile(
    r"^(?:(?P<in>IN)(?P<in_h>\d+)(?:X(?P<in_w>\d+))?"
    r"|(?P<c>C)(?P<c_a>\d+)X(?P<c_b>\d+)(?:X(?P<c_c>\d+))?"
    r"|(?P<p>MPF|MP)(?P<p_h>\d+)(?:X(?P<p_w>\d+))?"
    r"|(?P<fc>FC)(?P<fc_n>\d+))$"
)


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s;]+", text.strip()) if t]


def parse_spec(text: str, n_classes: int | None = None) -> NetworkSpec:
    """Parse and resolve ``text`` (a spec or a preset name) into a :class:`NetworkSpec`.

    If ``n_classes`` is given, the output layer ``FC<n_classes>`` is appended unless the spec already
    ends with it (so ``..., FC48`` with 2 classes means a hidden FC48 and an output FC2).
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError("empty network spec: give a preset name (" + ", ".join(PRESETS) + ") or layers such as 'C5x5x8, MPF2x2, FC2'")
    key = text.strip().lower()
    tokens = _tokens(PRESETS[key] if key in PRESETS else text)
    declared: tuple[int, int] | None = None
    layers: list[LayerSpec] = []
    for i, raw in enumerate(tokens, start=1):
        m = _TOKEN.match(raw.upper())
        where = f"token {i} '{raw}'"
        if m is None:
            raise SpecError(
                f"{where}: not understood; expected C<k>x<k>x<maps>, MPF<p>x<p>, FC<n> or IN<h>x<w>"
            )
        if m["in"]:
            if layers or declared is not None:
                raise SpecError(f"{where}: the input window IN... may only be the first token")
            h = int(m["in_h"])
            declared = (h, int(m["in_w"]) if m["in_w"] else h)
            if min(declared) < 1:
                raise SpecError(f"{where}: the input window must be at least 1x1")
            continue
        if m["c"]:
            a, b, c = int(m["c_a"]), int(m["c_b"]), m["c_c"]
            if c is None and a == b:
                raise SpecError(
                    f"{where}: ambiguous; C<k>x<maps> means a {a}x{a} kernel with {b} maps, so write "
                    f"C{a}x{a}x{b} for that, or C{a}x{b}x<maps> for a {a}x{b} kernel"
                )
            size, maps = ((a, b), int(c)) if c is not None else ((a, a), b)
            if min(size) < 1 or maps < 1:
                raise SpecError(f"{where}: kernel size and number of maps must be at least 1")
            layers.append(LayerSpec("conv", size, maps))
        elif m["p"]:
            h = int(m["p_h"])
            size = (h, int(m["p_w"]) if m["p_w"] else h)
            if min(size) < 1:
                raise SpecError(f"{where}: pooling size must be at least 1")
            layers.append(LayerSpec("pool", size))
        else:
            n = int(m["fc_n"])
            if n < 1:
                raise SpecError(f"{where}: an FC layer needs at least 1 unit")
            layers.append(LayerSpec("fc", (1, 1), n))
    if not layers:
        raise SpecError("the spec has no layers")
    if n_classes is not None:
        if n_classes < 2:
            raise SpecError(f"a classifier needs at least 2 classes, got {n_classes}")
        if layers[-1].kind != "fc" or layers[-1].maps != n_classes:
            layers.append(LayerSpec("fc", (1, 1), n_classes))
    if layers[-1].kind != "fc":
        raise SpecError(f"the last layer must be FC<classes>, got '{layers[-1]}'")
    if layers[-1].maps < 2:
        raise SpecError(f"the last layer FC{layers[-1].maps} must have at least 2 outputs (classes)")
    return resolve_spec(layers, declared)


def resolve_spec(layers: list[LayerSpec], declared: tuple[int, int] | None = None) -> NetworkSpec:
    """Give every layer its size and derive the window (backwards, or check a declared one)."""
    seen_fc = False
    for i, layer in enumerate(layers, start=1):
        if layer.kind == "fc":
            seen_fc = True
        elif seen_fc:
            raise SpecError(f"layer {i} '{layer}': only FC layers may follow an FC layer")
    if declared is None:
        # backwards from a 1x1 output: FC layers are 1x1 convolutions
        h = w = 1
        for layer in reversed(layers):
            if layer.kind == "pool":
                h, w = h * layer.size[0], w * layer.size[1]
            elif layer.kind == "conv":
                h, w = h + layer.size[0] - 1, w + layer.size[1] - 1
        return NetworkSpec(tuple(layers), (h, w))
    # forwards from the declared window, checking every map
    h, w = declared
    resolved: list[LayerSpec] = []
    first_fc = True
    for i, layer in enumerate(layers, start=1):
        where = f"layer {i} '{layer}' (input map {h}x{w})"
        if layer.kind == "conv":
            h, w = h - layer.size[0] + 1, w - layer.size[1] + 1
            if h < 1 or w < 1:
                raise SpecError(f"{where}: the kernel is larger than the map; the window {declared[0]}x{declared[1]} is too small")
            resolved.append(layer)
        elif layer.kind == "pool":
            ph, pw = layer.size
            if h % ph or w % pw:
                raise SpecError(
                    f"{where}: pooling {ph}x{pw} does not divide the map; "
                    f"the window {declared[0]}x{declared[1]} does not fit this network "
                    f"(without IN the window is derived: {resolve_spec(layers).window})"
                )
            h, w = h // ph, w // pw
            resolved.append(layer)
        else:
            size = (h, w) if first_fc else (1, 1)
            first_fc = False
            resolved.append(LayerSpec("fc", size, layer.maps))
            h = w = 1
    return NetworkSpec(tuple(resolved), declared)


#: Networks whose evaluation would need more memory than this (parameters with their training state,
#: and the activations of one prediction tile) are refused before anything is allocated.
MAX_NETWORK_BYTES = 16 * 2**30
_TILE = 512  # the prediction tile side (predict.DEFAULT_TILE), for the activations' estimate


def network_bytes(spec: NetworkSpec, in_channels: int, tile: int = _TILE) -> tuple[int, int]:
    """``(bytes, parameters)``: an estimate of the memory a network of ``spec`` on ``in_channels``
    channels needs: its float32 parameters four times (weights, gradients, two optimiser moments)
    and twice (input and output) the largest layer's maps over a tile's input region."""
    wh, ww = spec.window
    region = (tile + wh - 1) * (tile + ww - 1)
    params = 0
    widest = n_in = int(in_channels)
    for layer in spec.layers:
        if layer.kind == "pool":
            continue
        kh, kw = layer.size
        params += layer.maps * (n_in * kh * kw + 1)
        n_in = layer.maps
        widest = max(widest, n_in)
    return 4 * (4 * params + 2 * widest * region), params


def check_network_size(spec: NetworkSpec, in_channels: int, limit: int = MAX_NETWORK_BYTES) -> None:
    """Refuse (:class:`SpecError`) a network that would need more than ``limit`` bytes (see
    :func:`network_bytes`), saying how much it would need."""
    need, params = network_bytes(spec, in_channels)
    if need > limit:
        wh, ww = spec.window
        raise SpecError(
            f"the network '{spec.text}' would need about {_human(need)} of memory ({params:,} parameters, "
            f"a {wh}x{ww} window); the limit is {_human(limit)}: use fewer maps or pooling layers"
        )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover

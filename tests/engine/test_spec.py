"""Network spec parsing: windows, presets, refusals with useful messages."""

from __future__ import annotations

import re

import pytest

from napari_mpf.engine.network.spec import PRESETS, LayerSpec, SpecError, parse_spec


def _window_by_hand(text: str) -> tuple[int, int]:
    """Derive the window backwards from a 1x1 output, independently of spec.py."""
    h = w = 1
    for tok in reversed([t for t in re.split(r"[,\s]+", text.strip().upper()) if t]):
        if tok.startswith("MP"):
            m = re.fullmatch(r"MPF?(\d+)(?:X(\d+))?", tok)
            h, w = h * int(m[1]), w * int(m[2] or m[1])
        elif tok.startswith("C"):
            m = re.fullmatch(r"C(\d+)X(\d+)X(\d+)", tok)
            h, w = h + int(m[1]) - 1, w + int(m[2]) - 1
    return h, w


@pytest.mark.parametrize(
    "name, window",
    [("steel", (34, 34)), ("n3", (63, 63)), ("fast", (24, 24)), ("wide", (52, 52)), ("wide2", (52, 52))],
)
def test_preset_windows(name, window):
    spec = parse_spec(name, n_classes=2)
    assert spec.window == _window_by_hand(PRESETS[name])
    if window is not None:
        assert spec.window == window
    assert spec.layers[-1] == LayerSpec("fc", (1, 1), 2)


def test_preset_gets_fc_classes_appended():
    spec = parse_spec("steel", n_classes=3)
    assert [str(layer) for layer in spec.layers] == [
        "C7x7x8", "MPF2x2", "C5x5x8", "MPF2x2", "C5x5x8", "FC100", "FC3",
    ]
    assert spec.n_classes == 3
    assert spec.pool_factor == (4, 4)
    # case-insensitive and surrounding blanks
    assert parse_spec("  Steel ", n_classes=3) == spec


def test_spec_appends_fc_when_missing_and_accepts_matching_fc():
    spec = parse_spec("C3x3x4, MPF2x2, C2x2x5", n_classes=4)
    assert spec.layers[-1] == LayerSpec("fc", (1, 1), 4)
    assert spec.window == (6, 6)
    spec2 = parse_spec("c3x3x4 mpf2x2 c2x2x5 fc4", n_classes=4)
    assert spec2 == spec


def test_steel_declared_window_31_refused():
    layers = PRESETS["steel"]
    with pytest.raises(SpecError) as info:
        parse_spec("IN31x31, " + layers + ", FC2", n_classes=2)
    msg = str(info.value).lower()
    assert "pool" in msg and "divide" in msg, msg
    assert "31" in msg and "34" in msg, msg  # says what was declared and what would work


def test_steel_declared_window_34_accepted():
    spec = parse_spec("IN34x34, " + PRESETS["steel"] + ", FC2", n_classes=2)
    assert spec.window == (34, 34)
    assert spec == parse_spec("steel", n_classes=2)


def test_n3_declared_65_refused_63_accepted():
    with pytest.raises(SpecError, match="(?i)pool.*divide"):
        parse_spec("IN65, " + PRESETS["n3"] + ", FC2", n_classes=2)
    spec = parse_spec("IN63, " + PRESETS["n3"] + ", FC2", n_classes=2)
    assert spec.window == (63, 63)


def test_declared_window_fc_covers_remaining_extent():
    spec = parse_spec("IN10x10, C3x3x4, MPF2x2, FC6, FC3", n_classes=3)
    assert spec.window == (10, 10)
    assert spec.layers[2] == LayerSpec("fc", (4, 4), 6)
    assert spec.layers[3] == LayerSpec("fc", (1, 1), 3)


def test_rectangular_kernels_and_pools():
    spec = parse_spec("C3x2x4, MPF2x3, C2x3x4, MPF3x2, C2x2x3, FC4")
    assert spec.window == (16, 19)
    assert spec.pool_factor == (6, 6)


@pytest.mark.parametrize("token", ["C7", "C7x7x", "MPF0", "MP0x2", "foo", "FC0", "C0x3x4", "C3x3x0", "IN0"])
def test_bad_tokens_name_the_token(token):
    text = f"C3x3x4, {token}, FC2" if not token.startswith("IN") else f"{token}, C3x3x4, FC2"
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert token in str(info.value), str(info.value)


@pytest.mark.parametrize("text", ["", "   ", " , "])
def test_empty_spec_refused(text):
    with pytest.raises(SpecError):
        parse_spec(text)


def test_conv_after_fc_refused():
    with pytest.raises(SpecError) as info:
        parse_spec("C3x3x4, FC8, C3x3x4, FC2")
    msg = str(info.value)
    assert "FC" in msg and "C3x3x4" in msg, msg


def test_pool_after_fc_refused():
    with pytest.raises(SpecError):
        parse_spec("C3x3x4, FC8, MPF2x2, FC2")


def test_n_classes_output_layer():
    """A last FC that differs from the number of classes is a hidden layer: FC<K> is appended.

    (spec.py documents this; an earlier draft refused the mismatch instead.)
    """
    spec = parse_spec("C3x3x4, MPF2x2, C2x2x5, FC3", n_classes=2)
    assert [str(layer) for layer in spec.layers][-2:] == ["FC3", "FC2"]
    assert spec.n_classes == 2
    # already ending in FC<K>: nothing appended
    assert [str(layer) for layer in parse_spec("C3x3x4, FC2", n_classes=2).layers] == ["C3x3x4", "FC2"]
    with pytest.raises(SpecError, match="2 classes"):
        parse_spec("C3x3x4, FC2", n_classes=1)
    with pytest.raises(SpecError, match="FC1"):
        parse_spec("C3x3x4, FC1")


def test_in_must_come_first():
    with pytest.raises(SpecError, match="IN"):
        parse_spec("C3x3x4, IN10, FC2")


def test_declared_window_too_small_refused():
    with pytest.raises(SpecError):
        parse_spec("IN4, C5x5x4, FC2")


def test_spec_error_is_value_error():
    assert issubclass(SpecError, ValueError)


def test_ambiguous_square_short_form_is_refused():
    """Issue 22: 'C5x5' meant a 5x5 kernel with 5 maps, silently."""
    from napari_mpf.engine.network.spec import SpecError

    with pytest.raises(SpecError, match="ambiguous.*C5x5x5"):
        parse_spec("C5x5, FC2")
    assert parse_spec("C3x8, FC2").layers[0].maps == 8  # the documented short form still works


def test_networks_too_large_are_refused_with_their_size():
    from napari_mpf.engine import Model
    from napari_mpf.engine.network.spec import (
        MAX_NETWORK_BYTES,
        SpecError,
        check_network_size,
        network_bytes,
    )

    for name in PRESETS:
        assert network_bytes(parse_spec(name, 2), 3)[0] < MAX_NETWORK_BYTES / 16
    for text in ("C3x3x1000000000", ", ".join(["MPF2x2"] * 40)):
        with pytest.raises(SpecError, match=r"would need about .* the limit is 16.0 GB"):
            Model.create(text, 1, 2)  # refused before the weights are allocated
    with pytest.raises(SpecError, match=r"limit is 1.0 KB"):
        check_network_size(parse_spec("fast", 2), 1, limit=1024)

"""The engine's public API: about twenty names, each importable and named in the README."""

from __future__ import annotations

from pathlib import Path

import napari_mpf.engine as engine

README = Path(__file__).resolve().parents[2] / "README.md"


def test_about_twenty_public_names_all_importable_and_in_the_readme():
    names = engine.__all__
    assert 15 <= len(names) <= 22 and len(set(names)) == len(names)
    text = README.read_text()
    for name in names:
        assert getattr(engine, name) is not None
        assert f"`{name}`" in text, f"README's Python API does not name {name}"

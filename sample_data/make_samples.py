"""Write the napari-mpf sample images and their strokes as TIFF files (deterministic)."""

from __future__ import annotations

import argparse
from pathlib import Path

import tifffile

from napari_mpf._sample_data import membrane_em, surface_defects


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path, nargs="?", default=Path("out/samples"), help="output directory")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    image, strokes = membrane_em()
    files = {"membrane_em.tif": image, "membrane_em_strokes.tif": strokes}
    image, strokes, defects = surface_defects()
    files |= {
        "surface_defects.tif": image,
        "surface_defects_strokes.tif": strokes,
        "surface_defects_truth.tif": defects.astype("uint8") + 1,
    }
    for name, data in files.items():
        tifffile.imwrite(args.out / name, data)
        print(args.out / name, data.shape, data.dtype)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

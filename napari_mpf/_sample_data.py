"""Synthetic sample images with a few strokes already painted (deterministic, generated on demand).

- :func:`membrane_em`: an EM-like slice, 256x256: Voronoi cells with dark blurred walls, some
  organelles and noise; strokes 1 = background (cell interior), 2 = membrane.
- :func:`surface_defects`: a textured surface, 256x256, with dark blobs and a crack; strokes
  1 = background, 2 = defect.
- :func:`blobs`: bright disks at known positions (for tests and object counts).

The ``*_sample`` functions return napari layer data tuples (used by the npe2 sample_data
contributions); they import neither napari nor Qt.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._layer_style import class_colormap, class_features

__all__ = [
    "membrane_em",
    "surface_defects",
    "blobs",
    "membrane_sample",
    "defect_sample",
    "MEMBRANE_NAME",
    "DEFECT_NAME",
]

MEMBRANE_NAME = "EM membranes"
DEFECT_NAME = "surface defects"


def _line(labels: np.ndarray, p0, p1, value: int, width: int = 1, where: np.ndarray | None = None) -> None:
    """Paint a straight stroke from ``p0`` to ``p1`` (clipped; only where ``where`` is True)."""
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
    ys = np.rint(np.linspace(p0[0], p1[0], n)).astype(int)
    xs = np.rint(np.linspace(p0[1], p1[1], n)).astype(int)
    stroke = np.zeros(labels.shape, bool)
    ok = (ys >= 0) & (ys < labels.shape[0]) & (xs >= 0) & (xs < labels.shape[1])
    stroke[ys[ok], xs[ok]] = True
    if width > 1:
        stroke = ndimage.binary_dilation(stroke, iterations=width // 2)
    if where is not None:
        stroke &= where
    labels[stroke] = value


def membrane_em(shape: tuple[int, int] = (256, 256), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like slice (float32 in [0, 1], dark membranes) and uint8 strokes (1 bg, 2 membrane)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    n_cells = max(4, int(h * w / 1300))
    seeds = np.zeros(shape, np.int32)
    pts = np.column_stack([rng.integers(0, h, n_cells), rng.integers(0, w, n_cells)])
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, n_cells + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[iy, ix]
    edge = np.zeros(shape, bool)
    edge[:-1] |= cells[:-1] != cells[1:]
    edge[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    walls = ndimage.binary_dilation(edge, iterations=1)
    # cytoplasm: per-cell grey level, smooth texture, a few dark organelles
    tone = 0.62 + 0.08 * rng.standard_normal(n_cells + 1)
    img = tone[cells] + 0.05 * ndimage.gaussian_filter(rng.standard_normal(shape), 3) * 3
    organelles = np.zeros(shape, bool)
    yy, xx = np.indices(shape)
    for _ in range(n_cells):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.uniform(1.5, 4)
        organelles |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img[organelles & ~walls] -= 0.28
    img[walls] = 0.18
    img = ndimage.gaussian_filter(img, 1.2) + 0.05 * rng.standard_normal(shape)
    img = np.clip(img, 0, 1).astype(np.float32)

    labels = np.zeros(shape, np.uint8)
    dist = ndimage.distance_transform_edt(~walls)
    interior = dist > 3
    # membrane strokes: trace the thin cell boundary inside a few small windows
    for _ in range(4):
        y0, x0 = rng.integers(0, h - 40), rng.integers(0, w - 40)
        box = np.zeros(shape, bool)
        box[y0 : y0 + 40, x0 : x0 + 40] = True
        labels[edge & box] = 2
    # background strokes: short lines through the interior of a few cells
    for k in rng.choice(n_cells, size=min(8, n_cells), replace=False):
        cy, cx = pts[k]
        angle = rng.uniform(0, np.pi)
        dy, dx = 14 * np.sin(angle), 14 * np.cos(angle)
        _line(labels, (cy - dy, cx - dx), (cy + dy, cx + dx), 1, width=3, where=interior)
    return img, labels


def surface_defects(
    shape: tuple[int, int] = (256, 256), seed: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured surface (float32 in [0, 1]) with 3 blobs and 1 crack.

    Returns ``(image, strokes, defects)``: strokes uint8 (1 bg, 2 defect) cover two of the four
    defects partially; ``defects`` is the true defect mask (4 connected objects).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.indices(shape)
    # machined texture: fine horizontal grooves, slow shading, grain
    grooves = 0.04 * np.sin(2 * np.pi * yy / 5.0 + 0.6 * ndimage.gaussian_filter(rng.standard_normal(shape), 8) * 8)
    shading = 0.08 * ndimage.gaussian_filter(rng.standard_normal(shape), 25) * 25
    grain = 0.03 * ndimage.gaussian_filter(rng.standard_normal(shape), 0.8) * 2
    img = 0.6 + grooves + shading + grain
    defects = np.zeros(shape, bool)
    # three blobs (ellipses) of different sizes, away from each other
    blob_params = [(0.25, 0.3, 9, 6), (0.7, 0.22, 6, 6), (0.68, 0.75, 12, 7)]
    for fy, fx, ry, rx in blob_params:
        cy, cx = fy * h, fx * w
        t = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)
        v = -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
        defects |= (u / ry) ** 2 + (v / rx) ** 2 <= 1
    # a crack: a jagged random walk, 2 px wide
    crack = np.zeros(shape, bool)
    y, x = 0.2 * h, 0.62 * w
    angle = np.pi / 2.6
    for _ in range(int(0.35 * max(h, w))):
        angle += rng.normal(0, 0.12)
        angle = float(np.clip(angle, 0.3, 1.6))
        y, x = y + np.sin(angle), x + np.cos(angle) * 0.6
        if 0 <= y < h and 0 <= x < w:
            crack[int(y), int(x)] = True
    crack = ndimage.binary_dilation(crack, iterations=1)
    defects |= crack
    depth = np.where(defects, 0.35 + 0.05 * rng.standard_normal(shape), 0.0)
    img = img - ndimage.gaussian_filter(depth, 1.0)
    img = img + 0.03 * rng.standard_normal(shape)
    img = np.clip(img, 0, 1).astype(np.float32)

    labels = np.zeros(shape, np.uint8)
    core = ndimage.binary_erosion(defects, iterations=1) | crack
    # defect strokes: the largest blob and the crack, partially
    cy, cx = blob_params[2][0] * h, blob_params[2][1] * w
    _line(labels, (cy - 6, cx - 6), (cy + 6, cx + 6), 2, width=3, where=core)
    crack_pix = np.argwhere(crack)
    half = crack_pix[: len(crack_pix) // 2]
    labels[half[:, 0], half[:, 1]] = 2
    # background strokes: a few lines across the texture, away from defects
    far = ndimage.distance_transform_edt(~defects) > 6
    for (y0, x0), (y1, x1) in [((0.1, 0.1), (0.1, 0.45)), ((0.5, 0.05), (0.45, 0.4)),
                               ((0.9, 0.3), (0.88, 0.9)), ((0.35, 0.85), (0.5, 0.95)),
                               ((0.18, 0.04), (0.36, 0.2)), ((0.75, 0.05), (0.95, 0.12))]:
        _line(labels, (y0 * h, x0 * w), (y1 * h, x1 * w), 1, width=3, where=far)
    return img, labels, defects


def blobs(
    shape: tuple[int, int] = (48, 48), n: int = 4, radius: int = 4, seed: int = 0, noise: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` bright disks on a dark noisy background, well separated.

    Returns ``(image float32, strokes uint8 (1 bg, 2 blob), centres (n, 2))``; strokes mark the
    centre of the first half of the blobs and background lines between them.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.indices(shape)
    centres: list[tuple[int, int]] = []
    margin = radius + 2
    tries = 0
    while len(centres) < n:
        tries += 1
        if tries > 10000:
            raise ValueError(f"cannot place {n} blobs of radius {radius} in {shape}")
        c = (int(rng.integers(margin, h - margin)), int(rng.integers(margin, w - margin)))
        if all((c[0] - a) ** 2 + (c[1] - b) ** 2 > (3 * radius) ** 2 for a, b in centres):
            centres.append(c)
    mask = np.zeros(shape, bool)
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    img = np.where(mask, 0.8, 0.2) + noise * rng.standard_normal(shape)
    img = np.clip(img, 0, 1).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    for cy, cx in centres[: max(1, n // 2)]:
        labels[cy - 1 : cy + 2, cx - 1 : cx + 2] = 2
    far = ndimage.distance_transform_edt(~mask) > 2
    labels[2, :][far[2, :]] = 1
    labels[h - 3, :][far[h - 3, :]] = 1
    labels[:, 2][far[:, 2]] = 1
    return img, labels, np.array(centres)


def _tuples(name: str, image: np.ndarray, labels: np.ndarray, classes: list[str], **meta) -> list[tuple]:
    label_kwargs = {
        "name": f"{name} labels",
        "features": class_features(classes),
        "colormap": class_colormap(len(classes)),
        "opacity": 0.8,
        "metadata": {"class_names": classes, **meta},
    }
    return [
        (image, {"name": name, "colormap": "gray", "contrast_limits": (0.0, 1.0)}, "image"),
        (labels, label_kwargs, "labels"),
    ]


def membrane_sample() -> list[tuple]:
    """npe2 sample: EM-like membranes with strokes (1 background, 2 membrane)."""
    img, labels = membrane_em()
    return _tuples(MEMBRANE_NAME, img, labels, ["background", "membrane"], sample="membrane_em")


def defect_sample() -> list[tuple]:
    """npe2 sample: textured surface with 4 defects and strokes (1 background, 2 defect)."""
    img, labels, _ = surface_defects()
    return _tuples(DEFECT_NAME, img, labels, ["background", "defect"], sample="surface_defects", n_defects=4)

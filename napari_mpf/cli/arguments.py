"""The command line's arguments: ``build_parser`` (the ``train`` flags from :mod:`napari_mpf.recipe`)."""

from __future__ import annotations

import argparse

import numpy as np

from .. import __version__, recipe
from ..cli_checks import (
    Parser,
)
from .common import PROB_DTYPES, PROG, SP_COMPACTNESS, SP_POOLS
from .demo import cmd_demo
from .info import cmd_info
from .predict import cmd_predict
from .train import cmd_train


def _int_at_least(text: str, least: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if v < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {v}")
    return v


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not np.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return v


def _add_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-key", metavar="KEY", help="array to read from .npz image files (default: the only array, or 'images')")
    p.add_argument("--slices", metavar="SEL", help="slices of a stack (first axis) to use: 0:5, 3, 0,4,7 or ::2 (applies to every file)")
    p.add_argument("--crop", metavar="Y0:Y1,X0:X1", help="use only these rows and columns of every image, e.g. 0:256,0:256")
    p.add_argument("--channels-first", action="store_true", help="a 3-D array is one (C, H, W) image, a 4-D array a (Z, C, H, W) stack (default: 3-D = stack of 2-D images)")
    p.add_argument("--level", type=_nonnegative_int, metavar="N", help="resolution level of an OME-Zarr image (default 0, the full resolution); its axes say where channels and slices are")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Train a max-pooling-fragment CNN (MPF) on painted strokes and segment images, on the CPU.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser(
        "train",
        help="train a model on images and label masks",
        description="Train a model on images and label masks (0 = unpainted, 1..K = classes) and save it.",
    )
    t.add_argument("--image", action="append", metavar="FILE", help="image file (.tif .tiff .png .jpg .npy .npz); repeat for several")
    t.add_argument("--labels", action="append", metavar="FILE", help="label file for each --image, in the same order")
    t.add_argument("--pairs", metavar="FOLDER", help="train on a folder of (image, labels) pairs read one per step "
                   "(images/ + labels/, or NAME + NAME_labels files), instead of --image/--labels")
    _add_image_options(t)
    t.add_argument("--labels-key", metavar="KEY", help="array to read from .npz label files (default: the only array, or 'labels')")
    t.add_argument("--label-offset", type=int, default=0, metavar="N", help="add N to every label pixel; use 1 for dense masks where 0 is a class (0/1 -> classes 1/2)")
    t.add_argument("--sample-labels", type=_fraction, metavar="FRACTION", help="keep a random (seeded) fraction of the labelled pixels and unpaint the rest, to emulate sparse annotation")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--preset", default=None, help=recipe.choice("network").help)
    g.add_argument("--spec", metavar="TEXT", help="network in the papers' notation, e.g. 'C5x5x8, MPF2x2, C3x3x8, FC32'")
    recipe.add_arguments(t, ("activation", "filters", "optimizer", "lr", "steps", "augment", "balance", "seed",
                             "step_size"),
                         types={"lr": _positive_float, "steps": _positive_int, "step_size": _positive_int},
                         unset=("steps", "step_size"))
    t.add_argument("--context", metavar="PRESET|SPEC", default=None,
                   help="auto-context: train the network for the first half of the steps (or --seconds), then a "
                        "second network of this preset or spec (same activation, filters and heads) on the image "
                        "and the first one's probabilities for the rest; the model file holds both (e.g. fast)")
    t.add_argument("--seconds", type=_positive_float, default=None, metavar="S",
                   help="train for about S seconds instead: the learning-rate schedule is fitted to the time, "
                        "and --steps (if given) caps the steps")
    t.add_argument("--class-names", metavar="A,B,...", help="names of classes 1..K, comma separated")
    t.add_argument("--out", required=True, metavar="MODEL.mpf.npz",
                   help="where to save the trained model (a .npz; name it *.mpf.npz and napari opens it as a model)")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    heads = t.add_argument_group(
        "heads (added to the new model and trained with it; they need a last layer of 1x1, as in the presets and "
        "any spec without IN<h>x<w>)")
    heads.add_argument("--superpixel-branch", type=_positive_float, metavar="SIZE",
                       help="add a superpixel branch: features pooled over SLIC superpixels of mean area SIZE pixels give "
                       "class scores added to every pixel of the superpixel")
    heads.add_argument("--superpixel-pool", choices=SP_POOLS, default=None, help="pooling of the superpixel branch (default max)")
    heads.add_argument("--superpixel-compactness", type=_positive_float, default=None, metavar="C",
                       help=f"SLIC compactness of the superpixel branch (default {SP_COMPACTNESS:g})")
    heads.add_argument("--image-head", type=_positive_float, nargs="?", const=1.0, default=None, metavar="WEIGHT",
                       help="add an image-level head: one 'class present' probability per class after the first (for two "
                       "classes: p(defect present)), trained with loss weight WEIGHT (default 1.0) beside the pixel loss")
    heads.add_argument("--image-labels", metavar="FILE",
                       help="image-level labels for --image-head: a text file with one line per training image (or slice), "
                       "1/0, yes/no or true/false, and empty or ? for unknown; with more than two classes, one comma-separated "
                       "value per class after the first (default: from the strokes: a class painted in an image is present; "
                       "an image with strokes but none of a class is without it)")
    t.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "predict",
        help="segment images with a trained model",
        description=(
            "Write class probabilities (K, H, W) per image, (Z, K, H, W) for a stack, float32; optionally the "
            "segmentation (labels 1..K). With --out STORE.zarr the volume is processed chunk by chunk with dask "
            "(bounded memory, progress, resumable, optionally on a dask.distributed cluster). For a model with an "
            "image-level head, the per-image 'class present' probabilities are printed, stored in a .npz output "
            "(array image_probabilities) and in the --counts CSV (columns p_image_<class>)."
        ),
    )
    p.add_argument("--model", required=True, metavar="MODEL.mpf.npz", help="a model file (any .npz written by napari-mpf)")
    p.add_argument("--image", required=True, metavar="FILE|FOLDER|STORE.zarr", help="image file, zarr store or folder of images (a stack)")
    _add_image_options(p)
    p.add_argument("--out", required=True, metavar="PROBS", help="probabilities: .npy, .tif, .npz, or a .zarr store for big volumes (.ome.zarr: an OME-Zarr image with the segmentation as its labels)")
    p.add_argument("--segmentation", metavar="SEG", help="also write the arg-max labels 1..K: .tif, .png, .npy or .npz (a .zarr output always holds them)")
    p.add_argument("--prob-dtype", choices=tuple(PROB_DTYPES), default=None, help="probabilities as uint8 (p*255), float16 or float32 (default: float32 for files, uint8 for .zarr)")
    p.add_argument("--counts", metavar="CSV", help="write per-slice object counts (defect present or not) and class fractions as CSV")
    p.add_argument("--count-class", metavar="CLASS", help="class whose objects are counted: a class name or label 2..K (default: label 2)")
    p.add_argument("--threshold", type=_fraction, default=0.5, help="probability threshold of an object pixel (default 0.5)")
    p.add_argument("--min-area", type=_positive_int, default=1, help="smallest object in pixels (default 1)")
    p.add_argument("--refine-superpixels", type=_positive_float, metavar="SIZE",
                   help="average the class probabilities over each SLIC superpixel of mean area SIZE pixels before "
                   "segmenting, counting and saving (in-memory outputs only, not .zarr)")
    p.add_argument("--superpixel-compactness", type=_positive_float, default=None, metavar="C",
                   help=f"SLIC compactness of --refine-superpixels (default {SP_COMPACTNESS:g})")
    p.add_argument("--augment", action="store_true",
                   help="test-time augmentation: average the probabilities over the 8 rotations and flips of each "
                   "image (8x the time; in-memory outputs only, not .zarr)")
    big = p.add_argument_group("big volumes (--out STORE.zarr, or STORE.ome.zarr for OME-Zarr)")
    big.add_argument("--chunks", metavar="N|ROWS,COLS", help="output chunk (tile) size; each reads the window's halo around it (default 1024)")
    big.add_argument("--scheduler", metavar="WHERE", help="'local' (a local dask.distributed cluster; the default when distributed is installed), 'threads' (the default otherwise) or 'sync' (no cluster), or a scheduler address such as tcp://host:8786")
    big.add_argument("--workers", type=_positive_int, help="local cluster: number of worker processes (default: one per core)")
    big.add_argument("--memory-limit", metavar="SIZE", help="local cluster: memory limit per worker, e.g. 2GB (default: dask's)")
    big.add_argument("--overwrite", action="store_true", help="start again instead of resuming an existing store")
    big.add_argument("--levels", type=_positive_int, metavar="N", help="pyramid levels of a .ome.zarr output, each half the size of the one before (default: down to about 256 pixels; the chunk sides must be divisible by 2^(N-1))")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="print a model file's header", description="Print a model's spec, window, classes, normalisation and provenance.")
    i.add_argument("model", metavar="MODEL.mpf.npz")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser(
        "demo",
        help="train and segment a built-in synthetic sample",
        description="Make a synthetic two-texture image with a few strokes, train the default network for a few seconds, segment it and score the unpainted pixels.",
    )
    d.add_argument("--seconds", type=_positive_float, default=10.0, help="training time budget after the first step (default 10)")
    d.add_argument("--steps", type=_positive_int, default=400, help="at most this many steps (default 400)")
    d.add_argument("--size", type=_positive_int, default=160, help="image side in pixels (default 160)")
    d.add_argument("--preset", default="fast")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--save", metavar="DIR", help="write the sample, model and results into this (existing) directory")
    d.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)
    return parser

"""Command line: ``napari-mpf train | predict | info | demo`` (no Qt, no napari).

Every user error (missing or unreadable file, bad spec or option, shapes that do not match, labels
with no strokes, a corrupt model file, an output that cannot be written) ends with
``napari-mpf: error: <message>`` on stderr and exit code 2, without a traceback; every output is
checked before any work and written atomically, all at the end. Ctrl-C exits with code 130.
"""

from __future__ import annotations

import sys

try:  # Ctrl-C while the command starts (NumPy's import): no traceback, as after any Ctrl-C
    import argparse
    import contextlib
    import json
    import os
    import time
    from collections.abc import Sequence
    from contextlib import contextmanager
    from pathlib import Path

    import numpy as np

    from . import __version__, engine, recipe
    from .cli_checks import (
        ENVIRONMENT_ERRNOS,
        CLIError,
        Parser,
        check_predict_memory,
        check_writable,
        human_bytes,
        model_file_bytes,
        save_elsewhere,
        unpainted_classes_note,
        warn,
    )
    from .engine import (
        PRESETS,
        InputError,
        Model,
        ModelFileError,
        TrainConfig,
        Trainer,
        load_model,
        parse_spec,
        predict_proba,
        save_model,
        segment,
    )
    from .engine.io import files
    from .engine.io.atomic import Staged, write_error_text
    from .engine.io.modelfile import MODEL_SUFFIX
    from .engine.network.heads import add_image_head, add_superpixel_branch
    from .engine.network.inputs import FLOAT32_MAX
    from .engine.network.predict import predict, refine_with_superpixels
    from .engine.network.spec import DEFAULT_PRESET
    from .engine.post.objects import count_objects
    from .engine.scale import (
        CountSettings,
        ZarrPrediction,
        encode_probabilities,
        write_counts_csv,
    )
    from .engine.training.dataset import PairDataset, model_for_dataset
    from .engine.training.synthetic import two_texture_sample
except KeyboardInterrupt:  # pragma: no cover - exercised in a subprocess by the tests
    sys.stderr.write("napari-mpf: aborted\n")
    raise SystemExit(130) from None

PROG = "napari-mpf"
_PROB_EXT = (".npy", ".tif", ".tiff", ".npz")
_SEG_EXT = (".tif", ".tiff", ".png", ".npy", ".npz")
_PROB_DTYPES = ("uint8", "float16", "float32")
_SP_POOLS = ("max", "mean")
_SP_COMPACTNESS = 0.3
_IMAGE_LABEL_WORDS = {"1": 1.0, "yes": 1.0, "true": 1.0, "0": 0.0, "no": 0.0, "false": 0.0, "": None, "?": None}


# ----------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


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


# ----------------------------------------------------------------------------- parser


def _add_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-key", metavar="KEY", help="array to read from .npz image files (default: the only array, or 'images')")
    p.add_argument("--slices", metavar="SEL", help="slices of a stack (first axis) to use: 0:5, 3, 0,4,7 or ::2 (applies to every file)")
    p.add_argument("--crop", metavar="Y0:Y1,X0:X1", help="use only these rows and columns of every image, e.g. 0:256,0:256")
    p.add_argument("--channels-first", action="store_true", help="a 3-D array is one (C, H, W) image, a 4-D array a (Z, C, H, W) stack (default: 3-D = stack of 2-D images)")


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
    heads.add_argument("--superpixel-pool", choices=_SP_POOLS, default=None, help="pooling of the superpixel branch (default max)")
    heads.add_argument("--superpixel-compactness", type=_positive_float, default=None, metavar="C",
                       help=f"SLIC compactness of the superpixel branch (default {_SP_COMPACTNESS:g})")
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
    p.add_argument("--out", required=True, metavar="PROBS", help="probabilities: .npy, .tif, .npz, or a .zarr store for big volumes")
    p.add_argument("--segmentation", metavar="SEG", help="also write the arg-max labels 1..K: .tif, .png, .npy or .npz (a .zarr output always holds them)")
    p.add_argument("--prob-dtype", choices=tuple(_PROB_DTYPES), default=None, help="probabilities as uint8 (p*255), float16 or float32 (default: float32 for files, uint8 for .zarr)")
    p.add_argument("--counts", metavar="CSV", help="write per-slice object counts (defect present or not) and class fractions as CSV")
    p.add_argument("--count-class", metavar="CLASS", help="class whose objects are counted: a class name or label 2..K (default: label 2)")
    p.add_argument("--threshold", type=_fraction, default=0.5, help="probability threshold of an object pixel (default 0.5)")
    p.add_argument("--min-area", type=_positive_int, default=1, help="smallest object in pixels (default 1)")
    p.add_argument("--refine-superpixels", type=_positive_float, metavar="SIZE",
                   help="average the class probabilities over each SLIC superpixel of mean area SIZE pixels before "
                   "segmenting, counting and saving (in-memory outputs only, not .zarr)")
    p.add_argument("--superpixel-compactness", type=_positive_float, default=None, metavar="C",
                   help=f"SLIC compactness of --refine-superpixels (default {_SP_COMPACTNESS:g})")
    p.add_argument("--augment", action="store_true",
                   help="test-time augmentation: average the probabilities over the 8 rotations and flips of each "
                   "image (8x the time; in-memory outputs only, not .zarr)")
    big = p.add_argument_group("big volumes (--out STORE.zarr)")
    big.add_argument("--chunks", metavar="N|ROWS,COLS", help="output chunk (tile) size; each reads the window's halo around it (default 1024)")
    big.add_argument("--scheduler", metavar="WHERE", help="'local' (a local dask.distributed cluster; the default when distributed is installed), 'threads' (the default otherwise) or 'sync' (no cluster), or a scheduler address such as tcp://host:8786")
    big.add_argument("--workers", type=_positive_int, help="local cluster: number of worker processes (default: one per core)")
    big.add_argument("--memory-limit", metavar="SIZE", help="local cluster: memory limit per worker, e.g. 2GB (default: dask's)")
    big.add_argument("--overwrite", action="store_true", help="start again instead of resuming an existing store")
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


# ----------------------------------------------------------------------------- helpers


def _check_out(path: str, allowed: Sequence[str], what: str) -> Path:
    """Refuse an output path before any work is done (unknown extension, missing directory)."""
    p = Path(path)
    if p.suffix.lower() not in allowed:
        raise CLIError(f"{what} {p}: unknown extension '{p.suffix}'; use one of {', '.join(allowed)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"{what} {p}: the directory {parent} does not exist")
    if p.is_dir():
        raise CLIError(f"{what} {p} is a directory")
    return p


def _same_file(a: Path, b: str | Path) -> bool:
    try:
        return a.resolve() == Path(b).resolve()
    except OSError:
        return False


def _refuse_overwrite(out: Path, inputs: Sequence[str | Path], what: str) -> None:
    for src in inputs:
        if _same_file(out, src):
            raise CLIError(f"{what} {out} is also an input file; choose another output path")


def _progress_bar(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=quiet, file=sys.stderr, mininterval=0.25, dynamic_ncols=True)


def _class_label(names: Sequence[str], k: int) -> str:
    return names[k] if k < len(names) else f"class {k + 1}"


def _fractions_text(seg: np.ndarray, names: Sequence[str]) -> str:
    n = len(names)
    counts = np.bincount(seg.ravel(), minlength=n + 1)[1 : n + 1]
    total = max(int(seg.size), 1)
    return ", ".join(f"{_class_label(names, k)} {100.0 * c / total:.1f}%" for k, c in enumerate(counts))


def _run_training(trainer, steps: int | None, quiet: bool):
    """Drive ``trainer.run()`` with a progress bar; return (model, last Progress, steps done, stopped, first step s).

    The first Ctrl-C stops after the current step
    (``stopped`` is True and the model holds the weights of the last finished step); a second one
    aborts at once (KeyboardInterrupt).
    """
    import signal
    import threading

    gen = trainer.run()
    last = None
    stop_requested = False
    model = None
    first_step_s = float("nan")
    t_begin = time.perf_counter()
    trainer.finite_steps = 0

    def on_sigint(signum, frame):
        nonlocal stop_requested
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested = True
        print("\nstopping after this step (press Ctrl-C again to abort without saving)", file=sys.stderr)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with _progress_bar(steps, "training", quiet) as bar:
            while True:
                try:
                    progress = next(gen)
                except StopIteration as stop:
                    model = stop.value
                    break
                if last is None:
                    first_step_s = time.perf_counter() - t_begin
                last = progress
                trainer.finite_steps += bool(np.isfinite(float(progress.loss)))
                step = int(getattr(progress, "step", bar.n + 1))
                planned = int(getattr(progress, "n_steps", steps))
                if planned != bar.total and planned < _NO_STEP_CAP:  # a time budget re-plans the steps as it goes
                    bar.total = planned
                bar.update(max(step - bar.n, 0))
                bar.set_postfix(loss=f"{float(progress.loss):.4f}", refresh=False)
                if stop_requested:
                    break
    finally:
        gen.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if model is None:
        model = trainer.model
    done = int(getattr(last, "step", 0)) if last is not None else 0
    return model, last, done, stop_requested, first_step_s


def _sample_labels(masks: list[np.ndarray], fraction: float, seed: int) -> list[np.ndarray]:
    """Keep ``fraction`` of the labelled pixels of every mask (at least one), chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for m in masks:
        flat = m.ravel()
        painted = np.flatnonzero(flat)
        keep_n = min(len(painted), max(1, int(round(fraction * len(painted))))) if len(painted) else 0
        keep = rng.choice(painted, size=keep_n, replace=False) if keep_n else painted[:0]
        new = np.zeros_like(flat)
        new[keep] = flat[keep]
        out.append(new.reshape(m.shape))
    return out


def _as_float32(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` as float32, refusing float64 values beyond float32's range (they would become inf)."""
    if image.dtype == np.float64 and image.size:
        big = max(float(image.max()), -float(image.min()))
        if big > FLOAT32_MAX:
            raise CLIError(f"{name} has values up to {big:.3g}, beyond the float32 range (±{FLOAT32_MAX:.3g}) "
                           "the network computes in; rescale the image")
    return np.asarray(image, dtype=np.float32)


def _check_painted(masks: list[np.ndarray], offset: int) -> np.ndarray:
    """Counts of painted pixels per label value; refuse no strokes and a single class with a hint."""
    top = max(int(m.max()) for m in masks)
    counts = np.zeros(top + 1, np.int64)
    for m in masks:
        counts += np.bincount(m.ravel(), minlength=top + 1)
    painted = np.flatnonzero(counts[1:]) + 1
    hint = "" if offset else "; for a dense mask where 0 is a class too, pass --label-offset 1"
    if len(painted) == 0:
        raise CLIError(f"the labels have no painted pixels (0 = unpainted, 1..K = classes){hint}")
    if len(painted) == 1:
        raise CLIError(f"only class {painted[0]} is painted; paint at least two classes{hint}")
    return counts


# ----------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    out = _check_out(args.out, (".npz",), "model file")
    check_writable(out)
    _check_head_options(args)
    if args.pairs is not None:
        if args.image or args.labels or args.sample_labels is not None:
            raise CLIError("--pairs replaces --image/--labels (and --sample-labels does not apply to it)")
        return _train_pairs(args, out)
    if not args.image or not args.labels:
        raise CLIError("give --image and --labels (or --pairs FOLDER)")
    _refuse_overwrite(out, [*args.image, *args.labels], "model file")
    if len(args.image) != len(args.labels):
        raise CLIError(f"got {len(args.image)} --image but {len(args.labels)} --labels; give one label file per image file")
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    sources = []
    for img_path, lab_path in zip(args.image, args.labels, strict=True):
        imgs = files.read_images(img_path, args.image_key, args.slices, crop=args.crop, channels_first=args.channels_first)
        labs = files.read_labels(lab_path, args.labels_key, args.slices, crop=args.crop, offset=args.label_offset,
                                 max_label=files.MAX_CLASSES)
        if len(imgs) != len(labs):
            raise CLIError(f"{img_path} gives {len(imgs)} image(s) but {lab_path} gives {len(labs)} label mask(s)")
        for img, lab, iname, lname in zip(imgs.arrays, labs.arrays, imgs.names, labs.names, strict=True):
            if img.shape[-2:] != lab.shape:
                raise CLIError(
                    f"{iname} is {img.shape[-2]}x{img.shape[-1]} pixels but its labels {lname} are "
                    f"{lab.shape[0]}x{lab.shape[1]}; they must match"
                )
        images += [_as_float32(a, n) for a, n in zip(imgs.arrays, imgs.names, strict=True)]
        masks += labs.arrays
        sources.append({"image": str(img_path), "labels": str(lab_path), "n": len(imgs), "slices": [int(i) for i in imgs.indices] if imgs.stack else None})
    if args.sample_labels is not None and args.sample_labels < 1:
        masks = _sample_labels(masks, args.sample_labels, args.seed)
    counts = _check_painted(masks, args.label_offset)
    warn(unpainted_classes_note(counts))
    class_names = [s.strip() for s in args.class_names.split(",")] if args.class_names else None
    spec = _spec_from(args)
    model = Model.for_data(images, masks, spec=spec, activation=args.activation, seed=args.seed, class_names=class_names,
                           filters=args.filters)
    _add_heads(model, args)
    image_labels = _read_image_labels(args.image_labels, len(images), model) if args.image_labels else None
    config = TrainConfig(
        steps=_train_steps(args),
        seconds=args.seconds,
        optimizer=args.optimizer,
        lr=args.lr,
        augment=args.augment,
        balance=args.balance,
        seed=args.seed,
        context=args.context,
        **_step_size(args),
    )
    _print_network(model, args.context)
    names = list(model.class_names)
    painted = ", ".join(f"{_class_label(names, k - 1)} {int(counts[k]):,}" for k in range(1, len(counts)))
    shapes = sorted({"x".join(map(str, a.shape)) for a in images})
    print(f"data: {len(images)} image(s) ({', '.join(shapes)}); painted pixels: {painted}")
    trainer = Trainer(model, images, masks, config, image_labels=image_labels)
    _print_image_targets(trainer, args.image_labels)

    provenance = {"data": sources, "label_offset": args.label_offset, "sample_labels": args.sample_labels,
                  "crop": args.crop, "image_labels": args.image_labels, "recipe": _recipe_of(args)}
    return _train_and_save(trainer, args, out, provenance)


def _check_head_options(args: argparse.Namespace) -> None:
    """Refuse head options that have no effect without the option they refine."""
    if args.superpixel_branch is None and (args.superpixel_pool is not None or args.superpixel_compactness is not None):
        raise CLIError("--superpixel-pool and --superpixel-compactness apply only with --superpixel-branch SIZE")
    if args.image_labels is not None and args.image_head is None:
        raise CLIError("--image-labels needs --image-head (the image-level head is what learns from them)")


def _add_heads(model, args: argparse.Namespace) -> None:
    """Give the new ``model`` the heads asked for (--superpixel-branch, --image-head)."""
    hint = " (a spec without IN<h>x<w> always ends so; the presets do)"
    if args.superpixel_branch is not None:
        try:
            add_superpixel_branch(model, args.superpixel_branch, args.superpixel_compactness or _SP_COMPACTNESS,
                                  args.superpixel_pool or "max")
        except InputError as exc:
            raise CLIError(f"--superpixel-branch: {exc}{hint if '1x1' in str(exc) else ''}") from None
    if args.image_head is not None:
        try:
            add_image_head(model, args.image_head)
        except InputError as exc:
            raise CLIError(f"--image-head: {exc}{hint if '1x1' in str(exc) else ''}") from None


def _heads_text(model) -> str | None:
    parts = []
    if model.filters:
        kinds = ", ".join(f"{k} sigma {v}" for k, v in model.filters.items() if v)
        parts.append(f"input filters ({kinds}; {model.net_in_channels} channels into the first layer)")
    if model.superpixels is not None:
        sp = model.superpixels
        parts.append(f"superpixel branch ({sp['pool']} pooling over SLIC superpixels of ~{sp['size']:g} px, "
                     f"compactness {sp['compactness']:g})")
    if model.image_head is not None:
        names = list(model.class_names)
        what = ", ".join(f"p({_class_label(names, k)} present)" for k in range(1, model.n_classes))
        parts.append(f"image-level head ({what}; loss weight {model.image_head['loss_weight']:g})")
    if model.context is not None:
        wh, ww = model.context.window
        parts.append(f"auto-context: the input holds the probabilities of a first stage ({model.context.spec.text}, "
                     f"window {wh}x{ww}, {model.context.n_params:,} parameters)")
    return "; ".join(parts) or None


def _print_network(model, context: str | None = None) -> None:
    wh, ww = model.window
    print(f"network: {model.spec.text}")
    print(f"window: {wh}x{ww} pixels, {model.n_params:,} parameters, {model.in_channels} input channel(s)")
    heads = _heads_text(model)
    if heads:
        print(f"heads: {heads}")
    if context is not None:
        second = parse_spec(context, model.n_classes)
        print(f"then a second stage (auto-context): {second.text}, window {second.window[0]}x{second.window[1]}")


def _print_image_targets(trainer, source: str | None) -> None:
    """One line on the image-level targets of a model with an image-level head."""
    targets = getattr(trainer, "image_targets", None)
    if targets is None:
        return
    t = np.asarray(targets, dtype=float)
    present, absent = int(np.sum(t == 1)), int(np.sum(t == 0))
    unknown = int(np.sum(np.isnan(t)))
    where = f"from {source}" if source else "from the strokes"
    print(f"image-level labels {where}: {present} present, {absent} absent, {unknown} unknown")


def _read_image_labels(path: str, n_images: int, model, order: str = "in the order of --image and --slices") -> list:
    """Image-level labels for the Trainer from a text file: one line per training image."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--image-labels {p}: no such file")
    try:
        lines = p.read_text().splitlines()
    except UnicodeDecodeError:
        raise CLIError(f"--image-labels {p}: not a text file (one line per image: 1/0, yes/no, true/false, or ? for unknown)") from None
    while lines and not lines[-1].strip():
        lines.pop()  # trailing empty lines: an editor's newline, not unknown images
    j = model.n_classes - 1
    names = list(model.class_names)
    if len(lines) != n_images:
        raise CLIError(
            f"--image-labels {p}: {len(lines)} line(s) for {n_images} training image(s); give one line per image "
            f"(or slice), {order}"
        )
    out: list = []
    for i, line in enumerate(lines, start=1):
        words = [w.strip().lower() for w in line.split(",")] if "," in line else [line.strip().lower()]
        if len(words) == 1 and words[0] in ("", "?"):
            out.append(None)
            continue
        if len(words) != j:
            need = ", ".join(_class_label(names, k) for k in range(1, j + 1))
            raise CLIError(f"--image-labels {p}, line {i}: give {j} comma-separated value(s), one per class after the "
                           f"first ({need}); got '{line.strip()}'")
        values = []
        for w in words:
            if w not in _IMAGE_LABEL_WORDS:
                raise CLIError(f"--image-labels {p}, line {i}: '{w}' is not 1/0, yes/no, true/false, or empty/? for unknown")
            v = _IMAGE_LABEL_WORDS[w]
            values.append(np.nan if v is None else v)
        out.append(np.asarray(values, dtype=np.float64))
    return out


_NO_STEP_CAP = 10**9


def _step_size(args: argparse.Namespace) -> dict:
    """``crop=`` for :class:`TrainConfig` when ``--step-size`` is given (else its default)."""
    return {} if args.step_size is None else {"crop": args.step_size}


def _train_steps(args: argparse.Namespace) -> int:
    """--steps, or its default (``TrainConfig.steps``), or no practical cap when --seconds sets the length."""
    if args.steps is not None:
        return args.steps
    return _NO_STEP_CAP if args.seconds is not None else TrainConfig.steps


def _train_and_save(trainer, args: argparse.Namespace, out: Path, provenance: dict) -> int:
    """Drain the training generator with a progress bar, save the model, report."""
    check_writable(out, need=model_file_bytes(trainer.model))
    t0 = time.perf_counter()
    steps = trainer.config.steps
    model, last, done, interrupted, _ = _run_training(trainer, None if steps >= _NO_STEP_CAP else steps, args.quiet)
    elapsed = time.perf_counter() - t0
    if done and not trainer.finite_steps:
        lr = model.provenance.get("lr")
        raise CLIError(
            f"training diverged: none of the {done} step(s) gave a finite loss"
            + (f" (learning rate {lr:g})" if isinstance(lr, float) else "")
            + "; nothing was saved. Try a smaller --lr"
        )
    model.provenance["cli"] = {"command": "train", **provenance, "steps_done": done, "interrupted": interrupted}
    try:
        save_model(model, out)
    except (OSError, ModelFileError) as exc:  # the disk filled or went away during training: keep the model
        raise save_elsewhere(model, out, exc) from None
    loss = f"{float(last.loss):.4f}" if last is not None else "n/a"
    rate = f" ({elapsed / done:.3f} s/step)" if done else ""
    print(f"trained {done} step(s) in {elapsed:.1f} s{rate}; final loss {loss}")
    if interrupted:
        print(f"stopped early (Ctrl-C): saved the weights after step {done} to {out}")
        return 130
    print(f"saved model to {out}")
    return 0


def _recipe_of(args: argparse.Namespace) -> dict:
    """The recipe values of a ``train`` command (stored in the model's provenance)."""
    return dict(recipe.from_arguments(args), network=_spec_from(args))


def _spec_from(args: argparse.Namespace) -> str:
    if args.spec is not None:
        return args.spec
    spec = (args.preset or DEFAULT_PRESET).strip().lower()
    if spec not in PRESETS:
        raise CLIError(f"unknown preset '{args.preset}'; choose one of {', '.join(PRESETS)} or give --spec")
    return spec


def _train_pairs(args: argparse.Namespace, out: Path) -> int:
    """``train --pairs FOLDER``: the data set is streamed, one pair per step (``out`` is checked)."""
    dataset = PairDataset.from_folder(args.pairs, image_key=args.image_key, labels_key=args.labels_key,
                                      label_offset=args.label_offset, channels_first=args.channels_first)
    class_names = [s.strip() for s in args.class_names.split(",")] if args.class_names else None
    model = model_for_dataset(dataset, _spec_from(args), args.activation, args.seed, class_names, filters=args.filters)
    _add_heads(model, args)
    image_labels = (_read_image_labels(args.image_labels, len(dataset), model, "in the order of the pairs (sorted by name)")
                    if args.image_labels else None)
    config = TrainConfig(steps=_train_steps(args), seconds=args.seconds, optimizer=args.optimizer, lr=args.lr,
                         augment=args.augment, balance=args.balance, seed=args.seed, context=args.context,
                         **_step_size(args))
    _print_network(model, args.context)
    print(f"data: {len(dataset)} pair(s) in {args.pairs}, streamed one per step")
    trainer = Trainer(model, dataset, None, config, image_labels=image_labels)
    _print_image_targets(trainer, args.image_labels)
    provenance = {"pairs": str(args.pairs), "label_offset": args.label_offset, "image_labels": args.image_labels,
                  "recipe": _recipe_of(args)}
    return _train_and_save(trainer, args, out, provenance)


def cmd_predict(args: argparse.Namespace) -> int:
    if args.superpixel_compactness is not None and args.refine_superpixels is None:
        raise CLIError("--superpixel-compactness applies only with --refine-superpixels SIZE")
    if Path(args.out).suffix.lower() == ".zarr":
        if args.refine_superpixels is not None:
            raise CLIError("--refine-superpixels needs whole images and does not apply to a .zarr output "
                           "(computed chunk by chunk); write .npy, .tif or .npz instead")
        if args.augment:
            raise CLIError("--augment needs whole images and does not apply to a .zarr output "
                           "(computed chunk by chunk); write .npy, .tif or .npz instead")
        return _predict_zarr(args)
    for opt in ("chunks", "scheduler", "workers", "memory_limit"):
        if getattr(args, opt) is not None:
            raise CLIError(f"--{opt.replace('_', '-')} applies to a .zarr output (big volumes) only")
    if args.overwrite:
        raise CLIError("--overwrite applies to a .zarr output (big volumes) only; other outputs are always replaced")
    out = _check_out(args.out, _PROB_EXT, "probabilities file")
    seg_out = _check_out(args.segmentation, _SEG_EXT, "segmentation file") if args.segmentation else None
    counts_out = _check_out(args.counts, (".csv",), "counts file") if args.counts else None
    _refuse_overwrite(out, [args.image, args.model], "probabilities file")
    if seg_out is not None:
        _refuse_overwrite(seg_out, [args.image, args.model, out], "segmentation file")
    if counts_out is not None:
        _refuse_overwrite(counts_out, [args.image, args.model, out, *([seg_out] if seg_out else [])], "counts file")
    outputs = [o for o in (out, seg_out, counts_out) if o is not None]
    for o in outputs:  # every output writable before any work
        check_writable(o)
    model = load_model(args.model)
    settings = _count_settings(args, model) if counts_out is not None else None
    imgs = files.read_images(args.image, args.image_key, args.slices, crop=args.crop, channels_first=args.channels_first)
    if seg_out is not None and seg_out.suffix.lower() == ".png" and imgs.stack:
        raise CLIError(f"segmentation file {seg_out}: PNG holds one image; {args.image} is a stack of {len(imgs)}, "
                       "write .tif instead")
    check_predict_memory(model, [a.shape for a in imgs.arrays], args.augment)
    names = list(model.class_names)
    compactness = args.superpixel_compactness or _SP_COMPACTNESS
    if args.refine_superpixels is not None:
        print(f"refining: class probabilities averaged over SLIC superpixels of ~{args.refine_superpixels:g} px "
              f"(compactness {compactness:g})")
    probs, segs, rows, image_probs = [], [], [], []
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    for img, name in zip(tqdm(imgs.arrays, desc="predicting", unit="image", disable=args.quiet or len(imgs) < 2, file=sys.stderr), imgs.names, strict=True):
        x = _as_float32(img, name)
        pred = predict(model, x)
        p = predict_proba(model, x, augment=True) if args.augment else pred.probabilities
        if args.refine_superpixels is not None:
            p = refine_with_superpixels(model, x, p, args.refine_superpixels, compactness)
        s = segment(p)
        probs.append(p)
        segs.append(s)
        head = pred.image_probabilities
        line = f"{name}: {_fractions_text(s, names)}"
        if head is not None:
            image_probs.append(np.asarray(head, np.float32))
            line += "; image head " + ", ".join(f"p({_class_label(names, k + 1)}) = {float(v):.3f}" for k, v in enumerate(head))
        print(line)
        if settings is not None:
            rows.append((name, _count_row(p, settings), np.bincount(s.ravel(), minlength=len(names) + 1)[1:] / s.size))
    elapsed = time.perf_counter() - t0
    prob = np.stack(probs) if imgs.stack else probs[0]
    names_arr = np.array(names, dtype=str)
    prob_dtype = args.prob_dtype or "float32"
    prob = encode_probabilities(prob, prob_dtype)
    extra = {"class_names": names_arr}
    if image_probs:
        extra["image_probabilities"] = np.stack(image_probs) if imgs.stack else image_probs[0]
    stage = Staged()  # every output is written, then all replace their targets: all or nothing
    try:
        files.write_array(out, prob, key="probabilities", extra=extra, allowed=_PROB_EXT, role="probabilities",
                          stage=stage)
        if seg_out is not None:
            seg = np.stack(segs) if imgs.stack else segs[0]
            seg = seg.astype(np.uint8 if len(names) < 256 else np.uint16, copy=False)
            files.write_array(seg_out, seg, key="segmentation", extra={"class_names": names_arr}, allowed=_SEG_EXT,
                              role="segmentation", stage=stage)
        if counts_out is not None:
            _write_counts(counts_out, names, [(z, n, c, f) for z, (n, c, f) in enumerate(rows)], image_probs or None,
                          stage)
        stage.commit()
    finally:
        stage.discard()
    scale = " (probability = value / 255)" if prob_dtype == "uint8" else ""
    print(f"wrote probabilities {tuple(prob.shape)} {prob_dtype}{scale} to {out} ({elapsed:.2f} s for {len(imgs)} image(s))")
    if image_probs:
        kept = "with them (array image_probabilities)" if out.suffix.lower() == ".npz" else "not in it (a .npz output or --counts keeps them)"
        print(f"image-level head probabilities: printed above, {kept}")
    if seg_out is not None:
        print(f"wrote segmentation {tuple(seg.shape)} (labels 1..{len(names)}) to {seg_out}")
    if counts_out is not None:
        flagged = sum(int(c[2]) for _, c, _ in rows)
        print(f"wrote counts of '{names[settings.class_index]}' objects to {counts_out}: "
              f"{sum(int(c[0]) for _, c, _ in rows)} object(s), {flagged} of {len(rows)} image(s) flagged")
    return 0


def _write_counts(path: Path, names: list[str], rows, image_probs: list[np.ndarray] | None, stage=None) -> None:
    """The per-slice counts CSV; with an image-level head, plus one column ``p_image_<class>`` per
    class after the first."""
    extra = {}
    if image_probs:
        extra = {f"p_image_{_class_label(names, k)}": [float(p[k - 1]) for p in image_probs] for k in range(1, len(names))}
    write_counts_csv(path, names, rows, extra=extra, stage=stage)


def _count_settings(args: argparse.Namespace, model):
    names = list(model.class_names)
    text = args.count_class
    if text is None:
        index = 1 if len(names) > 1 else 0
    elif text.strip() in names:
        index = names.index(text.strip())
    else:
        try:
            index = int(text) - 1
        except ValueError:
            raise CLIError(f"--count-class {text}: not a class of the model ({', '.join(f'{k + 1} = {n}' for k, n in enumerate(names))})") from None
        if not 0 <= index < len(names):
            raise CLIError(f"--count-class {text}: the model's labels are 1..{len(names)} ({', '.join(names)})")
    return CountSettings(class_index=index, threshold=float(args.threshold), min_area=int(args.min_area))


def _count_row(probs: np.ndarray, settings) -> tuple[int, int, int]:
    res = count_objects(probs[settings.class_index], settings.threshold, settings.min_area, settings.min_count, settings.min_pixels)
    return int(res.count), int(res.pixels.sum()), int(res.defect_present)


def _parse_chunks(text: str) -> tuple[int, int]:
    parts = [t.strip() for t in str(text).split(",")]
    try:
        values = [int(t) for t in parts]
    except ValueError:
        raise CLIError(f"--chunks {text}: give one size (1024) or rows,cols (512,2048)") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise CLIError(f"--chunks {text}: give one positive size (1024) or rows,cols (512,2048)")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


@contextmanager
def _sigint_ignored():
    """Ignore SIGINT while child processes start (they inherit it across exec); restore it after."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _default_scheduler() -> str:
    import importlib.util

    return "local" if importlib.util.find_spec("distributed") is not None else "threads"


@contextmanager
def _dask_scheduler(args: argparse.Namespace):
    """Yield ``(scheduler, description)``: 'threads'/'sync', or a distributed Client (local cluster or address)."""
    where = (args.scheduler or _default_scheduler()).strip()
    if where in ("threads", "sync"):
        if args.workers is not None and where == "sync":
            raise CLIError("--workers has no effect with --scheduler sync")
        yield where, f"dask local scheduler ({where}{', ' + str(args.workers) + ' thread(s)' if args.workers and where == 'threads' else ''})"
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CLIError(
            f"--scheduler {where} needs dask.distributed (pip install distributed); "
            "or use --scheduler threads"
        ) from None
    import logging

    if where == "local":
        import os

        n = args.workers or os.cpu_count() or 1
        kwargs = {"memory_limit": args.memory_limit} if args.memory_limit else {}
        try:
            # the workers start with SIGINT ignored (and keep it so): Ctrl-C in the terminal reaches the
            # whole process group, but only this process should act on it (stop, keep what is done)
            with _sigint_ignored():
                cluster = LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                    silence_logs=logging.ERROR, env={"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
                    **kwargs,
                )
        except (ValueError, TypeError) as exc:
            raise CLIError(f"cannot start a local dask cluster: {exc}") from None
        with cluster, Client(cluster) as client:
            yield client, f"local dask cluster: {n} worker process(es), 1 thread each"
        return
    if args.workers is not None or args.memory_limit is not None:
        raise CLIError("--workers and --memory-limit apply to the local cluster; size a remote cluster where it runs")
    try:
        client = Client(where, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise CLIError(f"cannot reach the dask scheduler at {where}: {exc}") from None
    with client:
        n = len(client.scheduler_info().get("workers", {}))
        yield client, f"dask cluster at {where}: {n} worker(s)"


def _predict_zarr(args: argparse.Namespace) -> int:
    import signal
    import threading

    out = Path(args.out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"output store {out}: the directory {parent} does not exist")
    if out.exists() and not out.is_dir():
        raise CLIError(f"output store {out} exists and is a file, not a zarr store")
    if args.segmentation:
        raise CLIError("with a .zarr output the segmentation is stored in the store (array 'segmentation'); drop --segmentation")
    _refuse_overwrite(out, [args.image, args.model], "output store")
    counts_out = _check_out(args.counts, (".csv",), "counts file") if args.counts else None
    check_writable(out, inside=out.is_dir())
    if counts_out is not None:
        check_writable(counts_out)
    chunks = _parse_chunks(args.chunks or "1024")
    model = load_model(args.model)
    if model.superpixels is not None:
        raise CLIError(f"{args.model} has a superpixel branch, which needs whole images; a .zarr output is computed "
                       "chunk by chunk: write .npy, .tif or .npz instead")
    if model.image_head is not None:
        print("note: the model's image-level head needs whole images and is not evaluated for a .zarr output")
    settings = _count_settings(args, model) if counts_out is not None else None
    vol = files.open_volume(args.image, args.image_key, args.slices, crop=args.crop, channels_first=args.channels_first)
    prob_dtype = args.prob_dtype or "uint8"
    z, c, h, w = vol.shape
    wh, ww = model.window
    print(f"volume: {vol.name}: {z} slice(s) of {h}x{w} pixels, {c} channel(s), {vol.dtype} ({human_bytes(vol.nbytes)})")
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after the running chunks (press Ctrl-C again to abort at once)", file=sys.stderr)

    from tqdm.auto import tqdm

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        with _store_errors(out), _dask_scheduler(args) as (scheduler, where):
            # the store is made (or checked for resuming) once the scheduler is up
            job = ZarrPrediction(model, vol, out, chunks, prob_dtype, settings, overwrite=args.overwrite)
            print(f"output: {out}: probabilities ({z}, {model.n_classes}, {h}, {w}) {prob_dtype}, segmentation; "
                  f"chunks {job.chunks[0]}x{job.chunks[1]} (+ a {wh}x{ww} window's halo), {job.grid[0] * job.grid[1]} per slice")
            todo, _ = job.pending()
            n_chunks = z * job.grid[0] * job.grid[1]
            if job.resumed:
                print(f"resuming: {n_chunks - len(todo)} of {n_chunks} chunk(s) already done")
            print(f"running on: {where}")
            tasks_left = len(todo) + (len(job.pending()[1]) if settings is not None else 0)
            with tqdm(total=tasks_left, desc="predicting", unit="task", disable=args.quiet, file=sys.stderr,
                      mininterval=0.25, dynamic_ncols=True) as bar:
                def progress(p):
                    bar.update(p.done - bar.n)

                t0 = time.perf_counter()
                result = job.run(scheduler, args.workers if scheduler == "threads" else None, progress, stop)
                elapsed = time.perf_counter() - t0
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    done_now = result.chunks_done - result.skipped
    rate = f", {done_now * (h * w) / max(job.grid[0] * job.grid[1], 1) / max(elapsed, 1e-9) / 1e6:.2f} Mpixel/s" if done_now else ""
    if not job.complete():
        print(f"stopped: {result.chunks_done} of {n_chunks} chunk(s) finished and kept in {out}; "
              "run the same command again to resume")
        return 130
    info = job.summary()
    names = list(model.class_names)
    totals = info["class_pixels"].sum(axis=0)
    share = ", ".join(f"{_class_label(names, k)} {100.0 * v / max(totals.sum(), 1):.1f}%" for k, v in enumerate(totals))
    print(f"wrote {out} in {elapsed:.1f} s ({done_now} chunk(s) this run{rate}); {share}")
    if counts_out is not None:
        job.write_csv(counts_out)
        counts = info["counts"]
        print(f"wrote per-slice counts of '{names[settings.class_index]}' objects to {counts_out}: "
              f"{int(counts[:, 0].sum())} object(s), {int(counts[:, 2].sum())} of {z} slice(s) flagged")
    return 0


@contextmanager
def _store_errors(out: Path):
    """A full disk or read-only file system while the store is written: a user error that says the
    finished chunks are kept."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS and "requested and" not in str(exc):
            raise
        kept = "; the finished chunks are kept: make room and run the same command again to resume" if out.is_dir() else ""
        raise CLIError(write_error_text(exc, out) + kept) from None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def cmd_info(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    spec = model.spec
    wh, ww = model.window
    cy, cx = spec.centre
    fy, fx = spec.pool_factor
    mean = np.asarray(model.norm_mean, dtype=float).ravel()
    std = np.asarray(model.norm_std, dtype=float).ravel()
    with np.load(args.model, allow_pickle=False) as z:  # load_model has checked the file
        header = json.loads(str(z["header"]))
    print(f"model: {args.model} ({header.get('format', '?')} version {header.get('version', '?')})")
    print(f"network: {spec.text}")
    print(f"window: {wh}x{ww} (classified pixel at offset {cy},{cx}); pooling factor {fy}x{fx}")
    print(f"activation: {model.activation}; dtype: {np.dtype(model.dtype).name}; parameters: {model.n_params:,}")
    print(f"input channels: {model.in_channels}; normalisation mean {np.array2string(mean, precision=4)}, std {np.array2string(std, precision=4)}")
    print("classes: " + ", ".join(f"{k + 1} = {n}" for k, n in enumerate(model.class_names)))
    heads = _heads_text(model)
    if heads:
        print(f"heads: {heads}")
    prov = getattr(model, "provenance", None) or {}
    print("provenance:")
    print("  " + json.dumps(_jsonable(prov), indent=2, sort_keys=True, default=str).replace("\n", "\n  "))
    return 0


_DEMO_MIN_SIZE = 16  # the synthetic sample's smallest side


def cmd_demo(args: argparse.Namespace) -> int:
    from scipy import ndimage as ndi

    if args.preset.strip().lower() not in PRESETS:
        raise CLIError(f"unknown preset '{args.preset}'; choose one of {', '.join(PRESETS)}")

    if args.size < _DEMO_MIN_SIZE:
        raise CLIError(f"--size {args.size}: the demo image needs at least {_DEMO_MIN_SIZE} pixels a side")
    save_dir = Path(args.save) if args.save else None
    if save_dir is not None and not save_dir.is_dir():
        raise CLIError(f"--save {save_dir}: not an existing directory")
    _demo_files = ("demo_image.tif", "demo_strokes.tif", "demo_truth.tif", "demo_probabilities.tif",
                   "demo_segmentation.tif", "demo_model" + MODEL_SUFFIX)
    for name in _demo_files if save_dir is not None else ():
        check_writable(save_dir / name)
    t_all = time.perf_counter()
    sample = two_texture_sample((args.size, args.size), seed=args.seed)
    names = list(sample.class_names)
    n_painted = int(np.count_nonzero(sample.strokes))
    print(
        f"sample: {args.size}x{args.size} synthetic image, '{names[0]}' background with '{names[1]}' blobs; "
        f"{n_painted} painted pixels ({100.0 * n_painted / sample.strokes.size:.1f}%) in "
        + ", ".join(f"{int(np.count_nonzero(sample.strokes == k + 1))} {n}" for k, n in enumerate(names))
    )
    model = Model.for_data([sample.image], [sample.strokes], spec=args.preset.strip().lower(), seed=args.seed, class_names=names)
    wh, ww = model.window
    print(f"network: {model.spec.text}; window {wh}x{ww}, {model.n_params:,} parameters")
    config = TrainConfig(steps=args.steps, seconds=args.seconds, seed=args.seed)
    trainer = Trainer(model, [sample.image], [sample.strokes], config)
    t0 = time.perf_counter()
    model, last, done, interrupted, first_s = _run_training(trainer, args.steps, args.quiet)
    train_s = time.perf_counter() - t0
    loss = f"{float(last.loss):.4f}" if last is not None else "n/a"
    print(f"trained {done} step(s) in {train_s:.1f} s (first step {first_s:.1f} s, with any Numba compilation); last loss {loss}")

    t1 = time.perf_counter()
    prob = predict_proba(model, sample.image)
    seg = segment(prob)
    predict_s = time.perf_counter() - t1
    unpainted = sample.strokes == 0
    acc = float(np.mean(seg[unpainted] == sample.truth[unpainted]))
    print(f"segmented in {predict_s:.2f} s; accuracy on the {int(unpainted.sum()):,} unpainted pixels: {100 * acc:.1f}%")
    for k, n in enumerate(names):
        true_k = sample.truth == k + 1
        found_k = seg == k + 1
        recall = float(np.mean(found_k[true_k])) if true_k.any() else float("nan")
        print(f"  {n}: {100 * found_k.mean():.1f}% of the image (truth {100 * true_k.mean():.1f}%), {100 * recall:.1f}% of it found")
    min_size = max(9, args.size * args.size // 2000)
    lab_true, n_true = ndi.label(sample.truth == 2)
    true_sizes = np.bincount(lab_true.ravel())[1:]
    lab_found, _ = ndi.label(seg == 2)
    found_sizes = np.bincount(lab_found.ravel())[1:]
    print(
        f"found {int(np.sum(found_sizes >= min_size))} '{names[1]}' region(s) of at least {min_size} pixels "
        f"(truth: {int(np.sum(true_sizes >= min_size))})"
    )
    if save_dir is not None:
        with Staged() as stage:  # all six files, or none
            for name, array in zip(_demo_files, (sample.image, sample.strokes, sample.truth, prob, seg.astype(np.uint8)),
                                   strict=False):
                files.write_array(save_dir / name, array, stage=stage)
            save_model(model, save_dir / _demo_files[-1])
        print(f"wrote {', '.join(_demo_files)} to {save_dir}")
    print(f"total {time.perf_counter() - t_all:.1f} s")
    return 130 if interrupted else 0


# ----------------------------------------------------------------------------- entry point


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [CLIError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError]
    errors.append(files.InputError)
    for name in ("InputError", "SpecError", "ModelFileError"):
        cls = getattr(engine, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename is not None else exc.strerror
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 user error, 130 interrupted)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        errors = _user_errors()
        return _run(args, errors)
    except KeyboardInterrupt:  # also while the engine is imported (the first second)
        print(f"{PROG}: aborted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, errors: tuple[type[BaseException], ...]) -> int:
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `napari-mpf info model.npz | head`: the reader left; not an error
        # Python would report the pipe again when flushing stdout at exit
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except errors as exc:
        print(f"{PROG}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only file system: the environment, not a bug
        if exc.errno not in ENVIRONMENT_ERRNOS and "requested and" not in str(exc):
            raise
        what = write_error_text(exc, exc.filename or "an output")
        print(f"{PROG}: error: {what}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{PROG}: error: out of memory; for big images write --out NAME.zarr (chunk by chunk, bounded memory)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

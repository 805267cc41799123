"""Command line: ``napari-mpf train | predict | info | demo`` (no Qt, no napari).

Every user error (missing or unreadable file, bad spec, shapes that do not match, labels with no
strokes, a corrupt model file) ends with ``napari-mpf: error: <message>`` on stderr and exit
code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import __version__

PROG = "napari-mpf"
_PROB_EXT = (".npy", ".tif", ".tiff", ".npz")
_SEG_EXT = (".tif", ".tiff", ".png", ".npy", ".npz")
_PROB_DTYPES = ("uint8", "float16", "float32")


class CLIError(Exception):
    """A user error found by the command line itself (turned into exit code 2)."""


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
    parser = argparse.ArgumentParser(
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
    g.add_argument("--preset", default=None, help="named network: fast (default), steel or n3")
    g.add_argument("--spec", metavar="TEXT", help="network in the papers' notation, e.g. 'C5x5x8, MPF2x2, C3x3x8, FC32'")
    t.add_argument("--activation", choices=("tanh", "relu"), default="tanh")
    t.add_argument("--optimizer", choices=("adam", "sgd", "armijo", "lbfgs"), default="adam")
    t.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default: the optimizer's)")
    t.add_argument("--steps", type=_positive_int, default=200, help="training steps (one image each; default 200)")
    t.add_argument("--no-augment", action="store_true", help="no random flips and rotations")
    t.add_argument("--no-balance", action="store_true", help="plain loss instead of the class-balanced one")
    t.add_argument("--seed", type=int, default=0, help="seed for weights, augmentation and --sample-labels (default 0)")
    t.add_argument("--class-names", metavar="A,B,...", help="names of classes 1..K, comma separated")
    t.add_argument("--out", required=True, metavar="MODEL.npz", help="where to save the trained model")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "predict",
        help="segment images with a trained model",
        description=(
            "Write class probabilities (K, H, W) per image, (Z, K, H, W) for a stack, float32; optionally the "
            "segmentation (labels 1..K). With --out STORE.zarr the volume is processed chunk by chunk with dask "
            "(bounded memory, progress, resumable, optionally on a dask.distributed cluster)."
        ),
    )
    p.add_argument("--model", required=True, metavar="MODEL.npz")
    p.add_argument("--image", required=True, metavar="FILE|FOLDER|STORE.zarr", help="image file, zarr store or folder of images (a stack)")
    _add_image_options(p)
    p.add_argument("--out", required=True, metavar="PROBS", help="probabilities: .npy, .tif, .npz, or a .zarr store for big volumes")
    p.add_argument("--segmentation", metavar="SEG", help="also write the arg-max labels 1..K: .tif, .png, .npy or .npz (a .zarr output always holds them)")
    p.add_argument("--prob-dtype", choices=tuple(_PROB_DTYPES), default=None, help="probabilities as uint8 (p*255), float16 or float32 (default: float32 for files, uint8 for .zarr)")
    p.add_argument("--counts", metavar="CSV", help="write per-slice object counts (defect present or not) and class fractions as CSV")
    p.add_argument("--count-class", metavar="CLASS", help="class whose objects are counted: a class name or label 2..K (default: label 2)")
    p.add_argument("--threshold", type=_fraction, default=0.5, help="probability threshold of an object pixel (default 0.5)")
    p.add_argument("--min-area", type=_positive_int, default=1, help="smallest object in pixels (default 1)")
    big = p.add_argument_group("big volumes (--out STORE.zarr)")
    big.add_argument("--chunks", metavar="N|ROWS,COLS", help="output chunk (tile) size; each reads the window's halo around it (default 1024)")
    big.add_argument("--scheduler", metavar="WHERE", help="'local' (a local dask.distributed cluster; the default when distributed is installed), 'threads' (the default otherwise) or 'sync' (no cluster), or a scheduler address such as tcp://host:8786")
    big.add_argument("--workers", type=_positive_int, help="local cluster: number of worker processes (default: one per core)")
    big.add_argument("--memory-limit", metavar="SIZE", help="local cluster: memory limit per worker, e.g. 2GB (default: dask's)")
    big.add_argument("--overwrite", action="store_true", help="start again instead of resuming an existing store")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="print a model file's header", description="Print a model's spec, window, classes, normalisation and provenance.")
    i.add_argument("model", metavar="MODEL.npz")
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


def _run_training(trainer, steps: int, quiet: bool, seconds: float | None = None):
    """Drive ``trainer.run()`` with a progress bar; return (model, last Progress, steps done, stopped, first step s).

    ``seconds`` stops training after that long, counted from the end of the first step (which
    includes Numba's compilation on a first run). The first Ctrl-C stops after the current step
    (``stopped`` is True and the model holds the weights of the last finished step); a second one
    aborts at once (KeyboardInterrupt).
    """
    import signal
    import threading

    gen = trainer.run()
    last = None
    stop_requested = False
    start = None
    model = None
    first_step_s = float("nan")
    t_begin = time.perf_counter()

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
                last = progress
                step = int(getattr(progress, "step", bar.n + 1))
                bar.update(max(step - bar.n, 0))
                bar.set_postfix(loss=f"{float(progress.loss):.4f}", refresh=False)
                if start is None:
                    start = time.perf_counter()
                    first_step_s = start - t_begin
                elif seconds is not None and time.perf_counter() - start >= seconds:
                    break
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
    from .engine import Model, TrainConfig, Trainer, files

    out = _check_out(args.out, (".npz",), "model file")
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
        labs = files.read_labels(lab_path, args.labels_key, args.slices, crop=args.crop, offset=args.label_offset)
        if len(imgs) != len(labs):
            raise CLIError(f"{img_path} gives {len(imgs)} image(s) but {lab_path} gives {len(labs)} label mask(s)")
        for img, lab, iname, lname in zip(imgs.arrays, labs.arrays, imgs.names, labs.names, strict=True):
            if img.shape[-2:] != lab.shape:
                raise CLIError(
                    f"{iname} is {img.shape[-2]}x{img.shape[-1]} pixels but its labels {lname} are "
                    f"{lab.shape[0]}x{lab.shape[1]}; they must match"
                )
        images += [np.asarray(a, dtype=np.float32) for a in imgs.arrays]
        masks += labs.arrays
        sources.append({"image": str(img_path), "labels": str(lab_path), "n": len(imgs), "slices": [int(i) for i in imgs.indices] if imgs.stack else None})
    if args.sample_labels is not None and args.sample_labels < 1:
        masks = _sample_labels(masks, args.sample_labels, args.seed)
    counts = _check_painted(masks, args.label_offset)
    class_names = [s.strip() for s in args.class_names.split(",")] if args.class_names else None
    spec = _spec_from(args)
    model = Model.for_data(images, masks, spec=spec, activation=args.activation, seed=args.seed, class_names=class_names)
    config = TrainConfig(
        steps=args.steps,
        optimizer=args.optimizer,
        lr=args.lr,
        augment=not args.no_augment,
        balance=not args.no_balance,
        seed=args.seed,
    )
    wh, ww = model.window
    print(f"network: {model.spec.text}")
    print(f"window: {wh}x{ww} pixels, {model.n_params:,} parameters, {model.in_channels} input channel(s)")
    names = list(model.class_names)
    painted = ", ".join(f"{_class_label(names, k - 1)} {int(counts[k]):,}" for k in range(1, len(counts)))
    shapes = sorted({"x".join(map(str, a.shape)) for a in images})
    print(f"data: {len(images)} image(s) ({', '.join(shapes)}); painted pixels: {painted}")

    provenance = {"data": sources, "label_offset": args.label_offset, "sample_labels": args.sample_labels,
                  "crop": args.crop}
    return _train_and_save(Trainer(model, images, masks, config), args, out, provenance)


def _train_and_save(trainer, args: argparse.Namespace, out: Path, provenance: dict) -> int:
    """Drain the training generator with a progress bar, save the model, report."""
    from .engine import save_model

    t0 = time.perf_counter()
    model, last, done, interrupted, _ = _run_training(trainer, trainer.config.steps, args.quiet)
    elapsed = time.perf_counter() - t0
    model.provenance["cli"] = {"command": "train", **provenance, "steps_done": done, "interrupted": interrupted}
    save_model(model, out)
    loss = f"{float(last.loss):.4f}" if last is not None else "n/a"
    rate = f" ({elapsed / done:.3f} s/step)" if done else ""
    print(f"trained {done} step(s) in {elapsed:.1f} s{rate}; final loss {loss}")
    if interrupted:
        print(f"stopped early (Ctrl-C): saved the weights after step {done} to {out}")
        return 130
    print(f"saved model to {out}")
    return 0


def _spec_from(args: argparse.Namespace) -> str:
    from .engine import PRESETS

    if args.spec is not None:
        return args.spec
    spec = (args.preset or "fast").strip().lower()
    if spec not in PRESETS:
        raise CLIError(f"unknown preset '{args.preset}'; choose one of {', '.join(PRESETS)} or give --spec")
    return spec


def _train_pairs(args: argparse.Namespace, out: Path) -> int:
    """``train --pairs FOLDER``: the data set is streamed, one pair per step."""
    from .engine import TrainConfig, Trainer
    from .engine.dataset import PairDataset, model_for_dataset

    dataset = PairDataset.from_folder(args.pairs, image_key=args.image_key, labels_key=args.labels_key,
                                      label_offset=args.label_offset, channels_first=args.channels_first)
    class_names = [s.strip() for s in args.class_names.split(",")] if args.class_names else None
    model = model_for_dataset(dataset, _spec_from(args), args.activation, args.seed, class_names)
    config = TrainConfig(steps=args.steps, optimizer=args.optimizer, lr=args.lr, augment=not args.no_augment,
                         balance=not args.no_balance, seed=args.seed)
    wh, ww = model.window
    print(f"network: {model.spec.text}")
    print(f"window: {wh}x{ww} pixels, {model.n_params:,} parameters, {model.in_channels} input channel(s)")
    print(f"data: {len(dataset)} pair(s) in {args.pairs}, streamed one per step")
    provenance = {"pairs": str(args.pairs), "label_offset": args.label_offset}
    return _train_and_save(Trainer(model, dataset, None, config), args, out, provenance)


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine import files, load_model, predict_proba, segment
    from .engine.chunked import encode_probabilities

    if Path(args.out).suffix.lower() == ".zarr":
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
    model = load_model(args.model)
    settings = _count_settings(args, model) if counts_out is not None else None
    imgs = files.read_images(args.image, args.image_key, args.slices, crop=args.crop, channels_first=args.channels_first)
    names = list(model.class_names)
    probs, segs, rows = [], [], []
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    for img, name in zip(tqdm(imgs.arrays, desc="predicting", unit="image", disable=args.quiet or len(imgs) < 2, file=sys.stderr), imgs.names, strict=True):
        p = predict_proba(model, np.asarray(img, dtype=np.float32))
        s = segment(p)
        probs.append(p)
        segs.append(s)
        print(f"{name}: {_fractions_text(s, names)}")
        if settings is not None:
            rows.append((name, _count_row(p, settings), np.bincount(s.ravel(), minlength=len(names) + 1)[1:] / s.size))
    elapsed = time.perf_counter() - t0
    prob = np.stack(probs) if imgs.stack else probs[0]
    names_arr = np.array(names, dtype=str)
    prob_dtype = args.prob_dtype or "float32"
    prob = encode_probabilities(prob, prob_dtype)
    files.write_array(out, prob, key="probabilities", extra={"class_names": names_arr}, allowed=_PROB_EXT, role="probabilities")
    scale = " (probability = value / 255)" if prob_dtype == "uint8" else ""
    print(f"wrote probabilities {tuple(prob.shape)} {prob_dtype}{scale} to {out} ({elapsed:.2f} s for {len(imgs)} image(s))")
    if seg_out is not None:
        seg = np.stack(segs) if imgs.stack else segs[0]
        seg = seg.astype(np.uint8 if len(names) < 256 else np.uint16, copy=False)
        if seg_out.suffix.lower() == ".png" and seg.ndim != 2:
            raise CLIError(f"segmentation file {seg_out}: PNG holds one image; this is a stack of {seg.shape[0]}, write .tif instead")
        files.write_array(seg_out, seg, key="segmentation", extra={"class_names": names_arr}, allowed=_SEG_EXT, role="segmentation")
        print(f"wrote segmentation {tuple(seg.shape)} (labels 1..{len(names)}) to {seg_out}")
    if counts_out is not None:
        from .engine.chunked import write_counts_csv

        write_counts_csv(counts_out, names, [(z, n, c, f) for z, (n, c, f) in enumerate(rows)])
        flagged = sum(int(c[2]) for _, c, _ in rows)
        print(f"wrote counts of '{names[settings.class_index]}' objects to {counts_out}: "
              f"{sum(int(c[0]) for _, c, _ in rows)} object(s), {flagged} of {len(rows)} image(s) flagged")
    return 0


def _count_settings(args: argparse.Namespace, model):
    from .engine.chunked import CountSettings

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
    from .engine.objects import count_objects

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


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


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

    from .engine import files, load_model
    from .engine.chunked import ZarrPrediction

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
    chunks = _parse_chunks(args.chunks or "1024")
    model = load_model(args.model)
    settings = _count_settings(args, model) if counts_out is not None else None
    vol = files.open_volume(args.image, args.image_key, args.slices, crop=args.crop, channels_first=args.channels_first)
    prob_dtype = args.prob_dtype or "uint8"
    z, c, h, w = vol.shape
    wh, ww = model.window
    print(f"volume: {vol.name}: {z} slice(s) of {h}x{w} pixels, {c} channel(s), {vol.dtype} ({_human_bytes(vol.nbytes)})")
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after the running chunks (press Ctrl-C again to abort at once)", file=sys.stderr)

    from tqdm.auto import tqdm

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        with _dask_scheduler(args) as (scheduler, where):
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
    from .engine import load_model

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
    prov = getattr(model, "provenance", None) or {}
    print("provenance:")
    print("  " + json.dumps(_jsonable(prov), indent=2, sort_keys=True, default=str).replace("\n", "\n  "))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from scipy import ndimage as ndi

    from .engine import (
        PRESETS,
        Model,
        TrainConfig,
        Trainer,
        files,
        predict_proba,
        save_model,
        segment,
    )
    from .engine.synthetic import two_texture_sample

    if args.preset.strip().lower() not in PRESETS:
        raise CLIError(f"unknown preset '{args.preset}'; choose one of {', '.join(PRESETS)}")

    save_dir = Path(args.save) if args.save else None
    if save_dir is not None and not save_dir.is_dir():
        raise CLIError(f"--save {save_dir}: not an existing directory")
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
    trainer = Trainer(model, [sample.image], [sample.strokes], TrainConfig(steps=args.steps, seed=args.seed))
    t0 = time.perf_counter()
    model, last, done, interrupted, first_s = _run_training(trainer, args.steps, args.quiet, seconds=args.seconds)
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
        files.write_array(save_dir / "demo_image.tif", sample.image)
        files.write_array(save_dir / "demo_strokes.tif", sample.strokes)
        files.write_array(save_dir / "demo_truth.tif", sample.truth)
        files.write_array(save_dir / "demo_probabilities.tif", prob)
        files.write_array(save_dir / "demo_segmentation.tif", seg.astype(np.uint8))
        save_model(model, save_dir / "demo_model.npz")
        print(f"wrote demo_image.tif, demo_strokes.tif, demo_truth.tif, demo_model.npz, demo_probabilities.tif, demo_segmentation.tif to {save_dir}")
    print(f"total {time.perf_counter() - t_all:.1f} s")
    return 130 if interrupted else 0


# ----------------------------------------------------------------------------- entry point


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [CLIError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError]
    from .engine import files

    errors.append(files.InputError)
    try:
        from . import engine
    except ImportError:  # pragma: no cover - the engine failed to import: let that traceback show
        return tuple(errors)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    errors = _user_errors()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: aborted", file=sys.stderr)
        return 130
    except errors as exc:
        print(f"{PROG}: error: {_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

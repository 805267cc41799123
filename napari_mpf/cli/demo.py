"""``napari-mpf demo``: train and predict on a synthetic sample."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..cli_checks import (
    CLIError,
    check_writable,
)
from ..engine import (
    PRESETS,
    Model,
    TrainConfig,
    Trainer,
    predict_proba,
    save_model,
    segment,
)
from ..engine.io import files
from ..engine.io.atomic import Staged
from ..engine.io.modelfile import MODEL_SUFFIX
from ..engine.training.synthetic import two_texture_sample
from .common import run_training

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
    model, last, done, interrupted, first_s = run_training(trainer, args.steps, args.quiet)
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

"""``napari-mpf train``: images and strokes (or a folder of pairs) -> a model file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .. import recipe
from ..cli_checks import (
    CLIError,
    check_writable,
    model_file_bytes,
    save_elsewhere,
    unpainted_classes_note,
    warn,
)
from ..engine import (
    PRESETS,
    InputError,
    Model,
    ModelFileError,
    TrainConfig,
    Trainer,
    parse_spec,
    save_model,
)
from ..engine.io import files
from ..engine.network.heads import add_image_head, add_superpixel_branch
from ..engine.network.spec import DEFAULT_PRESET
from ..engine.training.dataset import PairDataset, model_for_dataset
from .common import (
    NO_STEP_CAP,
    SP_COMPACTNESS,
    as_float32,
    check_out,
    class_label,
    heads_text,
    refuse_overwrite,
    run_training,
)

_IMAGE_LABEL_WORDS = {"1": 1.0, "yes": 1.0, "true": 1.0, "0": 0.0, "no": 0.0, "false": 0.0, "": None, "?": None}


def sample_labels(masks: list[np.ndarray], fraction: float, seed: int) -> list[np.ndarray]:
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


def cmd_train(args: argparse.Namespace) -> int:
    out = check_out(args.out, (".npz",), "model file")
    check_writable(out)
    _check_head_options(args)
    if args.pairs is not None:
        if args.image or args.labels or args.sample_labels is not None:
            raise CLIError("--pairs replaces --image/--labels (and --sample-labels does not apply to it)")
        if args.level is not None:
            raise CLIError("--level applies to an OME-Zarr --image, not to --pairs")
        return _train_pairs(args, out)
    if not args.image or not args.labels:
        raise CLIError("give --image and --labels (or --pairs FOLDER)")
    refuse_overwrite(out, [*args.image, *args.labels], "model file")
    if len(args.image) != len(args.labels):
        raise CLIError(f"got {len(args.image)} --image but {len(args.labels)} --labels; give one label file per image file")
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    sources = []
    for img_path, lab_path in zip(args.image, args.labels, strict=True):
        imgs = files.read_images(img_path, args.image_key, args.slices, crop=args.crop, channels_first=args.channels_first,
                                 level=args.level)
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
        images += [as_float32(a, n) for a, n in zip(imgs.arrays, imgs.names, strict=True)]
        masks += labs.arrays
        sources.append({"image": str(img_path), "labels": str(lab_path), "n": len(imgs), "slices": [int(i) for i in imgs.indices] if imgs.stack else None})
    if args.sample_labels is not None and args.sample_labels < 1:
        masks = sample_labels(masks, args.sample_labels, args.seed)
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
    painted = ", ".join(f"{class_label(names, k - 1)} {int(counts[k]):,}" for k in range(1, len(counts)))
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
            add_superpixel_branch(model, args.superpixel_branch, args.superpixel_compactness or SP_COMPACTNESS,
                                  args.superpixel_pool or "max")
        except InputError as exc:
            raise CLIError(f"--superpixel-branch: {exc}{hint if '1x1' in str(exc) else ''}") from None
    if args.image_head is not None:
        try:
            add_image_head(model, args.image_head)
        except InputError as exc:
            raise CLIError(f"--image-head: {exc}{hint if '1x1' in str(exc) else ''}") from None


def _print_network(model, context: str | None = None) -> None:
    wh, ww = model.window
    print(f"network: {model.spec.text}")
    print(f"window: {wh}x{ww} pixels, {model.n_params:,} parameters, {model.in_channels} input channel(s)")
    heads = heads_text(model)
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
            need = ", ".join(class_label(names, k) for k in range(1, j + 1))
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




def _step_size(args: argparse.Namespace) -> dict:
    """``crop=`` for :class:`TrainConfig` when ``--step-size`` is given (else its default)."""
    return {} if args.step_size is None else {"crop": args.step_size}


def _train_steps(args: argparse.Namespace) -> int:
    """--steps, or its default (``TrainConfig.steps``), or no practical cap when --seconds sets the length."""
    if args.steps is not None:
        return args.steps
    return NO_STEP_CAP if args.seconds is not None else TrainConfig.steps


def _train_and_save(trainer, args: argparse.Namespace, out: Path, provenance: dict) -> int:
    """Drain the training generator with a progress bar, save the model, report."""
    check_writable(out, need=model_file_bytes(trainer.model))
    t0 = time.perf_counter()
    steps = trainer.config.steps
    model, last, done, interrupted, _ = run_training(trainer, None if steps >= NO_STEP_CAP else steps, args.quiet)
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
                         augment=args.augment, balance=args.balance, seed=args.seed,
                         context=args.context, **_step_size(args))
    _print_network(model, args.context)
    print(f"data: {len(dataset)} pair(s) in {args.pairs}, streamed one per step")
    trainer = Trainer(model, dataset, None, config, image_labels=image_labels)
    _print_image_targets(trainer, args.image_labels)
    provenance = {"pairs": str(args.pairs), "label_offset": args.label_offset, "image_labels": args.image_labels,
                  "recipe": _recipe_of(args)}
    return _train_and_save(trainer, args, out, provenance)

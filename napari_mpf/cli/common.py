"""What the subcommands share: output checks, progress, class names in messages, the training loop with Ctrl-C."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..cli_checks import (
    CLIError,
)
from ..engine.network.inputs import FLOAT32_MAX

PROG = "napari-mpf"


PROB_EXT = (".npy", ".tif", ".tiff", ".npz")


SEG_EXT = (".tif", ".tiff", ".png", ".npy", ".npz")


PROB_DTYPES = ("uint8", "float16", "float32")


SP_POOLS = ("max", "mean")


SP_COMPACTNESS = 0.3


def check_out(path: str, allowed: Sequence[str], what: str) -> Path:
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


def same_file(a: Path, b: str | Path) -> bool:
    try:
        return a.resolve() == Path(b).resolve()
    except OSError:
        return False


def refuse_overwrite(out: Path, inputs: Sequence[str | Path], what: str) -> None:
    for src in inputs:
        if same_file(out, src):
            raise CLIError(f"{what} {out} is also an input file; choose another output path")


def progress_bar(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=quiet, file=sys.stderr, mininterval=0.25, dynamic_ncols=True)


def class_label(names: Sequence[str], k: int) -> str:
    return names[k] if k < len(names) else f"class {k + 1}"


def fractions_text(seg: np.ndarray, names: Sequence[str]) -> str:
    n = len(names)
    counts = np.bincount(seg.ravel(), minlength=n + 1)[1 : n + 1]
    total = max(int(seg.size), 1)
    return ", ".join(f"{class_label(names, k)} {100.0 * c / total:.1f}%" for k, c in enumerate(counts))


def run_training(trainer, steps: int | None, quiet: bool):
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
        # Numba compiles the kernels during the first step on a first use (about 16 s on 2 cores): say so
        with progress_bar(steps, "training (compiling on first use…)", quiet) as bar:
            while True:
                try:
                    progress = next(gen)
                except StopIteration as stop:
                    model = stop.value
                    break
                if last is None:
                    first_step_s = time.perf_counter() - t_begin
                    bar.set_description("training", refresh=False)
                last = progress
                trainer.finite_steps += bool(np.isfinite(float(progress.loss)))
                step = int(getattr(progress, "step", bar.n + 1))
                planned = int(getattr(progress, "n_steps", steps))
                if planned != bar.total and planned < NO_STEP_CAP:  # a time budget re-plans the steps as it goes
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


def as_float32(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` as float32, refusing float64 values beyond float32's range (they would become inf)."""
    if image.dtype == np.float64 and image.size:
        big = max(float(image.max()), -float(image.min()))
        if big > FLOAT32_MAX:
            raise CLIError(f"{name} has values up to {big:.3g}, beyond the float32 range (±{FLOAT32_MAX:.3g}) "
                           "the network computes in; rescale the image")
    return np.asarray(image, dtype=np.float32)


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj

NO_STEP_CAP = 10**9


def heads_text(model) -> str | None:
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
        what = ", ".join(f"p({class_label(names, k)} present)" for k in range(1, model.n_classes))
        parts.append(f"image-level head ({what}; loss weight {model.image_head['loss_weight']:g})")
    if model.context is not None:
        wh, ww = model.context.window
        parts.append(f"auto-context: the input holds the probabilities of a first stage ({model.context.spec.text}, "
                     f"window {wh}x{ww}, {model.context.n_params:,} parameters)")
    return "; ".join(parts) or None

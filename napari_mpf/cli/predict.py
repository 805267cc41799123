"""``napari-mpf predict``: a model applied to images in memory, or to a volume chunk by chunk into zarr."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..cli_checks import (
    ENVIRONMENT_ERRNOS,
    CLIError,
    check_predict_memory,
    check_writable,
    human_bytes,
)
from ..engine import (
    load_model,
    predict_proba,
    segment,
)
from ..engine.io import files
from ..engine.io.atomic import Staged, write_error_text
from ..engine.network.predict import predict, refine_with_superpixels
from ..engine.post.objects import count_objects
from ..engine.scale import (
    CountSettings,
    ZarrPrediction,
    encode_probabilities,
    write_counts_csv,
)
from ..engine.scale.layouts import LabelsLayout, OmeLayout, is_labels_path, is_ome_path
from .common import (
    PROB_EXT,
    SEG_EXT,
    SP_COMPACTNESS,
    as_float32,
    check_out,
    class_label,
    fractions_text,
    refuse_overwrite,
)


def cmd_predict(args: argparse.Namespace) -> int:
    if args.superpixel_compactness is not None and args.refine_superpixels is None:
        raise CLIError("--superpixel-compactness applies only with --refine-superpixels SIZE")
    if Path(args.out).suffix.lower() == ".zarr" or is_labels_path(Path(args.out)):
        if args.refine_superpixels is not None:
            raise CLIError("--refine-superpixels needs whole images and does not apply to a .zarr output "
                           "(computed chunk by chunk); write .npy, .tif or .npz instead")
        if args.augment:
            raise CLIError("--augment needs whole images and does not apply to a .zarr output "
                           "(computed chunk by chunk); write .npy, .tif or .npz instead")
        return _predict_zarr(args)
    for opt in ("chunks", "scheduler", "workers", "memory_limit", "levels"):
        if getattr(args, opt) is not None:
            raise CLIError(f"--{opt.replace('_', '-')} applies to a .zarr output (big volumes) only")
    if args.overwrite:
        raise CLIError("--overwrite applies to a .zarr output (big volumes) only; other outputs are always replaced")
    out = check_out(args.out, PROB_EXT, "probabilities file")
    seg_out = check_out(args.segmentation, SEG_EXT, "segmentation file") if args.segmentation else None
    counts_out = check_out(args.counts, (".csv",), "counts file") if args.counts else None
    refuse_overwrite(out, [args.image, args.model], "probabilities file")
    if seg_out is not None:
        refuse_overwrite(seg_out, [args.image, args.model, out], "segmentation file")
    if counts_out is not None:
        refuse_overwrite(counts_out, [args.image, args.model, out, *([seg_out] if seg_out else [])], "counts file")
    outputs = [o for o in (out, seg_out, counts_out) if o is not None]
    for o in outputs:  # every output writable before any work
        check_writable(o)
    model = load_model(args.model)
    settings = _count_settings(args, model) if counts_out is not None else None
    imgs = files.read_images(args.image, args.image_key, args.slices, crop=args.crop, channels_first=args.channels_first,
                             level=args.level)
    if seg_out is not None and seg_out.suffix.lower() == ".png" and imgs.stack:
        raise CLIError(f"segmentation file {seg_out}: PNG holds one image; {args.image} is a stack of {len(imgs)}, "
                       "write .tif instead")
    check_predict_memory(model, [a.shape for a in imgs.arrays], args.augment)
    names = list(model.class_names)
    compactness = args.superpixel_compactness or SP_COMPACTNESS
    if args.refine_superpixels is not None:
        print(f"refining: class probabilities averaged over SLIC superpixels of ~{args.refine_superpixels:g} px "
              f"(compactness {compactness:g})")
    probs, segs, rows, image_probs = [], [], [], []
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    for img, name in zip(tqdm(imgs.arrays, desc="predicting", unit="image", disable=args.quiet or len(imgs) < 2, file=sys.stderr), imgs.names, strict=True):
        x = as_float32(img, name)
        pred = predict(model, x)
        p = predict_proba(model, x, augment=True) if args.augment else pred.probabilities
        if args.refine_superpixels is not None:
            p = refine_with_superpixels(model, x, p, args.refine_superpixels, compactness)
        s = segment(p)
        probs.append(p)
        segs.append(s)
        head = pred.image_probabilities
        line = f"{name}: {fractions_text(s, names)}"
        if head is not None:
            image_probs.append(np.asarray(head, np.float32))
            line += "; image head " + ", ".join(f"p({class_label(names, k + 1)}) = {float(v):.3f}" for k, v in enumerate(head))
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
        files.write_array(out, prob, key="probabilities", extra=extra, allowed=PROB_EXT, role="probabilities",
                          stage=stage)
        if seg_out is not None:
            seg = np.stack(segs) if imgs.stack else segs[0]
            seg = seg.astype(np.uint8 if len(names) < 256 else np.uint16, copy=False)
            files.write_array(seg_out, seg, key="segmentation", extra={"class_names": names_arr}, allowed=SEG_EXT,
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
        extra = {f"p_image_{class_label(names, k)}": [float(p[k - 1]) for p in image_probs] for k in range(1, len(names))}
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
    if is_labels_path(out):
        parent = out.parent.parent  # <image>/labels/<name>: the labels group may not exist yet
    if not parent.is_dir():
        raise CLIError(f"output store {out}: the directory {parent} does not exist")
    if out.exists() and not out.is_dir():
        raise CLIError(f"output store {out} exists and is a file, not a zarr store")
    if args.segmentation:
        where = "its label image labels/segmentation" if is_ome_path(out) else "array 'segmentation'"
        raise CLIError(f"with a .zarr output the segmentation is stored in the store ({where}); drop --segmentation")
    refuse_overwrite(out, [args.image, args.model], "output store")
    counts_out = check_out(args.counts, (".csv",), "counts file") if args.counts else None
    into_image = is_labels_path(out) and not out.is_dir()  # the label group is made later, inside the image
    check_writable(out.parent.parent if into_image else out, inside=out.is_dir() or into_image)
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
    vol = files.open_volume(args.image, args.image_key, args.slices, crop=args.crop, channels_first=args.channels_first,
                            level=args.level)
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
            job = ZarrPrediction(model, vol, out, chunks, prob_dtype, settings, overwrite=args.overwrite, levels=args.levels)
            if isinstance(job.layout, OmeLayout):
                what = (f"an OME-Zarr image of the probabilities ({model.n_classes} channels, {prob_dtype}) with the "
                        f"label image labels/segmentation, {job.layout.levels} level(s)")
            elif isinstance(job.layout, LabelsLayout):
                what = f"the segmentation as a label image of {out.parent.parent}, {job.layout.levels} level(s), no probabilities"
            else:
                what = f"probabilities ({z}, {model.n_classes}, {h}, {w}) {prob_dtype}, segmentation"
            print(f"output: {out}: {what}; chunks {job.chunks[0]}x{job.chunks[1]} (+ a {wh}x{ww} window's halo), "
                  f"{job.grid[0] * job.grid[1]} per slice")
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
    share = ", ".join(f"{class_label(names, k)} {100.0 * v / max(totals.sum(), 1):.1f}%" for k, v in enumerate(totals))
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

"""Chunked (dask) prediction vs whole-image prediction: throughput, and peak memory vs volume size.

1. In memory, 2 threads: pixels/s of ``predict_proba`` slice by slice (the reference) against
   ``predict_dask(...).compute()`` with the threaded scheduler (2 workers, 1 Numba thread each) for
   two chunk sizes, interleaved A/B, median of ``--repeats``. The overhead is what the halo and the
   scheduler cost (target <= 15%).
2. On disk, each run in a fresh process: ``napari-mpf predict`` from a zarr volume into a zarr store
   (uint8 probabilities, segmentation, per-slice counts) for growing volumes, with the local threaded
   scheduler and once on a ``dask.distributed`` LocalCluster: pixels/s and the growth of peak RSS
   (VmHWM) over the process's RSS before the run (it should stay flat as the volume grows).
3. OME-Zarr output (``--out X.ome.zarr``: NGFF image, labels group, 2 pyramid levels) against the
   plain store, same volume and chunks, runs alternated, median of ``--repeats``.

    python benchmarks/bench_chunked.py            # about 1 minute on 2 cores
    python benchmarks/bench_chunked.py --quick    # smaller images, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np  # noqa: E402
from bench_speed import median_time  # noqa: E402  (same folder)

from napari_mpf.engine import Model, predict_proba, save_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_OVERHEAD = 0.15

_RUN = r"""
import json, sys, time
from napari_mpf import cli

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

model, warm, image, out, scheduler, chunks = sys.argv[1:7]
extra = ["--workers", "2"] if scheduler in ("threads", "local") else []
common = ["--scheduler", scheduler, *extra, "--chunks", chunks, "-q"] + (["--levels", "2"] if out.endswith(".ome.zarr") else [])
warm_out = out[:-len(".ome.zarr")] + ".warm.ome.zarr" if out.endswith(".ome.zarr") else out + ".warm.zarr"
assert cli.main(["predict", "--model", model, "--image", warm, "--out", warm_out, *common]) == 0
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
base = status("VmRSS:")
t = time.perf_counter()
assert cli.main(["predict", "--model", model, "--image", image, "--out", out, "--counts", out + ".csv", *common]) == 0
print(json.dumps({"seconds": time.perf_counter() - t, "base": base, "peak": status("VmHWM:")}))
"""



def random_model(spec: str, seed: int = 0) -> Model:
    model = Model.create(spec, 1, 2, seed=seed, class_names=["background", "foreground"])
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w[...] = rng.normal(size=w.shape) * 1.3 / np.sqrt(np.prod(w.shape[1:]))
    return model


def smooth_stack(n: int, side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    return np.stack([np.sin(xx / (5 + z % 7)) * np.cos(yy / 6) + 0.2 * rng.standard_normal((side, side), np.float32) for z in range(n)])


def in_memory(model: Model, stack: np.ndarray, chunk_sizes, repeats: int) -> dict:
    import dask.array as da

    from napari_mpf.engine.scale import predict_dask

    arr = da.from_array(stack, chunks=(1, *stack.shape[1:]))

    def whole():
        return [predict_proba(model, s) for s in stack]

    def chunked(c):
        return predict_dask(model, arr, chunks=(c, c), numba_threads_per_task=1).compute(scheduler="threads", num_workers=2)

    ref = np.stack(whole())  # warm-up (Numba) and the reference values
    for c in chunk_sizes:
        got = chunked(c)
        assert np.abs(got - ref).max() <= 1e-6, "chunked prediction differs from whole-image prediction"
    times = {"whole": [], **{c: [] for c in chunk_sizes}}
    for _ in range(repeats):  # interleaved A/B
        times["whole"].append(median_time(whole, 1))
        for c in chunk_sizes:
            times[c].append(median_time(lambda c=c: chunked(c), 1))
    px = stack.size
    res = {"pixels": px, "whole_px_s": px / statistics.median(times["whole"])}
    for c in chunk_sizes:
        rate = px / statistics.median(times[c])
        res[f"chunk{c}_px_s"] = rate
        res[f"chunk{c}_overhead"] = res["whole_px_s"] / rate - 1
    return res


def _disk_run(model_path: Path, n: int, side: int, chunks: int, tmp: Path, scheduler: str, suffix: str = ".zarr",
              tag: str = "") -> dict:
    """One ``napari-mpf predict`` of an ``n``-slice zarr volume in a fresh process: seconds and RSS."""
    import tifffile
    import zarr

    warm = tmp / "warm.tif"
    if not warm.exists():
        tifffile.imwrite(warm, smooth_stack(1, 128, seed=9))
    src = tmp / f"in{n}.zarr"
    if not src.exists():
        g = zarr.open_group(str(src), mode="w")
        arr = g.create_array("images", shape=(n, side, side), chunks=(1, 256, 256), dtype=np.float32)
        for z in range(n):
            arr[z] = smooth_stack(1, side, seed=z)[0]
    dst = tmp / f"out{n}-{scheduler}{tag}{suffix}"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, str(model_path), str(warm), str(src), str(dst), scheduler, str(chunks)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    px = n * side * side
    return {"slices": n, "volume_mb": px * 4 / 2**20, "px_s": px / r["seconds"],
            "rss_growth_mb": (r["peak"] - r["base"]) / 2**20, "peak_rss_mb": r["peak"] / 2**20}


def on_disk(model_path: Path, n_slices, side: int, chunks: int, tmp: Path, cluster: bool) -> list[dict]:
    runs = [(n, "threads") for n in n_slices] + ([(n_slices[1], "local")] if cluster else [])
    return [{**_disk_run(model_path, n, side, chunks, tmp, scheduler),
             "scheduler": "LocalCluster, 2 processes*" if scheduler == "local" else "threads (2)"} for n, scheduler in runs]


def ome_vs_plain(model_path: Path, n: int, side: int, chunks: int, tmp: Path, repeats: int) -> dict:
    """The same volume into a plain store and an OME-Zarr image, alternated: medians and their ratio."""
    runs: dict[str, list[dict]] = {".zarr": [], ".ome.zarr": []}
    for i in range(repeats):
        for suffix in runs:
            runs[suffix].append(_disk_run(model_path, n, side, chunks, tmp, "threads", suffix, tag=f"-r{i}"))
    med = {s: {k: statistics.median(r[k] for r in rs) for k in ("px_s", "rss_growth_mb", "peak_rss_mb")} for s, rs in runs.items()}
    return {"slices": n, "side": side, "chunks": chunks, "plain": med[".zarr"], "ome": med[".ome.zarr"],
            "ome_over_plain_px_s": med[".ome.zarr"]["px_s"] / med[".zarr"]["px_s"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="fast", help="network (default: the fast preset)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-cluster", action="store_true", help="skip the dask.distributed run")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    side, n_mem = (384, 2) if args.quick else (640, 4)
    repeats = 1 if args.quick else args.repeats
    disk_slices, disk_side = ((2, 4, 8), 256) if args.quick else ((2, 8, 24), 512)
    model = random_model(args.spec)
    wh, ww = model.window
    print(f"network: {model.spec.text} (window {wh}x{ww}); 2 cores; numba threads {os.environ['NUMBA_NUM_THREADS']}")
    t0 = time.perf_counter()
    mem = in_memory(model, smooth_stack(n_mem, side), (512, 256) if not args.quick else (192, 128), repeats)
    print(f"\nin memory, {n_mem} slices of {side}x{side} ({mem['pixels'] / 1e6:.2f} Mpixel), median of {repeats}:")
    print(f"  whole image (predict_proba per slice): {mem['whole_px_s'] / 1e6:6.3f} Mpixel/s")
    for key in [k for k in mem if k.endswith("_overhead")]:
        c = key[len("chunk"): -len("_overhead")]
        flag = "ok" if mem[key] <= TARGET_OVERHEAD else "ABOVE TARGET"
        print(f"  predict_dask, {c}x{c} chunks, 2 threads:  {mem[f'chunk{c}_px_s'] / 1e6:6.3f} Mpixel/s "
              f"(overhead {100 * mem[key]:+.1f}%, target <= {100 * TARGET_OVERHEAD:.0f}%: {flag})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_model(model, tmp / "model.npz")
        try:
            import distributed  # noqa: F401

            cluster = not args.no_cluster
        except ImportError:
            cluster = False
        disk = on_disk(tmp / "model.npz", disk_slices, disk_side, 512, tmp, cluster)
        ome = ome_vs_plain(tmp / "model.npz", disk_slices[1], disk_side, 256, tmp, max(repeats, 2))
    print(f"\non disk: napari-mpf predict zarr -> zarr (uint8 probabilities, segmentation, counts), {disk_side}x{disk_side} slices, 512x512 chunks:")
    print("  slices  volume    scheduler                    Mpixel/s  vs whole  peak RSS growth  peak RSS")
    for r in disk:
        rel = r["px_s"] / mem["whole_px_s"] - 1
        print(f"  {r['slices']:6d}  {r['volume_mb']:5.0f} MB  {r['scheduler']:27s}  {r['px_s'] / 1e6:8.3f}  {100 * rel:+7.1f}%  "
              f"{r['rss_growth_mb']:11.1f} MB  {r['peak_rss_mb']:6.0f} MB")
    if any("LocalCluster" in r["scheduler"] for r in disk):
        print("  * its time includes starting the cluster; its RSS is the client process's (the workers are separate)")
    print(f"\nOME-Zarr image (2 levels, labels group) vs plain store, {ome['slices']} slices of {disk_side}x{disk_side}, "
          f"{ome['chunks']}x{ome['chunks']} chunks, threads (2), median of {max(repeats, 2)} alternated runs:")
    print("  output     Mpixel/s  peak RSS growth  peak RSS")
    for name in ("plain", "ome"):
        r = ome[name]
        print(f"  {name:9s}  {r['px_s'] / 1e6:8.3f}  {r['rss_growth_mb']:11.1f} MB  {r['peak_rss_mb']:6.0f} MB")
    print(f"  OME-Zarr / plain throughput: {ome['ome_over_plain_px_s']:.3f}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"in_memory": mem, "on_disk": disk, "ome_vs_plain": ome}, indent=2, default=str))


if __name__ == "__main__":
    main()

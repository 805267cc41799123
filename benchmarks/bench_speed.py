"""Speed of the MPF engine, side by side with PyTorch (if installed) and the patch-by-patch reference.

One run measures, interleaved A/B/A/B, the median of ``--repeats`` runs after a warm-up, 2 threads:
training step (forward + backward over every pixel) in patches/s, prediction time per image, peak
memory (RSS, each in a fresh process), the machine's sgemm peak (so "% of peak" is honest), the
patch-by-patch reference and the train -> first preview latency (cold and warm Numba cache).

    python benchmarks/bench_speed.py            # everything (about 5-8 minutes on 2 cores)
    python benchmarks/bench_speed.py --quick    # fewer repeats, no memory / latency / reference

PyTorch is optional (``pip install -e .[bench]`` pins torch==2.13.0); without it only our figures
are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from napari_mpf.engine import Model, predict_proba  # noqa: E402
from napari_mpf.engine.network.mpf import Workspace  # noqa: E402
from napari_mpf.engine.training.loss import batch_loss, make_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    ("steel", "train_ratio"): 2.0,
    ("n3", "train_ratio"): 1.2,
    ("steel", "predict_ratio"): 0.5,
    ("n3", "predict_ratio"): 0.8,
    ("n3", "peak_fraction"): 0.45,
    ("n3", "rss_gb"): 1.5,
    ("default", "latency_warm"): 1.5,
}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sgemm_peak(repeats: int) -> float:
    n = 4096
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b
    return 2 * n**3 / median_time(lambda: a @ b, repeats) / 1e9


def train_flops(model: Model, shape: tuple[int, int]) -> float:
    """FLOPs of the convolutions of one dense training step (forward, weight and input gradients)."""
    py, px = model.spec.pool_factor
    wh, ww = model.window
    h = -(-shape[0] // py) * py + wh - 1
    w = -(-shape[1] // px) * px + ww - 1
    frags, cin, total, first = 1, model.in_channels, 0.0, True
    for layer in model.spec.layers:
        if layer.kind == "pool":
            ph, pw = layer.size
            frags *= ph * pw
            h, w = (h - ph + 1) // ph, (w - pw + 1) // pw
            continue
        kh, kw = layer.size
        h, w = h - kh + 1, w - kw + 1
        fwd = 2.0 * cin * kh * kw * layer.maps * h * w * frags
        total += fwd * (2 if first else 3)
        first = False
        cin = layer.maps
    return total


class Ours:
    name = "napari-mpf"

    def __init__(self, model: Model, image: np.ndarray, labels: np.ndarray):
        self.model, self.image = model, image
        x = ((image - model.norm_mean[0]) / model.norm_std[0])[None].astype(np.float32)
        self.batch = make_batch(model, x, labels)
        self.workspace = Workspace()  # as Trainer.run: buffers reused from step to step

    def train_step(self):
        batch_loss(self.model, self.batch, workspace=self.workspace)

    def predict(self):
        return predict_proba(self.model, self.image)


class Torch:
    name = "pytorch"

    def __init__(self, model: Model, image: np.ndarray, labels: np.ndarray):
        import torch
        from torch import nn

        torch.set_num_threads(2)
        self.torch = torch
        layers, dil, cin = [], 1, model.in_channels
        n_param = 0
        for i, layer in enumerate(model.spec.layers):
            if layer.kind == "pool":
                layers.append(nn.MaxPool2d(layer.size, stride=1, dilation=dil))
                dil *= layer.size[0]
                continue
            conv = nn.Conv2d(cin, layer.maps, tuple(model.weights[n_param].shape[2:]), dilation=dil)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(np.asarray(model.weights[n_param])))
                conv.bias.copy_(torch.from_numpy(np.asarray(model.biases[n_param])))
            layers.append(conv)
            if i < len(model.spec.layers) - 1:
                layers.append(nn.Tanh() if model.activation == "tanh" else nn.ReLU())
            cin, n_param = layer.maps, n_param + 1
        self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        wh, ww = model.window
        x = (image - model.norm_mean[0]) / model.norm_std[0]
        padded = np.pad(x, ((wh // 2, wh - 1 - wh // 2), (ww // 2, ww - 1 - ww // 2)), mode="reflect")
        self.x = torch.from_numpy(padded[None, None].astype(np.float32)).contiguous(
            memory_format=torch.channels_last)
        self.target = torch.from_numpy(labels.astype(np.int64) - 1)[None]

    def train_step(self):
        self.net.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.net(self.x), self.target)
        loss.backward()

    def predict(self):
        with self.torch.no_grad():
            return self.torch.softmax(self.net(self.x), dim=1)[0].numpy()


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def measure_pair(net: str, shape, repeats: int, use_torch: bool) -> dict:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=shape).astype(np.float32)
    labels = rng.integers(1, 3, size=shape).astype(np.int32)
    model = Model.create(net, 1, 2, seed=0)
    model.norm_mean[:] = 128.0
    model.norm_std[:] = 64.0
    engines = [Ours(model, image, labels)]
    if use_torch:
        engines.append(Torch(model, image, labels))
        diff = float(np.abs(engines[0].predict() - engines[1].predict()).max())
        if diff > 1e-3:
            raise SystemExit(f"{net}: PyTorch and napari-mpf disagree (max |dp| = {diff:.2e})")
    else:
        diff = None
    for e in engines:  # warm-up
        e.train_step()
        e.predict()
    train = {e.name: [] for e in engines}
    pred = {e.name: [] for e in engines}
    for _ in range(repeats):  # interleaved A/B/A/B
        for e in engines:
            train[e.name].append(median_time(e.train_step, 1))
            pred[e.name].append(median_time(e.predict, 1))
    n = shape[0] * shape[1]
    out = {"net": net, "shape": shape, "max_prob_diff": diff, "flops": train_flops(model, shape)}
    for name in train:
        out[name] = {
            "train_s": statistics.median(train[name]),
            "train_patches_s": n / statistics.median(train[name]),
            "predict_s": statistics.median(pred[name]),
        }
    return out


def reference_patches_per_s(net: str) -> dict:
    """Patch-by-patch reference (tests/engine/reference.py): train and predict patches/s."""
    sys.path.insert(0, str(ROOT / "tests" / "engine"))
    import reference  # noqa: PLC0415

    side = 4 if net == "n3" else 8
    rng = np.random.default_rng(0)
    model = Model.create(net, 1, 2, seed=0)
    image = rng.normal(size=(side, side)).astype(np.float32)
    labels = rng.integers(1, 3, size=(side, side))
    t_train = median_time(lambda: reference.ref_loss_and_gradients(model, image, labels, dtype=np.float32), 3)
    t_pred = median_time(lambda: reference.ref_logits(model, image), 3)
    return {"train_patches_s": side * side / t_train, "predict_patches_s": side * side / t_pred}


_RSS_SCRIPT = """
import sys, numpy as np

def peak():  # VmHWM restarts at exec, unlike ru_maxrss, which a forked child inherits
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) * 1024

from napari_mpf.engine import Model
from napari_mpf.engine.training.loss import batch_loss, make_batch
from napari_mpf.engine.network.mpf import Workspace
net, engine = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
image = rng.normal(size=(512, 512)).astype(np.float32)
labels = rng.integers(1, 3, size=(512, 512)).astype(np.int32)
model = Model.create(net, 1, 2, seed=0)
base = peak()
if engine == "ours":
    batch = make_batch(model, image[None], labels)
    workspace = Workspace()  # as Trainer.run
    for _ in range(2):
        batch_loss(model, batch, workspace=workspace)
else:
    sys.path.insert(0, sys.argv[3])
    from bench_speed import Torch
    t = Torch(model, image, labels)
    for _ in range(2):
        t.train_step()
print(peak() / 1e9, base / 1e9)
"""


def peak_rss_gb(net: str, engine: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, net, engine, str(Path(__file__).parent)],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


_LATENCY_SCRIPT = """
import time
t0 = time.perf_counter()
import numpy as np
from napari_mpf.engine import Model, Trainer, TrainConfig
from napari_mpf.engine.training.synthetic import two_texture_sample
s = two_texture_sample((512, 512), seed=0)
t1 = time.perf_counter()
model = Model.for_data([s.image], [s.strokes])  # the default network (engine.network.spec.DEFAULT_PRESET)
progress = next(Trainer(model, [s.image], [s.strokes], TrainConfig(preview_every=1)).run())
assert progress.probabilities is not None
print(time.perf_counter() - t1, t1 - t0)
"""


def latency(cache_dir: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", _LATENCY_SCRIPT], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return float(out[0])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else max(5, args.repeats)
    use_torch = have_torch() and not args.no_torch
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                     "cores": os.cpu_count(), "torch": use_torch}
    results["sgemm_gflops"] = sgemm_peak(repeats)
    results["pairs"] = [measure_pair(net, shape, repeats, use_torch)
                        for net in ("steel", "n3") for shape in ((512, 512), (60, 138))]
    if not args.quick:
        results["reference"] = {net: reference_patches_per_s(net) for net in ("steel", "n3")}
        results["rss"] = {f"{net}/{eng}": peak_rss_gb(net, eng) for net in ("steel", "n3")
                          for eng in (("ours", "torch") if use_torch else ("ours",))}
        with tempfile.TemporaryDirectory() as cold:
            results["latency_cold"] = latency(cold)
            results["latency_warm"] = min(latency(cold) for _ in range(3))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(report(results))


def report(r: dict) -> str:
    peak = r["sgemm_gflops"]
    lines = [
        f"napari-mpf speed, {r['date']}, {r['cores']} cores, sgemm peak {peak:.0f} GFLOP/s "
        f"(numpy float32 4096^3, same run)",
        "",
        "| net | image | ours train (patches/s) | torch train | ratio (target) | % sgemm peak (target) "
        "| ours predict (s) | torch predict | ratio (target) | max abs dprob |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["pairs"]:
        ours, torch = p["napari-mpf"], p.get("pytorch")
        h, w = p["shape"]
        gflops = p["flops"] / ours["train_s"] / 1e9
        frac = gflops / peak
        t_target = TARGETS.get((p["net"], "train_ratio")) if (h, w) == (512, 512) else None
        p_target = TARGETS.get((p["net"], "predict_ratio")) if (h, w) == (512, 512) else None
        f_target = TARGETS.get((p["net"], "peak_fraction")) if (h, w) == (512, 512) else None
        if torch:
            tr = ours["train_patches_s"] / torch["train_patches_s"]
            pr = ours["predict_s"] / torch["predict_s"]
            cells = [f"{torch['train_patches_s']:,.0f}", _vs(tr, t_target, ">="),
                     f"{torch['predict_s']:.3f}", _vs(pr, p_target, "<="), f"{p['max_prob_diff']:.1e}"]
        else:
            cells = ["-", "-", "-", "-", "-"]
        lines.append(
            f"| {p['net']} | {w}x{h} | {ours['train_patches_s']:,.0f} | {cells[0]} | {cells[1]} | "
            f"{100 * frac:.1f}% ({gflops:.0f} GFLOP/s){'' if f_target is None else ' (>= 45%)'} | "
            f"{ours['predict_s']:.3f} | {cells[2]} | {cells[3]} | {cells[4]} |"
        )
    if "reference" in r:
        lines += ["", "| net | patch-by-patch reference train (patches/s) | dense MPF train 512² | speed-up "
                  "| reference predict (patches/s) | dense predict 512² | speed-up |", "|---|---|---|---|---|---|---|"]
        for net, ref in r["reference"].items():
            p = next(q for q in r["pairs"] if q["net"] == net and tuple(q["shape"]) == (512, 512))
            ours = p["napari-mpf"]
            dense_pred = 512 * 512 / ours["predict_s"]
            lines.append(
                f"| {net} | {ref['train_patches_s']:,.0f} | {ours['train_patches_s']:,.0f} | "
                f"{ours['train_patches_s'] / ref['train_patches_s']:,.0f}x | {ref['predict_patches_s']:,.0f} | "
                f"{dense_pred:,.0f} | {dense_pred / ref['predict_patches_s']:,.0f}x |")
    if "rss" in r:
        lines += ["", "| peak RSS, 2 training steps on 512² | GB (target) |", "|---|---|"]
        for key, (peak_gb, _) in r["rss"].items():
            target = " (<= 1.5)" if key == "n3/ours" else ""
            lines.append(f"| {key} | {peak_gb:.2f}{target} |")
    if "latency_warm" in r:
        lines += ["", "| Train -> first preview, default net, 512² | s (target) |", "|---|---|",
                  f"| cold Numba cache | {r['latency_cold']:.2f} |",
                  f"| warm Numba cache | {r['latency_warm']:.2f} (<= 1.5) |"]
    return "\n".join(lines)


def _vs(value: float, target: float | None, op: str) -> str:
    if target is None:
        return f"{value:.2f}"
    ok = value >= target if op == ">=" else value <= target
    return f"{value:.2f} ({op} {target}, {'met' if ok else 'not met'})"


if __name__ == "__main__":
    main()

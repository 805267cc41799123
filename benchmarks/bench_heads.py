"""Cost of the seed methods on 512x512 ISBI slices (fast net): SLIC, prediction, training step.

    .venv/bin/python benchmarks/bench_heads.py      (needs ../shared/data/isbi2012_train.npz)

Prints the median of several repeats; run it on a quiet machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from napari_mpf.engine import Model, TrainConfig, Trainer
from napari_mpf.engine.network.heads import add_image_head, add_superpixel_branch
from napari_mpf.engine.network.predict import predict
from napari_mpf.engine.network.superpixels import clear_superpixel_cache, slic_superpixels

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_train.npz"


def median_seconds(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    with np.load(DATA) as d:
        images = list(d["images"][:4].astype(np.float32))
        labels = list(d["labels"][:4].astype(np.int32) + 1)
    x = ((images[0] - np.mean(images)) / np.std(images))[None]

    def slic_once():
        clear_superpixel_cache()
        slic_superpixels(x, 100, 0.3)

    print(f"SLIC 512x512, superpixels of 100 px: {median_seconds(slic_once):.3f} s")
    for name in ("plain", "superpixel branch 100", "image-level head"):
        model = Model.for_data(images, labels, spec="fast", seed=0)
        if name.startswith("superpixel"):
            add_superpixel_branch(model, 100)
        elif name.startswith("image"):
            add_image_head(model)
        predict(model, images[0])  # compile, and SLIC into the cache
        seconds = median_seconds(lambda m=model: predict(m, images[0]))
        stamps = [time.perf_counter() for _ in Trainer(model, images, labels, TrainConfig(steps=60, seed=0)).run()]
        step = float(np.median(np.diff(stamps[10:])))
        print(f"{name}: predict 512x512 {seconds:.3f} s (superpixels cached); training step (256 crop) {step:.3f} s")


if __name__ == "__main__":
    main()

"""Compile the engine's kernels before the user needs them.

Numba compiles each kernel on its first call (about a minute on a fresh install on two cores; its
on-disk cache makes later starts quick). :func:`warm_up` runs the default path once on a tiny image,
a training step with a preview and a prediction, so that the widget (in a background thread while
the user paints) and the command line can take that wait before Train, not after it.
:func:`prepare` does the compiling in a child process first: compiling holds the interpreter's lock,
which froze the viewer for seconds at a time; the parent then only loads the cached kernels.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from ..network.model import Model
from ..network.predict import predict_proba
from ..network.spec import DEFAULT_PRESET
from .train import TrainConfig, Trainer

__all__ = ["warm_up", "prepare"]


def warm_up(spec: str = DEFAULT_PRESET, filters: dict | str | None = None, in_channels: int = 1,
            size: int = 80) -> float:
    """Train ``spec`` for two steps on a ``size`` x ``size`` random image (with a preview) and
    predict it: every kernel of that path is then compiled (or loaded from Numba's cache).
    Returns the seconds it took."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    image = rng.random((in_channels, size, size), dtype=np.float32)
    labels = np.zeros((size, size), np.uint8)
    labels[size // 4, 4:-4] = 1
    labels[3 * size // 4, 4:-4] = 2
    model = Model.for_data([image], [labels], spec=spec, filters=filters)
    trainer = Trainer(model, [image], [labels], TrainConfig(steps=2, preview_every=1, crop=None))
    for _ in trainer.run():
        pass
    predict_proba(trainer.model, image)
    return time.perf_counter() - t0


def prepare(spec: str = DEFAULT_PRESET, in_channels: int = 1, timeout: float = 600.0) -> float:
    """:func:`warm_up` in a child Python (it fills Numba's on-disk cache without holding this
    process's interpreter lock), then here, which loads the cached kernels. If the child fails (no
    writable cache, a killed process…), everything is compiled here as :func:`warm_up` does.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    code = ("import json, sys; from napari_mpf.engine.training.warmup import warm_up; "
            "warm_up(**json.loads(sys.argv[1]))")
    try:
        subprocess.run([sys.executable, "-c", code, json.dumps({"spec": spec, "in_channels": in_channels})],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        pass
    warm_up(spec, in_channels=in_channels)
    return time.perf_counter() - t0

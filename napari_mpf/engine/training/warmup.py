"""Compile the engine's kernels before the user needs them.

Numba compiles each kernel on its first call (about 16 s for the default net on a fresh install on two
cores; its on-disk cache makes later starts quick). :func:`warm_up` runs the default path once on a
tiny image, a training step with a preview and a prediction, so that the widget (in a background
thread while the user paints) and the command line can take that wait before Train, not after it.
:func:`prepare` does the compiling in two child processes first, one running :func:`warm_up`, the
other compiling the training's backward kernels meanwhile (:func:`warm_backward`): compiling holds
the interpreter's lock, which froze the viewer for seconds at a time; the parent then only loads
the cached kernels.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from ..kernels import layers as K
from ..network.model import Model
from ..network.predict import predict_proba
from ..network.spec import DEFAULT_PRESET
from .train import TrainConfig, Trainer

__all__ = ["warm_up", "warm_backward", "prepare"]


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


def warm_backward() -> None:
    """Compile the kernels a training step runs after the forward pass (loss, pooling, activation
    and bias gradients), in the order :func:`warm_up` reaches them last-first, on tiny float32
    arrays of the types training passes (a test checks that :func:`warm_up` then compiles none of
    them again)."""
    f32 = np.float32
    K.softmax_cross_entropy(np.zeros((2, 2, 2), f32), np.zeros((2, 2), np.int32), np.ones(2),
                            np.zeros((2, 2, 2), f32), np.zeros(2))
    K.mpf_backward(np.zeros((4, 1, 1, 1), f32), np.zeros((4, 1, 1, 1), np.int32), 2, 2, np.zeros((1, 1, 2, 2), f32))
    K.activation_backward(np.zeros((1, 1, 2, 2), f32), np.zeros((1, 1, 2, 2), f32), K.ACT_TANH_FAST)
    K.bias_grad(np.zeros((1, 1, 2, 2), f32), np.zeros(1, f32))
    K.gather_rows(np.zeros((1, 1, 2, 2), f32), 0, 2, np.zeros((1, 4), f32))
    K.act_backward_block(np.zeros((1, 2), f32), np.zeros((1, 2), f32), K.ACT_TANH_FAST)


def prepare(spec: str = DEFAULT_PRESET, in_channels: int = 1, timeout: float = 600.0) -> float:
    """:func:`warm_up` and :func:`warm_backward` in two child Pythons at once (they fill Numba's
    on-disk cache without holding this process's interpreter lock), then :func:`warm_up` here, which
    loads the cached kernels. If a child fails (no writable cache, a killed process…), what is
    missing is compiled here as :func:`warm_up` does. Returns the seconds it took."""
    t0 = time.perf_counter()
    module = "from napari_mpf.engine.training.warmup import warm_up, warm_backward"
    codes = [f"import json, sys; {module}; warm_up(**json.loads(sys.argv[1]))", f"{module}; warm_backward()"]
    args = json.dumps({"spec": spec, "in_channels": in_channels})
    children = []
    try:
        for code in codes:
            children.append(subprocess.Popen([sys.executable, "-c", code, args], stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for child in children:
            child.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    except (OSError, subprocess.SubprocessError):
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    warm_up(spec, in_channels=in_channels)
    return time.perf_counter() - t0

"""The one training loop: a generator that yields :class:`Progress` and returns the trained model.

The GUI wraps :meth:`Trainer.run` in a worker, the CLI draws a progress bar from it, tests drain it.
Weights change only inside a step, so stopping between two yields keeps the last good weights.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..network.dihedral import dihedral
from ..network.features import n_outputs
from ..network.heads import add_image_head, add_superpixel_branch, has_heads
from ..network.inputs import InputError, check_training_pairs
from ..network.model import Model
from ..network.mpf import Workspace
from ..network.predict import normalise, predict_proba, staged_input
from ..network.spec import check_network_size, parse_spec
from ..network.superpixels import slic_superpixels
from .calibration import PriorCorrection
from .loss import Batch, batch_loss, crop_box, make_batch
from .optim import OPTIMIZERS, default_lr, make_optimizer
from .schedule import StepPlanner, cosine_schedule
from .strokes import class_weights, weights_for_labels

__all__ = ["CONTINUE_LR", "LIVE_STEPS", "TrainConfig", "Progress", "Trainer", "train", "fit"]

#: a network that has trained before continues at this share of the default learning rate (each
#: round of corrections then refines instead of starting over; benchmarks/loop.py)
CONTINUE_LR = 0.3
#: steps of a live retraining after the user paints (the widget's default, the loop benchmark's rounds)
LIVE_STEPS = 15


@dataclass
class TrainConfig:
    """Training settings. ``lr=None`` takes the optimiser's default for the network (``optim.default_lr``);
    the learning rate decays to 10% of it over the run along a cosine.

    ``preview_every``: every that many steps (and at the last step) a :class:`Progress` carries the
    probabilities of image ``preview_index``; 0 = only on request.
    ``balance``: ``False`` (the default): the mean over the painted pixels, a class painted in
    fewer strokes than the others weighted up toward as many strokes per class, at most to equal
    pixel shares (:mod:`.strokes`: one class painted in 4 times as many strokes hid or flooded the
    other; with every class weighed the same, a few strokes on a small defect made defects of half a
    tile; benchmarks/loop.py); ``True``: the papers' masked class-balanced loss, which weighs the
    painted classes equally within each step.
    ``crop``: when the painted pixels spread over more than ``crop`` x ``crop`` pixels, each step
    trains on a random box of that size around a painted pixel (much faster steps on large images;
    ``None`` = always the whole box of painted pixels). The default, 512, puts every stroke of an
    image up to 512² in every step: from a few strokes that learned more per second than 256² boxes
    at 4x the steps (benchmarks/loop.py).
    ``augment``: every step's image and labels are rotated or flipped at random (one of 8).
    ``seconds``: train for about this long after the first step (which may include Numba's
    compilation) instead: ``steps`` is then only a cap, and after every
    step the planned step count (which the learning-rate schedule reads, and :class:`Progress`
    reports) is re-estimated from the recent step times and the time left, so the schedule ends
    when the time does, even if the machine's load changes (``None`` = a fixed number of steps).
    ``context``: a spec or preset for a second stage (auto-context, see
    :class:`~napari_mpf.engine.network.model.Model`): the model trains for ``context_share`` of the steps
    (or of the seconds), then a new model of that spec, with the same activation, filters and
    heads, learns from the image and the first model's probabilities for the rest; :meth:`Trainer.run`
    returns that two-stage model (``None`` = one stage).
    ``calibrate``: at the end of a run (or a stop) the class scores are corrected by the class
    priors the network sees on the training images, and previews by those of the preview image
    (:mod:`~napari_mpf.engine.training.calibration`; not with an image-level head). A network that
    continues on the images it was calibrated on keeps its correction (runs and previews alike):
    estimated again after corrections of one kind, it ran away (membranes vanished in the loop
    benchmark).
    A network that has trained before continues at ``CONTINUE_LR`` times the default learning rate,
    and with ``anchor > 0`` its predictions on the unpainted pixels are kept near those it started the
    run with (that weight times their mean KL divergence added to the loss; in-memory images only):
    a round of corrections of one kind no longer swings the prediction elsewhere (benchmarks/loop.py).
    A run that paints a class for the first time has no anchor and estimates the correction again.
    """

    steps: int = 50
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9
    augment: bool = True
    balance: bool = False
    seed: int = 0
    preview_every: int = 0
    preview_index: int = 0
    crop: int | None = 512
    seconds: float | None = None
    context: str | None = None
    context_share: float = 0.5
    calibrate: bool = True
    anchor: float = 1.0

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if int(self.steps) < 1:
            raise InputError(f"steps must be at least 1, got {self.steps}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"the learning rate must be a positive number, got {self.lr}")
        if self.crop is not None and int(self.crop) < 8:
            raise InputError(f"crop must be at least 8 pixels (or None), got {self.crop}")
        if self.seconds is not None and not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise InputError(f"seconds must be a positive number of seconds (or None), got {self.seconds}")
        if self.balance not in (True, False):
            raise InputError(f"balance must be True or False, got {self.balance!r}")
        if not (self.anchor >= 0 and math.isfinite(self.anchor)):
            raise InputError(f"anchor must be a number >= 0, got {self.anchor}")
        if not 0 < self.context_share < 1:
            raise InputError(f"context_share must be between 0 and 1, got {self.context_share}")


@dataclass
class Progress:
    """One training step done: ``step`` of ``n_steps`` (1-based), the loss of the batch before the
    update, seconds since the start, the learning rate used, which image was used, and (when due or
    requested) the preview probabilities ``(K, H, W)``."""

    step: int
    n_steps: int
    loss: float
    elapsed: float
    lr: float
    image_index: int
    probabilities: np.ndarray | None = None


class Trainer:
    """Trains ``model`` in place on (image, labels) pairs; :meth:`run` is the generator.

    ``images`` may also be a streaming data set (``labels=None``), such as
    :class:`~napari_mpf.engine.training.dataset.PairDataset`: anything with ``len()``, ``check(in_channels,
    n_classes)``, ``usable`` (indices of painted pairs) and ``pair(i) -> (image, labels)``; then one
    pair is loaded per step and the data set never has to fit in memory.
    """

    def __init__(self, model: Model, images, labels=None, config: TrainConfig | None = None, image_labels=None):
        self.config = config or TrainConfig()
        self.config.check()
        self.model = model
        if labels is None and hasattr(images, "pair"):
            self.dataset = images
            self.dataset.check(model.in_channels, model.n_classes)
            self.images = self.labels = None
            n = len(images)
        else:
            self.dataset = None
            self.images, self.labels = check_training_pairs(images, labels, model.in_channels, model.n_classes)
            n = len(self.images)
        if not 0 <= self.config.preview_index < n:
            raise InputError(f"preview_index {self.config.preview_index} is not one of the {n} images")
        if self.config.context is not None:  # a second stage that cannot be built fails now, not halfway
            second = parse_spec(self.config.context, model.n_classes)
            check_network_size(second, (model.in_channels + model.n_classes - 1) * n_outputs(model.filters))
            last = second.layers[-1]
            if has_heads(model) and (last.kind == "pool" or tuple(last.size) != (1, 1)):
                raise InputError("the second stage needs a last layer of 1x1 (fully connected) to take the heads")
        self.image_targets = self._image_targets(image_labels, n)
        self._segments: dict[int, np.ndarray] = {}
        self._preview_requested = False
        self._anchors: dict[int, np.ndarray] | None = None
        self._class_weights: np.ndarray | None = None  # of the run under way (strokes.class_weights)
        self._prior = PriorCorrection()  # of the run under way
        self.last_loss = float("nan")

    def request_preview(self) -> None:
        """Ask for probabilities in the next :class:`Progress` (safe to call from another thread)."""
        self._preview_requested = True

    def preview(self) -> np.ndarray:
        """Probabilities ``(K, H, W)`` of the preview image with the current weights (with
        ``calibrate``, corrected by the class priors of that image, see :mod:`.calibration`)."""
        if self.dataset is not None:
            probs = predict_proba(self.model, self.dataset.pair(self.config.preview_index)[0])
        else:
            probs = predict_proba(self.model, self.images[self.config.preview_index])
        if self._calibrates(self.model):
            probs = self._prior.apply(probs)
        return probs

    def _stroke_weights(self, model: Model) -> np.ndarray:
        """The classes' weights in the loss, from the strokes of all training images (:mod:`.strokes`),
        kept in the provenance with the prior correction: a run that keeps it keeps them too (strokes
        added as corrections, all of one class, would otherwise weigh that class down)."""
        n_classes, kept = model.n_classes, model.provenance.get("class_weights")
        if self._prior.shift is None or kept is None or len(kept) != n_classes:
            model.provenance["class_weights"] = [float(w) for w in self._counted_weights(n_classes)]
        return np.asarray(model.provenance["class_weights"], np.float64)

    def _painted_classes(self) -> list[int]:
        """The label values painted in the training images. A run that paints a class for the first
        time starts afresh from the network's weights: no anchor (the predictions it started from know
        nothing of that class) and the prior correction and class weights estimated again (kept, they
        gave the new class the weight 0 and pushed its scores down as never predicted)."""
        if self.dataset is not None:
            return list(self.dataset.scan().classes)
        return sorted({int(v) for lab in self.labels for v in np.unique(lab) if v > 0})

    def _counted_weights(self, n_classes: int) -> np.ndarray:
        if self.dataset is not None:
            info = self.dataset.scan()  # checked: no class above n_classes
            pad = (0, n_classes - info.class_pixels.size)
            return class_weights(np.pad(info.class_pixels, pad), np.pad(info.class_strokes, pad))
        return weights_for_labels(self.labels, n_classes)

    def _calibrates(self, model: Model) -> bool:
        """Calibration is on and possible (an image-level head reads the uncorrected class scores)."""
        return bool(self.config.calibrate) and model.image_head is None

    def _calibration_images(self):
        """Up to 8 of the training images, evenly spread (loaded one at a time)."""
        n = len(self.dataset) if self.dataset is not None else len(self.images)
        for i in np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(int)):
            yield self.dataset.pair(int(i))[0] if self.dataset is not None else self.images[int(i)]

    def _calibrate(self, model: Model) -> None:
        """Correct ``model``'s class scores by the kept correction or else by the class priors of (up
        to 8 of) the training images."""
        if self._calibrates(model):
            self._prior.put_back(model, self._calibration_images)

    def run(self) -> Generator[Progress, None, Model]:
        cfg = self.config
        start = time.perf_counter()
        if cfg.context is None:
            return (yield from self._run_stage(int(cfg.steps), cfg.seconds, 0, lambda planned: planned, start))
        share = float(cfg.context_share)
        if cfg.seconds is None:  # fixed steps: split them
            n1 = min(max(1, round(cfg.steps * share)), int(cfg.steps) - 1) if cfg.steps > 1 else 1
            n2 = max(1, int(cfg.steps) - n1)
            yield from self._run_stage(n1, None, 0, lambda planned: n1 + n2, start)
            seconds2 = None
        else:  # a time budget: the first stage's share of it, then what is left
            started = None
            for progress in self._run_stage(int(cfg.steps), cfg.seconds * share, 0,
                                            lambda planned: round(planned / share), start):
                started = started or time.perf_counter()  # the budget counts from the end of step 1
                n1 = progress.step
                yield progress
            n2 = max(1, int(cfg.steps) - n1)
        self.model = self._next_stage(self.model)
        if cfg.seconds is not None:
            seconds2 = max(cfg.seconds - (time.perf_counter() - started), 1e-3)
        return (yield from self._run_stage(n2, seconds2, n1, lambda planned: n1 + planned, start, stage=1))

    def _next_stage(self, first: Model) -> Model:
        """A new model of ``config.context`` whose input is the image and ``first``'s probabilities."""
        seed = int(first.provenance.get("seed", self.config.seed)) + 1
        model = Model.create(self.config.context, first.in_channels, first.n_classes, first.activation, seed,
                             first.class_names, first.dtype, first.filters, context=first)
        c = first.in_channels
        model.norm_mean[:c], model.norm_std[:c] = first.norm_mean[:c], first.norm_std[:c]
        images = self.images if self.dataset is None else (self.dataset.pair(i)[0] for i in range(len(self.dataset)))
        model.fit_filter_statistics(staged_input(model, image) for image in images)
        if first.superpixels is not None:
            add_superpixel_branch(model, **first.superpixels)
        if first.image_head is not None:
            add_image_head(model, first.image_head["loss_weight"])
        return model

    def _run_stage(self, steps: int, seconds: float | None, step0: int, total, start: float, stage: int = 0):
        """Train ``self.model`` for ``steps`` steps (or ``seconds``); ``Progress.step`` counts on from
        ``step0``, ``Progress.n_steps`` is ``total(planned steps of this stage)`` and
        ``Progress.elapsed`` counts from ``start``."""
        cfg = self.config
        model = self.model
        rng = np.random.default_rng(cfg.seed if stage == 0 else [cfg.seed, stage])
        if self.dataset is None:
            xs = [normalise(model, img) for img in self.images]
            usable = [i for i, lab in enumerate(self.labels) if lab.any() or self._has_target(i)]
        else:  # stream: one pair loaded (and normalised) per step
            usable = list(self.dataset.usable)
        if not usable:
            raise InputError("nothing to learn from: no image has painted pixels or an image-level label")
        first_stage = None if self.dataset is None or model.context is None else _FirstStageCache(model.context)
        n_pools = sum(layer.kind == "pool" for layer in model.spec.layers)
        base_lr = cfg.lr if cfg.lr is not None else default_lr(cfg.optimizer, n_pools)
        if cfg.lr is None and int(model.provenance.get("steps", 0)) > 0:
            base_lr *= CONTINUE_LR  # a trained network continues: fine-tune, don't start over
        # train the network itself; the prior correction goes back on at the end
        painted = self._painted_classes()
        before = model.provenance.get("painted_classes")  # None: a new network, or a file that does not say
        same_classes = before is None or list(before) == painted
        self._prior.take_out(model, self._calibration_images, keep=self._calibrates(model) and same_classes)
        if cfg.balance:  # the papers' loss weighs the classes itself
            self._class_weights = None
            model.provenance.pop("class_weights", None)
        else:
            self._class_weights = self._stroke_weights(model)
        self._anchors = None
        if cfg.anchor > 0 and int(model.provenance.get("steps", 0)) > 0 and self.dataset is None and same_classes:
            self._anchors = {i: predict_proba(model, self.images[i]) for i in usable}  # the images trained on
        # weights become views into one flat vector that the optimiser updates in place
        theta, _ = _flatten(model)
        opt = make_optimizer(cfg.optimizer, theta.size, cfg.momentum)
        good = theta.copy()
        workspace = Workspace()  # activation buffers reused by every step of this run
        provenance = model.provenance
        provenance.setdefault("steps", 0)
        provenance.update(
            optimizer=cfg.optimizer, lr=base_lr, augment=cfg.augment, balance=cfg.balance, seed=cfg.seed,
            crop=cfg.crop, seconds=seconds, anchor=cfg.anchor, painted_classes=painted,
        )
        planner = StepPlanner(int(steps), seconds)
        try:
            yield from self._steps(model, planner, step0, total, start, rng, xs if self.dataset is None else None,
                                   usable, first_stage, opt, theta, good, workspace, base_lr)
        except GeneratorExit:  # stopped between two steps: the weights kept are corrected too
            self._calibrate(model)
            raise
        self._calibrate(model)
        provenance["final_loss"] = self.last_loss
        return model

    def _steps(self, model, planner, step0, total, start, rng, xs, usable, first_stage, opt, theta, good,
               workspace, base_lr):
        """The steps of :meth:`_run_stage` (a generator of :class:`Progress`)."""
        cfg, provenance = self.config, model.provenance
        order: list[int] = []
        step = 0
        while step < planner.planned:
            step += 1
            if not order:
                order = list(rng.permutation(usable))
            index = int(order.pop())
            if self.dataset is None:
                x, lab = xs[index], self.labels[index]
            elif first_stage is not None:  # a second stage: the first's probabilities come from the cache
                image, lab = self.dataset.pair(index)
                x = normalise(model, first_stage.stage_input(model, index, image), staged=True)
            else:
                image, lab = self.dataset.pair(index)
                x = normalise(model, image)
            segments = self._superpixels(index, x)
            anchor = None if self._anchors is None else self._anchors[index]
            if cfg.augment:
                k = int(rng.integers(8))
                x, lab = dihedral(x, k), dihedral(lab, k)
                anchor = None if anchor is None else dihedral(anchor, k)
                if segments is not None:
                    segments = dihedral(segments, k)
            lab = np.ascontiguousarray(lab)
            if has_heads(model):  # heads pool over the image: crops of the image, not of the strokes
                box = crop_box(model, lab, cfg.crop, rng, whole=True)
            else:
                box = crop_box(model, lab, int(cfg.crop), rng) if cfg.crop else None
            target = None if self.image_targets is None else self.image_targets[index]
            batch = make_batch(model, np.ascontiguousarray(x), lab, box,
                               None if segments is None else np.ascontiguousarray(segments), target,
                               anchor, cfg.anchor)
            batch.class_weights = self._class_weights
            lr = base_lr * cosine_schedule(step, planner.planned)
            loss = self._step(opt, theta, batch, lr, workspace)
            if math.isfinite(loss):
                good[:] = theta
            else:  # diverged: back to the last good weights, smaller steps
                theta[:] = good
                base_lr *= 0.5
            provenance["steps"] = int(provenance["steps"]) + 1
            self.last_loss = loss
            probs = None
            planner.update(step)
            due = cfg.preview_every and (step % cfg.preview_every == 0 or step >= planner.planned)
            if due or self._preview_requested:
                self._preview_requested = False
                probs = self.preview()
            yield Progress(step0 + step, total(planner.planned), loss, time.perf_counter() - start, lr, index, probs)

    def _image_targets(self, image_labels, n: int) -> list[np.ndarray] | None:
        """Per image, ``K - 1`` image-level targets (1 present, 0 absent, NaN unknown) for the
        image-level head. Given ``image_labels`` (per image: a bool for two classes, a sequence of
        ``K - 1`` bools, or None = unknown) or else read from the painted labels: a class painted in
        an image is present; an image with strokes but none of a class counts as without it."""
        if self.model.image_head is None:
            if image_labels is not None:
                raise InputError("image-level labels were given but the model has no image-level head")
            return None
        j = self.model.n_classes - 1
        targets = []
        if image_labels is not None:
            if len(image_labels) != n:
                raise InputError(f"{len(image_labels)} image-level label(s) for {n} images")
            for i, value in enumerate(image_labels):
                t = np.full(j, np.nan) if value is None else np.atleast_1d(np.asarray(value, np.float64))
                if t.shape != (j,) or not np.all(np.isnan(t) | (t == 0) | (t == 1)):
                    raise InputError(f"image-level label of image {i} must be {j} value(s) of 0/1 (or None), got {value!r}")
                targets.append(t)
            return targets
        if self.labels is None:  # a streamed data set: read per pair
            return [self._targets_from_labels(self.dataset.pair(i)[1], j) for i in range(n)]
        return [self._targets_from_labels(lab, j) for lab in self.labels]

    @staticmethod
    def _targets_from_labels(lab: np.ndarray, j: int) -> np.ndarray:
        counts = np.bincount(np.asarray(lab).ravel(), minlength=j + 2)
        if counts[1:].sum() == 0:
            return np.full(j, np.nan)
        return (counts[2 : j + 2] > 0).astype(np.float64)

    def _has_target(self, index: int) -> bool:
        return self.image_targets is not None and bool(np.isfinite(self.image_targets[index]).any())

    def _superpixels(self, index: int, x: np.ndarray) -> np.ndarray | None:
        """SLIC superpixels of a normalised training image (cached per image)."""
        sp = self.model.superpixels
        if sp is None:
            return None
        if index not in self._segments or self.dataset is not None:
            self._segments[index] = slic_superpixels(x[: self.model.in_channels], sp["size"], sp["compactness"])
        return self._segments[index]

    def _step(self, opt, theta, batch: Batch, lr: float, workspace: Workspace) -> float:
        model, balance = self.model, bool(self.config.balance)
        model_weights_dtype = theta.dtype

        def loss_fn(vec: np.ndarray) -> float:
            saved = theta.copy()
            theta[:] = vec
            try:
                return batch_loss(model, batch, balance, need_grad=False)[0]
            finally:
                theta[:] = saved

        def loss_grad_fn(vec: np.ndarray) -> tuple[float, np.ndarray]:
            theta[:] = vec.astype(model_weights_dtype)
            loss, gw, gb = batch_loss(model, batch, balance, workspace=workspace)
            return loss, _flat_grad(gw, gb)

        loss, gw, gb = batch_loss(model, batch, balance, workspace=workspace)
        grad = _flat_grad(gw, gb)
        if not (math.isfinite(loss) and np.isfinite(grad).all()):
            return float("nan")
        if not grad.any():  # nothing to learn from this batch: don't drift on the optimiser's momentum
            return loss
        opt.step(theta, loss, grad, loss_fn, loss_grad_fn, lr)
        if not np.isfinite(theta).all():
            return float("nan")
        return loss


class _FirstStageCache:
    """A first stage's probabilities for streamed images, predicted once per image and kept on
    disk, so that the second stage's steps read them instead of predicting the whole image again.
    The temporary folder goes when the cache does."""

    def __init__(self, first: Model):
        self.first = first
        self._folder = tempfile.TemporaryDirectory(prefix="napari-mpf-stage-")
        self._saved: set[int] = set()

    def stage_input(self, model: Model, index: int, image) -> np.ndarray:
        """:func:`~napari_mpf.engine.network.predict.staged_input` for the data set's image ``index``
        (the first stage's probabilities kept on disk)."""
        path = Path(self._folder.name) / f"{index}.npy"
        if index in self._saved:
            probabilities = np.load(path)
        else:
            probabilities = predict_proba(self.first, image)
            np.save(path, probabilities)
            self._saved.add(index)
        return model.stage_input(image, probabilities)


def _flatten(model: Model) -> tuple[np.ndarray, list[np.ndarray]]:
    """Copy the parameters into one vector and make the model's arrays views into it."""
    arrays = [*model.weights, *model.biases]
    theta = np.concatenate([a.ravel() for a in arrays]).astype(model.dtype)
    views, offset = [], 0
    for a in arrays:
        views.append(theta[offset : offset + a.size].reshape(a.shape))
        offset += a.size
    n = len(model.weights)
    model.weights, model.biases = views[:n], views[n:]
    return theta, views


def _flat_grad(grad_w: Sequence[np.ndarray], grad_b: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([g.ravel() for g in (*grad_w, *grad_b)]).astype(np.float64)


def train(model: Model, images, labels, config: TrainConfig | None = None,
          image_labels=None) -> Generator[Progress, None, Model]:
    """``Trainer(model, images, labels, config, image_labels).run()``: yields :class:`Progress`,
    returns the model."""
    return Trainer(model, images, labels, config, image_labels).run()


def fit(model: Model, images, labels, config: TrainConfig | None = None, callback=None,
        image_labels=None) -> Model:
    """Train to the end; ``callback(progress)`` is called after every step."""
    gen = train(model, images, labels, config, image_labels)
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(progress)

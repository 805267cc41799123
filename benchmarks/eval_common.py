"""Shared parts of the accuracy evaluation (``eval_isbi.py``, ``eval_tiles.py``).

Metrics, the seeded scribble generator, timing, and the *methods*: a method turns a variant
(a name, a kind and a dict of settings) plus training images and labels into a fitted object that
predicts, for one image, the probability of the class of interest (membrane, defect). Two kinds
exist: ``mpf`` (our networks, trained through :class:`napari_mpf.engine.Trainer` under a time
budget) and ``rf`` (the scikit-image random-forest peer). A new method (superpixel pooling, an
image-level head, ...) is one function registered with :func:`register_method`; it then runs as a
row of every table with ``--variants name:kind=<new kind>,...``.

Labels everywhere follow the engine: 0 = unpainted, 1 = negative class (cell, background),
2 = positive class (membrane, defect).
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# ----------------------------------------------------------------------------------------------
# metrics


def pixel_error(prob: np.ndarray, truth: np.ndarray, threshold: float = 0.5, mask=None) -> float:
    """Share of pixels where ``prob > threshold`` disagrees with the boolean ``truth``."""
    pred = np.asarray(prob) > threshold
    wrong = pred != np.asarray(truth, bool)
    if mask is not None:
        wrong = wrong[np.asarray(mask, bool)]
    return float(wrong.mean()) if wrong.size else float("nan")


def choose_threshold(probs, truths, masks=None, bins: int = 1000) -> float:
    """Threshold ``t`` (predict positive where ``prob > t``) with the fewest errors on these pixels.

    ``probs``/``truths``/``masks`` are arrays or lists of arrays; only pixels where ``mask`` is true
    count. Probabilities are binned into ``bins`` levels; among equally good thresholds the middle
    of the best run is taken (so a wide plateau, as scribbles give, lands in its centre).
    """
    if isinstance(probs, np.ndarray):
        probs, truths = [probs], [truths]
        masks = None if masks is None else [masks]
    pos = np.zeros(bins, np.int64)
    neg = np.zeros(bins, np.int64)
    for i, (p, t) in enumerate(zip(probs, truths, strict=True)):
        p, t = np.asarray(p, np.float64), np.asarray(t, bool)
        if masks is not None:
            m = np.asarray(masks[i], bool)
            p, t = p[m], t[m]
        idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
        pos += np.bincount(idx[t], minlength=bins)
        neg += np.bincount(idx[~t], minlength=bins)
    # threshold k/bins: positive where bin index >= k; errors = negatives above + positives below
    neg_above = np.concatenate([np.cumsum(neg[::-1])[::-1], [0]])
    pos_below = np.concatenate([[0], np.cumsum(pos)])
    errors = neg_above + pos_below  # index k = 0..bins
    best = np.flatnonzero(errors == errors.min())
    run_start = run_end = int(best[0])
    best_set = set(best.tolist())
    while run_end + 1 in best_set:
        run_end += 1
    # threshold k/bins (predict "prob > t") puts bins >= k on the positive side, up to ties at k/bins
    t = (run_start + run_end) / (2.0 * bins)
    if run_start == run_end:
        t -= 1e-9
    return float(np.clip(t, 0.0, 1.0))


def f1_per_class(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """F1 of the negative class (``pred``/``truth`` false) and of the positive class (true)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    out = []
    for p, t in ((~pred, ~truth), (pred, truth)):
        tp = np.count_nonzero(p & t)
        denom = np.count_nonzero(p) + np.count_nonzero(t)
        out.append(2.0 * tp / denom if denom else 1.0)
    return out[0], out[1]


def cell_components(cell: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean cell mask, labelled 1..n (0 = membrane)."""
    lab, _ = ndi.label(np.asarray(cell, bool))
    return lab


def adapted_rand(pred_membrane: np.ndarray, truth_membrane: np.ndarray) -> float:
    """Adapted Rand error (skimage) between the cell components of prediction and truth.

    As in ISBI 2012, the segments are the connected components of the cell (non-membrane) class.
    Truth membrane pixels are ignored (label 0); predicted membrane pixels are given to the nearest
    predicted cell component (``expand_labels``) so that they do not form one giant segment.
    """
    from skimage.metrics import adapted_rand_error
    from skimage.segmentation import expand_labels

    truth_seg = cell_components(~np.asarray(truth_membrane, bool))
    pred_seg = cell_components(~np.asarray(pred_membrane, bool))
    if pred_seg.max() > 0:
        pred_seg = expand_labels(pred_seg, distance=max(pred_seg.shape))
    else:
        pred_seg = np.ones_like(pred_seg)
    error, _, _ = adapted_rand_error(truth_seg, pred_seg, ignore_labels=(0,))
    return float(error)


def balanced_sample(truths: Sequence[np.ndarray], n_per_class: int, rng: np.random.Generator, valid=None):
    """Seeded sample of ``n_per_class`` positive and ``n_per_class`` negative pixels over images.

    Returns ``(image_index, flat_index, is_positive)`` arrays. When a class has fewer pixels than
    ``n_per_class`` all of them are taken. ``valid`` (list of masks) limits the pixels considered.
    """
    picked = []
    for positive in (True, False):
        img_idx, flat_idx = [], []
        for i, t in enumerate(truths):
            sel = np.asarray(t, bool).ravel()
            if not positive:
                sel = ~sel
            if valid is not None:
                sel = sel & np.asarray(valid[i], bool).ravel()
            f = np.flatnonzero(sel)
            img_idx.append(np.full(f.size, i, np.int64))
            flat_idx.append(f)
        img_idx = np.concatenate(img_idx) if img_idx else np.zeros(0, np.int64)
        flat_idx = np.concatenate(flat_idx) if flat_idx else np.zeros(0, np.int64)
        k = min(n_per_class, img_idx.size)
        choice = rng.choice(img_idx.size, size=k, replace=False) if k else np.zeros(0, np.int64)
        picked.append((img_idx[choice], flat_idx[choice], np.full(k, positive)))
    return tuple(np.concatenate(parts) for parts in zip(*picked, strict=True))


def sample_values(maps: Sequence[np.ndarray], img_idx: np.ndarray, flat_idx: np.ndarray) -> np.ndarray:
    """Values of per-image maps at the sampled ``(image, flat pixel)`` positions."""
    out = np.empty(img_idx.size, np.float64)
    for i in np.unique(img_idx):
        sel = img_idx == i
        out[sel] = np.asarray(maps[i]).ravel()[flat_idx[sel]]
    return out


def choose_count_threshold(counts: np.ndarray, defective: np.ndarray) -> float:
    """Pixel-count threshold ``T`` (flag an image when ``count > T``) with the fewest errors.

    Candidates are -0.5 (flag everything) and the midpoints between sorted distinct counts; ties go
    to the middle of the best run.
    """
    counts = np.asarray(counts, np.float64)
    defective = np.asarray(defective, bool)
    levels = np.unique(counts)
    cands = np.concatenate([[levels[0] - 0.5], (levels[:-1] + levels[1:]) / 2, [levels[-1] + 0.5]])
    errs = np.array([np.count_nonzero((counts > c) != defective) for c in cands])
    best = np.flatnonzero(errs == errs.min())
    return float(cands[best[len(best) // 2]])


def detection_error(counts, defective, threshold: float) -> float:
    counts, defective = np.asarray(counts, np.float64), np.asarray(defective, bool)
    return float(np.mean((counts > threshold) != defective)) if counts.size else float("nan")


def crossfit_detection_error(counts, defective, fold) -> tuple[float, list[float]]:
    """Detection error where each fold's count threshold is chosen on the other fold(s)."""
    counts, defective, fold = np.asarray(counts), np.asarray(defective, bool), np.asarray(fold)
    wrong, thresholds = 0, []
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        if not train.any():
            continue
        t = choose_count_threshold(counts[train], defective[train])
        thresholds.append(t)
        wrong += np.count_nonzero((counts[test] > t) != defective[test])
    return wrong / max(1, counts.size), thresholds


# ----------------------------------------------------------------------------------------------
# scribbles


def scribbles(truth: np.ndarray, rng: np.random.Generator, px_per_class: int = 2000, width: int = 2,
              stroke_length: int = 150, margin: int = 2, n_classes: int = 2) -> np.ndarray:
    """Seeded thin strokes that follow the interior of each class region and never cross a boundary.

    ``truth`` holds classes ``1..n_classes`` everywhere. For class ``c``: the *safe* pixels are those
    of class ``c`` at Euclidean distance ``>= margin`` from every pixel of another class; the stroke
    paths are pieces of the skeleton of the class mask (its medial axis, so they run along the middle
    of a membrane or through a cell) restricted to the safe pixels. From a random unused skeleton
    pixel, a walk follows unused 8-neighbours for up to ``stroke_length`` pixels; ``width=2`` thickens
    the path by its right/lower/diagonal neighbours that are safe too. Strokes are added until about
    ``px_per_class`` pixels of the class are painted (or the skeleton is used up). Returns labels
    (0 = unpainted, ``c`` on the strokes).
    """
    from skimage.morphology import skeletonize

    truth = np.asarray(truth)
    out = np.zeros(truth.shape, np.uint8)
    h, w = truth.shape
    for c in range(1, n_classes + 1):
        cls = truth == c
        if not cls.any():
            continue
        dist = ndi.distance_transform_edt(cls)  # distance to the nearest pixel of another class
        safe = dist >= margin
        skel = skeletonize(cls) & safe
        used = np.zeros_like(skel)
        painted = 0
        candidates = np.flatnonzero(skel)
        rng.shuffle(candidates)
        for start in candidates:
            if painted >= px_per_class:
                break
            y, x = divmod(int(start), w)
            if used[y, x]:
                continue
            path = [(y, x)]
            used[y, x] = True
            while len(path) < stroke_length:
                nbrs = [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                        if (dy or dx) and 0 <= y + dy < h and 0 <= x + dx < w
                        and skel[y + dy, x + dx] and not used[y + dy, x + dx]]
                if not nbrs:
                    break
                y, x = nbrs[int(rng.integers(len(nbrs)))]
                used[y, x] = True
                path.append((y, x))
            if len(path) < 5:  # too short to be a stroke
                continue
            for py, px in path:
                pts = [(py, px)] if width < 2 else [(py, px), (py + 1, px), (py, px + 1), (py + 1, px + 1)]
                for qy, qx in pts:
                    if qy < h and qx < w and safe[qy, qx] and out[qy, qx] == 0:
                        out[qy, qx] = c
                        painted += 1
    return out


# ----------------------------------------------------------------------------------------------
# variants and methods


@dataclass
class Variant:
    """One row of a table: ``kind`` selects the method, ``params`` its settings."""

    name: str
    kind: str = "mpf"
    params: dict = field(default_factory=dict)

    def describe(self) -> str:
        p = self.params
        if self.kind == "mpf":
            bits = [str(p.get("spec") or p.get("preset")), p.get("activation"), p.get("optimizer"),
                    f"crop {p.get('crop')}"]
            bits += [f"{k}={p[k]}" for k in ("lr", "augment", "balance", "downsample", "norm",
                                             "sp_branch", "sp_pool", "sp_compactness", "image_head", "refine", "tta", "ensemble",
                                             "filters", "context", "context_share")
                     if k in p and p[k] != MPF_DEFAULTS.get(k)]
            return "mpf " + ", ".join(str(b) for b in bits)
        defaults = RF_DEFAULTS if self.kind == "rf" else {}
        bits = [f"{k}={v}" for k, v in sorted(p.items()) if defaults.get(k, object()) != v and k != "seed"]
        return self.kind + (" " + ", ".join(bits) if bits else "")


def _coerce(value: str):
    low = value.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


#: ``mpf`` row settings of the training options cut in 1.0 (benchmarks/README.md, "Cut in 1.0")
CUT_SETTINGS = ("schedule", "by_class", "elastic", "intensity", "shading", "smoothness")


def parse_variants(texts: Sequence[str] | None, base: dict) -> list[Variant]:
    """``name[:key=value,key=value]`` per variant; ``rf`` alone is the forest peer.

    Every ``mpf`` variant starts from ``base`` (the command-line options) and overrides what it
    names. ``kind=<method>`` picks another registered method. Examples: ``mpf``, ``rf``,
    ``relu:activation=relu``, ``steel:preset=steel,crop=128``.
    """
    texts = list(texts) if texts else ["mpf", "rf"]
    out = []
    for text in texts:
        name, _, rest = text.partition(":")
        name = name.strip()
        params = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise SystemExit(f"bad variant setting {item!r} in {text!r}: expected key=value")
            params[key.strip()] = _coerce(value.strip())
        kind = params.pop("kind", "rf" if name == "rf" else "mpf")
        if kind not in METHODS:
            raise SystemExit(f"unknown method kind {kind!r}; registered: {', '.join(METHODS)}")
        if kind == "rf":
            merged = dict(RF_DEFAULTS)
        elif kind == "mpf":
            merged = dict(base)
        else:  # another method: the common time budget and seed, its own defaults for the rest
            merged = {k: base[k] for k in ("budget", "seed") if k in base}
        cut = [k for k in params if k in CUT_SETTINGS] + (["balance=global"] if params.get("balance") == "global" else [])
        if kind == "mpf" and cut:
            raise SystemExit(f"{', '.join(cut)} in {text!r}: cut in 1.0 (see benchmarks/README.md, Cut in 1.0)")
        merged.update(params)
        out.append(Variant(name, kind, merged))
    return out


@dataclass
class Fitted:
    """A trained method: ``predict(image) -> (H, W)`` probability of the positive class; methods with
    an image-level output also give ``predict_image(image) -> float`` (probability the image holds
    the positive class)."""

    predict: Callable[[np.ndarray], np.ndarray]
    train_seconds: float
    info: dict = field(default_factory=dict)
    predict_image: Callable[[np.ndarray], float] | None = None


METHODS: dict[str, Callable[..., Fitted]] = {}


def register_method(kind: str):
    def deco(fn):
        METHODS[kind] = fn
        return fn
    return deco


MPF_DEFAULTS = dict(preset="fast", spec=None, activation="tanh", optimizer="adam", lr=None,
                    augment=True, balance=True, crop=256, steps=None,
                    budget=180.0, seed=0, sp_branch=None, sp_pool="max",
                    sp_compactness=0.3, image_head=None, refine=None, tta=False)
#: Settings that change only the prediction: rows differing in nothing else share one training.
PREDICT_ONLY = ("refine", "tta")
_TRAINED: dict = {}


def train_once(p: dict, inputs: tuple, train: Callable[[], tuple], log=print) -> tuple:
    """``train()``'s result, computed once per method settings ``p`` (less :data:`PREDICT_ONLY`)
    and training ``inputs``: rows that differ only in how they predict share one training."""
    key = (repr(sorted((k, v) for k, v in p.items() if k not in PREDICT_ONLY)), *map(id, inputs))
    if key in _TRAINED:
        log("    same training as an earlier row (only prediction settings differ): reused")
    else:
        _TRAINED[key] = (train(), inputs)  # the inputs stay alive, so their ids stay unique
    return _TRAINED[key][0]
RF_DEFAULTS = dict(n_estimators=50, max_depth=10, max_pixels=200_000, class_weight=None, seed=0,
                   sigma_min=1.0, sigma_max=16.0)


def mpf_base_from_args(args) -> dict:
    """The ``mpf`` settings from the common command-line options."""
    return dict(
        preset=args.preset, spec=args.spec, activation=args.activation, optimizer=args.optimizer,
        lr=args.lr, augment=not args.no_augment, balance=not args.no_balance,
        crop=None if args.crop == 0 else args.crop, steps=args.steps, budget=args.budget_seconds,
        seed=args.seed,
    )


@register_method("mpf")
def fit_mpf(images: list[np.ndarray], labels: list[np.ndarray], p: dict, log=print, image_labels=None) -> Fitted:
    """Our network through the engine's Trainer, stopped when the time budget is spent.

    Seed methods as settings: ``sp_branch=SIZE`` (superpixel branch, V3; ``sp_pool``,
    ``sp_compactness``), ``image_head=WEIGHT`` (image-level head, trained on ``image_labels`` when
    given, else on labels read from the strokes), ``refine=SIZE`` (superpixel post-processing, V1),
    ``filters=multiscale`` (input filter bank, ``napari_mpf.engine.network.features``).
    ``tta=true``: test-time augmentation (mean over the 8 rotations and flips). ``ensemble=N``: N networks with seeds ``seed .. seed + N - 1``
    (each trained with the row's steps or budget), probabilities averaged. ``context=SPEC``:
    auto-context (``TrainConfig.context``), a second stage of that spec (same filters and heads)
    reads the image and the first stage's probabilities; the first stage gets ``context_share``
    (default 0.5) of the budget (or of the steps), the second the rest. Rows that differ only
    in ``refine``/``tta`` train once.

    Without ``steps`` the run is fitted to the budget (``TrainConfig.seconds``: after every step
    the engine re-estimates the planned step count, which its cosine schedule reads, from the
    recent step times and the time left), so the learning rate reaches the end of its schedule
    when the budget runs out, even when the machine's load changes during the run.
    """
    from napari_mpf.engine.network.predict import predict as engine_predict
    from napari_mpf.engine.network.predict import predict_proba, refine_with_superpixels

    n_members = int(p.get("ensemble") or 1)
    if n_members > 1:  # members differ only in their seed; their probabilities are averaged
        seed = int(p.get("seed", 0))
        members = [fit_mpf(images, labels, {**p, "ensemble": 1, "seed": seed + k}, log, image_labels)
                   for k in range(n_members)]
        info = dict(members[0].info, members=n_members,
                    steps_done=sum(m.info["steps_done"] for m in members),
                    steps_planned=sum(m.info["steps_planned"] for m in members))
        return Fitted(lambda image: np.mean([m.predict(image) for m in members], axis=0),
                      sum(m.train_seconds for m in members), info)
    model, seconds, info = train_once(p, (images, labels, image_labels),
                                      lambda: _train_mpf(images, labels, p, log, image_labels), log)
    compactness = float(p.get("sp_compactness") or 0.3)
    refine, tta = p.get("refine"), bool(p.get("tta"))
    last: dict = {}

    def run(image):
        if last.get("image") is not image:
            last["image"], last["pred"] = image, engine_predict(model, image)
        return last["pred"]

    def predict(image):
        probs = predict_proba(model, image, augment=True) if tta else run(image).probabilities
        if refine:
            probs = refine_with_superpixels(model, image, probs, float(refine), compactness)
        return probs[1]

    def predict_image(image):
        return float(run(image).image_probabilities[0])

    return Fitted(predict, seconds, dict(info), predict_image if model.image_head is not None else None)


def _train_mpf(images, labels, p: dict, log, image_labels):
    from napari_mpf.engine import Model, TrainConfig, Trainer
    from napari_mpf.engine.network.heads import add_image_head, add_superpixel_branch

    t0 = time.perf_counter()
    spec = p.get("spec") or p.get("preset") or "fast"
    model = Model.for_data(images, labels, spec=spec, activation=p.get("activation", "tanh"), seed=int(p.get("seed", 0)),
                           filters=p.get("filters"))
    compactness = float(p.get("sp_compactness") or 0.3)
    if p.get("sp_branch"):
        add_superpixel_branch(model, float(p["sp_branch"]), compactness, str(p.get("sp_pool") or "max"))
    if p.get("image_head") not in (None, False):
        add_image_head(model, 1.0 if p["image_head"] is True else float(p["image_head"]))
    budget = float(p.get("budget") or 0) or None
    cfg = dict(optimizer=p.get("optimizer", "adam"), lr=p.get("lr"), augment=bool(p.get("augment", True)),
               balance=bool(p.get("balance", True)), crop=p.get("crop", 256), seed=int(p.get("seed", 0)),
               context=p.get("context"), context_share=float(p.get("context_share") or 0.5))
    steps = p.get("steps")
    adaptive = steps is None and budget is not None
    if steps is None:
        steps = 1_000_000 if adaptive else 200
    if adaptive:  # the engine fits the schedule to the time left of the budget
        cfg["seconds"] = max(budget - (time.perf_counter() - t0), 1e-3)
    trainer = Trainer(model, images, labels, TrainConfig(steps=int(steps), **cfg),
                      image_labels=image_labels if model.image_head is not None else None)
    losses, done, planned = [], 0, int(steps)
    for prog in trainer.run():
        losses.append(prog.loss)
        now = time.perf_counter()
        done, planned = prog.step, prog.n_steps
        if prog.step % 50 == 0:
            log(f"    step {prog.step}/{prog.n_steps} loss {np.nanmean(losses[-50:]):.4f} {now - t0:.0f}s")
        if budget is not None and not adaptive and now - t0 > budget:  # a fixed-steps row over its budget
            break
    seconds = time.perf_counter() - t0
    model = trainer.model  # with auto-context: the second stage (which holds the first)
    info = dict(steps_planned=int(planned), steps_done=done, final_loss=float(np.nanmean(losses[-50:])),
                model=model.describe())
    return model, seconds, info


def rf_features(image: np.ndarray, p: dict) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    image = np.asarray(image, np.float32)
    return multiscale_basic_features(image, intensity=True, edges=True, texture=True,
                                     sigma_min=float(p.get("sigma_min", 1.0)), sigma_max=float(p.get("sigma_max", 16.0)),
                                     channel_axis=0 if image.ndim == 3 else None)


@register_method("rf")
def fit_rf(images: list[np.ndarray], labels: list[np.ndarray], p: dict, log=print, image_labels=None) -> Fitted:
    """The scikit-image peer: ``multiscale_basic_features`` + a random forest (50 trees, depth 10).

    At most ``max_pixels`` painted pixels (a seeded random subset, all of them when fewer) are fed to
    the forest: dense labels hold millions of pixels, far more than a forest fits in minutes.
    """
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    rng = np.random.default_rng(int(p.get("seed", 0)))
    feats, ys = [], []
    for img, lab in zip(images, labels, strict=True):
        f = rf_features(img, p)
        sel = lab > 0
        feats.append(f[sel])
        ys.append(lab[sel])
    x, y = np.concatenate(feats), np.concatenate(ys)
    cap = int(p.get("max_pixels") or 0)
    if cap and y.size > cap:
        keep = rng.choice(y.size, size=cap, replace=False)
        x, y = x[keep], y[keep]
    clf = RandomForestClassifier(n_estimators=int(p.get("n_estimators", 50)), max_depth=p.get("max_depth", 10),
                                 n_jobs=2, random_state=int(p.get("seed", 0)), class_weight=p.get("class_weight"))
    clf.fit(x, y)
    seconds = time.perf_counter() - t0
    positive = list(clf.classes_).index(2) if 2 in clf.classes_ else None

    def predict(image):
        f = rf_features(image, p)
        if positive is None:
            return np.zeros(f.shape[:2], np.float32)
        return clf.predict_proba(f.reshape(-1, f.shape[-1]))[:, positive].reshape(f.shape[:2]).astype(np.float32)

    return Fitted(predict, seconds, dict(train_pixels=int(y.size)))


def standardise(image: np.ndarray) -> np.ndarray:
    """An image scaled to zero mean and unit standard deviation (its own statistics)."""
    x = np.asarray(image, np.float32)
    return (x - x.mean()) / max(float(x.std()), 1e-6)


def run_method(variant: Variant, images: list[np.ndarray], labels: list[np.ndarray], log=print,
               image_labels=None) -> Fitted:
    """Fit ``variant`` (``image_labels``: per image, whether it holds the positive class; methods
    without an image-level output ignore them); with ``norm=image`` every image (training and
    prediction) is first standardised on its own statistics (brightness varies from slice to slice)."""
    fit = METHODS[variant.kind]
    if variant.params.get("norm") != "image":
        return fit(images, labels, variant.params, log=log, image_labels=image_labels)
    fitted = fit([standardise(x) for x in images], labels, variant.params, log=log, image_labels=image_labels)
    inner, inner_image = fitted.predict, fitted.predict_image
    return Fitted(lambda image: inner(standardise(image)), fitted.train_seconds, fitted.info,
                  None if inner_image is None else (lambda image: inner_image(standardise(image))))


def timed_predict(fitted: Fitted, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Probabilities for each image and the mean seconds per image."""
    out, t0 = [], time.perf_counter()
    for img in images:
        out.append(np.asarray(fitted.predict(img), np.float32))
    return out, (time.perf_counter() - t0) / max(1, len(images))


# ----------------------------------------------------------------------------------------------
# command line and report


def add_common_args(ap) -> None:
    ap.add_argument("--budget-seconds", type=float, default=180.0, help="training time cap per network (s); 0 = none")
    ap.add_argument("--preset", default="fast", help="network preset: fast, steel, n3 (default fast)")
    ap.add_argument("--spec", default=None, help="own network spec (overrides --preset)")
    ap.add_argument("--optimizer", default="adam", choices=["adam", "sgd", "armijo", "lbfgs"])
    ap.add_argument("--activation", default="tanh", choices=["tanh", "relu"])
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--crop", type=int, default=256, help="training crop side (0 = whole labelled box)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: fill the budget)")
    ap.add_argument("--no-augment", action="store_true", help="no rotations/flips")
    ap.add_argument("--no-balance", action="store_true", help="plain instead of class-balanced loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=None, metavar="NAME[:k=v,...]",
                    help="rows to run (default: 'mpf rf'); e.g. relu:activation=relu steel:preset=steel")
    ap.add_argument("--quick", action="store_true", help="tiny subset, few steps: a smoke test")
    ap.add_argument("--out", type=Path, default=None, help="append the results (markdown) to this file")


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(v) for v in r) + " |")
    return "\n".join(lines)


def command_line() -> str:
    argv = [Path(sys.argv[0]).as_posix()] + sys.argv[1:]
    try:
        argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
    except ValueError:
        pass
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in argv)


def report_header(title: str) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"## {title}\n\n- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
            f"{os.cpu_count()} cores, load average at the end {load:.1f}\n- command: `{command_line()}`\n")


def write_report(text: str, out: Path | None) -> None:
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(text.rstrip() + "\n\n")

"""The annotate -> train -> correct loop as a person runs it, ours against the forest on the same strokes.

A simulated user (``simulated_user.py``) paints round 1: ``--first-strokes`` short strokes per
class (3 px wide, 12-24 px long: ``--stroke-width``, ``--stroke-length``) in the middle of each
class's regions and along thin structures; ``--first-strokes 20 5`` paints the background more
(other painters than ours: what the figures become with strokes we did not tune on).
Each later round adds ``--more-strokes`` strokes where the preview is most wrong (the largest wrong
region first, painted with the true class there) or, with ``--place uncertain``, where it is least
certain. The strokes correct one method's preview (``--placed-by``, default the first row, ours: the
issue's protocol) and every method learns from those same strokes; ``--placed-by rf`` lets the
forest's preview place them, ``--placed-by each`` gives every method its own session correcting its
own preview (the strokes then differ from round 2 on). After every round our network trains
``--first-steps`` in round 1 (what Train does) and then **continues from its current weights** for
``--round-steps`` per round (what live retraining does after the user paints; steps make runs on a
busy machine comparable, ``--round-seconds`` gives a time per round instead), the forest (scikit-image
``multiscale_basic_features`` + 50 trees, the ilastik / convpaint approach) refits.

Scores after every round: pixel error of the segmentation (arg-max) on the unpainted pixels of the
painted image and on other images of the set, the trivial answer's error (every pixel the most
common class), F1 per class, predicted vs true share of the foreground class, the seconds of the
round and, in round 1, the seconds from Train to the first preview; the records also keep the share
of painted pixels the preview still gets wrong (``unlearned``, the widget's hint). On the defect
tiles also the "defect present" flag (an object of >= 10 px at p >= 0.5, the widget's defaults) on
defect-free and defective other tiles.

Tasks: ``em`` paints one ISBI 2012 slice and scores two others; ``tiles`` paints one defective
magnetic tile and scores three defective and three defect-free tiles of other acquisition groups.
``--runs`` tasks per data set, each with its own images and strokes (``--seed`` picks other ones;
several seeds give the tasks of each, reported together: ``--seed 0 1 2 3``, 20 tasks per data set).
``--report-from`` writes the report and plot of records saved before (``--json``), for example of
seeds run side by side, without running anything.

    .venv/bin/python benchmarks/loop.py                        # both data sets, ~10 min
    .venv/bin/python benchmarks/loop.py --place uncertain      # strokes where the model is unsure
    .venv/bin/python benchmarks/loop.py --placed-by ours rf    # strokes from our preview, then the forest's
    .venv/bin/python benchmarks/loop.py --methods ours rf 'wide:preset=wide,filters=none'
    .venv/bin/python benchmarks/loop.py --first-strokes 20 5 --rounds 1   # a painter who favours background
    .venv/bin/python benchmarks/loop.py --report-from s1.json s2.json --json all.json  # runs merged

Row keys beyond the recipe's (``preset``, ``lr``, ``crop``…): ``live=N`` steps per later round,
``rsteps=X`` times the steps, ``calibrate=false``, ``tta=true`` (predictions averaged over the 8
rotations and flips), ``fresh=true`` (a new network every round, trained for the first round's
steps), ``ensemble=N`` (predictions averaged over the networks of the last N rounds), ``anchor=X`` (the
weight of the anchor of continued runs, ``TrainConfig.anchor``), ``superpixels=N`` (a new network gets a
superpixel branch of superpixels of about N px).

Writes a markdown report (``--out``, default ``benchmarks/LOOP.md``), the per-round records
(``--json``) and a plot of error vs round and vs seconds (``--plot``; needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_common as ec  # noqa: E402
import loop_report as lr  # noqa: E402
import numpy as np  # noqa: E402
import simulated_user as su  # noqa: E402

from napari_mpf import recipe  # noqa: E402
from napari_mpf.engine import Model, TrainConfig, Trainer, predict_proba  # noqa: E402
from napari_mpf.engine.network.heads import add_superpixel_branch  # noqa: E402
from napari_mpf.engine.post.objects import count_objects  # noqa: E402
from napari_mpf.engine.post.uncertainty import unlearned_share  # noqa: E402

HERE = Path(__file__).resolve().parent
#: our method's settings, the engine's defaults; every key can be overridden per row (``name:key=value,...``)
_DEFAULTS = recipe.defaults()
#: row key of each recipe choice: our rows start from the recipe's defaults (what a user gets)
RECIPE_KEYS = {"network": "preset", "filters": "filters", "activation": "activation", "optimizer": "optimizer",
               "lr": "lr", "step_size": "crop", "balance": "balance", "seed": "seed"}
OURS = dict({key: _DEFAULTS[name] for name, key in RECIPE_KEYS.items()}, spec=None,
            calibrate=TrainConfig.calibrate, rsteps=None, live=None, fresh=False, ensemble=1, tta=False,
            anchor=TrainConfig.anchor, superpixels=None)


@dataclass
class Task:
    """One simulated session: the painted image and others scored with the same model."""

    dataset: str
    name: str
    image: np.ndarray
    truth: np.ndarray  # classes 1..K on every pixel
    others: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    others_defective: list[bool] = field(default_factory=list)
    class_names: tuple[str, ...] = ("background", "foreground")
    seed: int = 0  # the --seed that chose the task; it seeds its strokes and our network


def em_tasks(path: Path, runs: int, seed: int) -> list[Task]:
    data = np.load(path)
    images, labels = data["images"], data["labels"]
    rng = np.random.default_rng([seed, 1])
    painted = rng.permutation(len(images))[:runs]  # the first tasks do not depend on --runs
    tasks = []
    for i in painted:
        rest = [j for j in range(len(images)) if abs(j - int(i)) >= 3]
        others = rng.choice(rest, size=2, replace=False)
        tasks.append(Task("em", f"slice {i}", images[i], labels[i].astype(np.uint8) + 1,
                          [(images[j], labels[j].astype(np.uint8) + 1) for j in others],
                          [True, True], ("cell", "membrane"), seed))
    return tasks


def tile_tasks(path: Path, runs: int, seed: int) -> list[Task]:
    data = np.load(path)
    cat, group = data["category"], data["group"]
    usable = (data["mask_missing"] == 0)
    defective = np.flatnonzero(usable & (cat >= 1) & (cat <= 4))
    free = np.flatnonzero(cat == 0)
    rng = np.random.default_rng([seed, 2])

    def tile(i):
        h, w = int(data["heights"][i]), int(data["widths"][i])
        return data["images"][i, :h, :w], data["masks"][i, :h, :w].astype(np.uint8) + 1

    tasks = []
    for i in rng.permutation(defective)[:runs]:
        others_def = rng.choice(defective[group[defective] != group[i]], size=3, replace=False)
        others_free = rng.choice(free[group[free] != group[i]], size=3, replace=False)
        image, truth = tile(i)
        names = data["category_names"]
        tasks.append(Task("tiles", f"tile {i} ({names[cat[i]]})", image, truth,
                          [tile(j) for j in [*others_def, *others_free]], [True] * 3 + [False] * 3,
                          ("background", "defect"), seed))
    return tasks


# ----------------------------------------------------------------------------------------------
# the methods, as a user's session: learn from the strokes so far, then predict


class Ours:
    """Our network: made on the first strokes, then trained on from its current weights."""

    def __init__(self, p: dict, n_classes: int, class_names, args):
        self.p, self.n_classes, self.class_names = p, n_classes, class_names
        self.seconds, self.first_steps, self.steps = args.round_seconds, args.first_steps, args.round_steps
        self.model: Model | None = None
        self.history: list[Model] = []  # the networks predictions average over (``ensemble=N``: the last N rounds')
        self.rounds = 0
        self.first_preview = float("nan")

    def learn(self, image: np.ndarray, labels: np.ndarray) -> dict:
        p = self.p
        t0 = time.perf_counter()
        if self.model is None or p.get("fresh"):  # fresh: a new network every round, as the forest refits
            self.model = Model.for_data([image], [labels], spec=p.get("spec") or p["preset"],
                                        activation=p["activation"], seed=int(p["seed"]),
                                        class_names=list(self.class_names), filters=p.get("filters"))
            if p.get("superpixels"):  # a superpixel branch of superpixels of about that many pixels
                add_superpixel_branch(self.model, float(p["superpixels"]))
        scale = float(p.get("rsteps") or 1)  # this row trains that many times the round's steps or seconds
        later = int(p["live"]) if p.get("live") else self.steps  # a row's own live retraining steps
        first = self.rounds == 0 or p.get("fresh")
        steps = 100_000 if self.seconds else (self.first_steps if first else later)
        cfg = TrainConfig(steps=int(round(steps * scale)), seconds=self.seconds * scale if self.seconds else None,
                          optimizer=p["optimizer"], lr=p.get("lr"), crop=p.get("crop"), calibrate=bool(p["calibrate"]),
                          balance=p["balance"], seed=int(p["seed"]) * 1000 + self.rounds,
                          anchor=float(p.get("anchor") or 0))
        trainer = Trainer(self.model, [image], [labels], cfg)
        if self.rounds == 0:
            trainer.request_preview()  # what the widget shows first
        steps = 0
        for progress in trainer.run():
            steps = progress.step
            if progress.probabilities is not None and self.rounds == 0 and steps == 1:
                self.first_preview = time.perf_counter() - t0
        self.model = trainer.model
        keep = int(p.get("ensemble") or 1)  # predict with the mean of the last rounds' networks
        self.history = [*self.history, self.model.copy()][-keep:] if keep > 1 else [self.model]
        self.rounds += 1
        return dict(steps=steps, loss=float(trainer.last_loss), train_seconds=time.perf_counter() - t0)

    def proba(self, image: np.ndarray) -> np.ndarray:
        probs = sum(predict_proba(m, image, augment=bool(self.p.get("tta"))) for m in self.history) / len(self.history)
        return probs.astype(np.float32)


class Forest:
    """The peer: ``multiscale_basic_features`` + a random forest, refitted on all strokes each round
    (features computed once per image, as the peers cache them)."""

    def __init__(self, p: dict):
        self.p, self.clf = p, None
        self._features: dict[int, np.ndarray] = {}

    def _feats(self, image: np.ndarray) -> np.ndarray:
        key = id(image)  # the task keeps its images alive, so their ids stay unique
        if key not in self._features:
            self._features[key] = ec.rf_features(image, self.p)
        return self._features[key]

    def learn(self, image: np.ndarray, labels: np.ndarray) -> dict:
        from sklearn.ensemble import RandomForestClassifier

        t0 = time.perf_counter()
        f = self._feats(image)
        sel = labels > 0
        self.clf = RandomForestClassifier(n_estimators=int(self.p["n_estimators"]), max_depth=self.p["max_depth"],
                                          n_jobs=2, random_state=int(self.p["seed"]))
        self.clf.fit(f[sel], labels[sel])
        return dict(steps=0, loss=float("nan"), train_seconds=time.perf_counter() - t0)

    def proba(self, image: np.ndarray) -> np.ndarray:
        f = self._feats(image)
        k = int(max(self.clf.classes_))
        out = np.zeros((k, *f.shape[:2]), np.float32)
        probs = self.clf.predict_proba(f.reshape(-1, f.shape[-1]))
        for j, c in enumerate(self.clf.classes_):
            out[int(c) - 1] = probs[:, j].reshape(f.shape[:2])
        return out


# ----------------------------------------------------------------------------------------------
# scores


def scores(probs: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Pixel error of the arg-max, F1 per class, shares of the last class (over ``mask``)."""
    pred = np.argmax(probs, axis=0) + 1
    if mask is not None:
        pred, truth = pred[mask], truth[mask]
    out = dict(error=float(np.mean(pred != truth)),
               trivial=float(1 - np.bincount(truth.ravel()).max() / truth.size),
               pred_share=float(np.mean(pred == probs.shape[0])), true_share=float(np.mean(truth == probs.shape[0])))
    for c in range(1, probs.shape[0] + 1):
        tp = np.sum((pred == c) & (truth == c))
        denom = np.sum(pred == c) + np.sum(truth == c)
        out[f"f1_{c}"] = float(2 * tp / denom) if denom else float("nan")
    return out


def flagged(probs: np.ndarray) -> bool:
    """The widget's default "defect present": one object of >= 10 px with p(last class) >= 0.5."""
    return bool(count_objects(probs[-1], 0.5, min_area=10).present[0])


def run_task(task: Task, methods: list[tuple[str, dict]], args, place: str, placed_by: str) -> list[dict]:
    """The rounds of one simulated session, one record per method and round.

    ``placed_by``: the method whose preview places the correction strokes; every method learns from
    those same strokes (the issue's protocol: a person corrects what the preview shows, and the peer
    refits on the same strokes). ``"each"``: a session per method, each correcting its own preview.
    """
    if placed_by == "each":
        return [rec for m in methods for rec in run_task(task, [m], args, place, m[0])]
    names = [name for name, _ in methods]
    if placed_by not in names:
        raise ValueError(f"the strokes are placed by {placed_by!r}, which is not one of the rows {names}")
    rng = np.random.default_rng([int(task.seed), zlib.crc32(task.name.encode())])
    n_classes = int(task.truth.max())
    learners = {name: Forest(params) if params["kind"] == "rf" else Ours(params, n_classes, task.class_names, args)
                for name, params in methods}
    brush = su.Brush(tuple(args.stroke_length), int(args.stroke_width))
    labels = su.first_strokes(task.truth, args.first_strokes, rng, brush=brush)
    records, probs = [], None
    for r in range(1, args.rounds + 1):
        if r > 1:
            labels = su.correction_strokes(task.truth, labels, probs, args.more_strokes, rng, place, brush)
        for name, learner in learners.items():
            t0 = time.perf_counter()
            info = learner.learn(task.image, labels)
            mine = learner.proba(task.image)
            seconds = time.perf_counter() - t0
            if name == placed_by:
                probs = mine  # the next round's strokes correct this preview
            records.append(_record(task, name, learner, mine, labels, info, seconds, place, placed_by, r))
    return records


def _record(task: Task, method: str, learner, probs, labels, info: dict, seconds: float, place: str,
            placed_by: str, r: int) -> dict:
    """The scores of one method after round ``r``, printed as a progress line."""
    s = scores(probs, task.truth, labels == 0)
    predicted = [learner.proba(img) for img, _ in task.others]  # once each: scores and flags read them
    other = [scores(p, tru) for p, (_, tru) in zip(predicted, task.others, strict=True)]
    rec = dict(dataset=task.dataset, task=task.name, seed=task.seed, method=method, place=place, placed_by=placed_by, round=r,
               painted=int((labels > 0).sum()), unlearned=unlearned_share(probs, labels), seconds=seconds,
               **info, **s,
               other_error=float(np.mean([o["error"] for o in other])),
               other_trivial=float(np.mean([o["trivial"] for o in other])))
    if r == 1 and isinstance(learner, Ours):
        rec["first_preview"] = learner.first_preview
    if task.dataset == "tiles":
        flags = [flagged(p) for p in predicted]
        free = [f for f, d in zip(flags, task.others_defective, strict=True) if not d]
        hit = [f for f, d in zip(flags, task.others_defective, strict=True) if d]
        rec["false_flags"] = float(np.mean(free))
        rec["missed_flags"] = float(1 - np.mean(hit))
    print(f"  {task.dataset} {task.name} {method} r{r}: err {s['error']:.3f} other {rec['other_error']:.3f} "
          f"(trivial {s['trivial']:.3f}) share {s['pred_share']:.2f}/{s['true_share']:.2f} "
          f"{seconds:.1f}s {info['steps']} steps", flush=True)
    return rec


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["em", "tiles"], choices=["em", "tiles"])
    ap.add_argument("--data", type=Path, default=ec.SHARED_DATA)
    ap.add_argument("--runs", type=int, default=5, help="tasks (images and seeds) per data set")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--first-strokes", type=int, nargs="+", default=[10], metavar="N",
                    help="strokes per class in round 1, or one count per class (background first): '20 5' "
                         "paints the background four times as often")
    ap.add_argument("--stroke-length", type=int, nargs=2, default=list(su.STROKE_LENGTH), metavar=("MIN", "MAX"),
                    help="a stroke's length in pixels, drawn uniformly (default: %(default)s)")
    ap.add_argument("--stroke-width", type=int, default=su.STROKE_WIDTH, help="the brush's width in pixels")
    ap.add_argument("--more-strokes", type=int, default=5, help="strokes added in each later round")
    ap.add_argument("--first-steps", type=int, default=_DEFAULTS["steps"],
                    help="our training steps in round 1 (default: Train's, %(default)s)")
    ap.add_argument("--round-steps", type=int, default=_DEFAULTS["live_steps"],
                    help="our training steps in each later round (default: live retraining's, %(default)s)")
    ap.add_argument("--round-seconds", type=float, default=None,
                    help="train this many seconds in every round instead (at most 30)")
    ap.add_argument("--place", default="error", choices=["error", "uncertain", "both"])
    ap.add_argument("--methods", nargs="+", default=["ours", "rf"], metavar="NAME[:k=v,...]",
                    help="rows: 'ours' (the defaults), 'rf' (the forest), or NAME:key=value,... over OURS")
    ap.add_argument("--placed-by", nargs="+", default=None, metavar="ROW|each",
                    help="whose preview places the correction strokes that every row learns from (default: the "
                         "first row, ours); 'each': every row corrects its own preview in its own session")
    ap.add_argument("--seed", type=int, nargs="+", default=[0],
                    help="which tasks and strokes; several seeds: the tasks of each, reported together")
    ap.add_argument("--report-from", type=Path, nargs="+", default=None, metavar="JSON",
                    help="run nothing: report the records of these files (written by --json) together")
    ap.add_argument("--out", type=Path, default=HERE / "LOOP.md", help="markdown report (overwritten; '' for none)")
    ap.add_argument("--json", type=Path, default=HERE / "loop_latest.json",
                    help="per-round records (overwritten; '' for none)")
    ap.add_argument("--plot", type=Path, default=HERE / "loop.png", help="the plot ('' for none)")
    return ap


def setup(args) -> str:
    """The simulated painter and training of a run, in words (kept with every record)."""
    return (f"round 1: {' / '.join(map(str, args.first_strokes))} strokes per class "
            f"({args.stroke_length[0]}-{args.stroke_length[1]} px long, {args.stroke_width} px wide); "
            f"rounds 2-{args.rounds}: {args.more_strokes} strokes each; training per round: "
            + (f"{args.round_seconds:g} s" if args.round_seconds else
               f"{args.first_steps} steps in round 1 (Train), then {args.round_steps} (live retraining)"))


def run(args) -> list[dict]:
    """The records of every task of every seed, method, placement and placing preview."""
    if args.round_seconds and args.round_seconds > 30:
        raise SystemExit("--round-seconds is at most 30: the loop is about seconds, not minutes")
    if len(args.first_strokes) not in (1, 2) or min(args.first_strokes) < 1:
        raise SystemExit("--first-strokes: one count for every class or one per class (2), each at least 1")
    if not 1 <= args.stroke_length[0] <= args.stroke_length[1] or args.stroke_width < 1:
        raise SystemExit("--stroke-length MIN MAX with 1 <= MIN <= MAX, and --stroke-width at least 1")
    names = [v.name for v in ec.parse_variants(args.methods, OURS)]
    placed_by = args.placed_by or [names[0]]
    unknown = [by for by in placed_by if by != "each" and by not in names]
    if unknown:
        raise SystemExit(f"--placed-by {' '.join(unknown)}: not one of the rows ({', '.join(names)}) or 'each'")
    places = ["error", "uncertain"] if args.place == "both" else [args.place]
    records = []
    for seed in args.seed:
        variants = ec.parse_variants(args.methods, dict(OURS, seed=seed))  # our network's seed: the tasks'
        methods = [(v.name, dict(v.params, kind=v.kind)) for v in variants]
        tasks = []
        if "em" in args.datasets:
            tasks += em_tasks(args.data / "isbi2012_train.npz", args.runs, seed)
        if "tiles" in args.datasets:
            tasks += tile_tasks(args.data / "magnetic_tile_train.npz", args.runs, seed)
        for task in tasks:
            for by in placed_by:
                for place in places:
                    records += run_task(task, methods, args, place, by)
    settings = setup(args)
    for rec in records:
        rec["setup"] = settings
    return records


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    records = lr.read_records(args.report_from) if args.report_from else run(args)
    summary = lr.summarise(records)
    text = lr.report(summary, sorted({rec.get("setup", "(settings not recorded)") for rec in records}),
                  sorted({int(rec.get("seed", 0)) for rec in records}))
    print(text)
    if args.out and args.out.name:  # '' writes nothing
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.json and args.json.name:
        lines = (json.dumps({k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in rec.items()})
                 for rec in records)  # a record a line, 6 significant digits
        args.json.write_text("[\n" + ",\n".join(lines) + "\n]\n", encoding="utf-8")
    if args.plot and args.plot.name:
        lr.plot(summary, args.plot)
    return records


if __name__ == "__main__":
    main()

"""The loop benchmark (benchmarks/loop.py, simulated_user.py): the simulated user's strokes and one
short session end to end on tiny synthetic data (never on ../shared)."""

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import loop  # noqa: E402
import loop_report  # noqa: E402
import simulated_user as su  # noqa: E402

from napari_mpf.engine.training.synthetic import two_texture_sample  # noqa: E402


def _membranes(shape=(96, 96)) -> np.ndarray:
    """Cells (1) separated by 3-px membranes (2) on a grid."""
    truth = np.ones(shape, np.uint8)
    for k in range(0, shape[0], 24):
        truth[k : k + 3, :] = 2
        truth[:, k : k + 3] = 2
    return truth


def test_first_strokes_stay_inside_their_class_and_are_short():
    truth = _membranes()
    labels = su.first_strokes(truth, 4, np.random.default_rng(0))
    assert set(np.unique(labels)) == {0, 1, 2}
    painted = labels > 0
    assert np.all(labels[painted] == truth[painted])  # never across a boundary
    comps, n = ndi.label(painted, np.ones((3, 3)))
    assert 4 <= n <= 8
    for i in range(1, n + 1):
        ys, xs = np.nonzero(comps == i)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1
        assert extent <= su.STROKE_LENGTH[1] + su.STROKE_WIDTH
    # cell strokes keep off the membranes: no cell stroke pixel touches a membrane pixel
    near_membrane = ndi.binary_dilation(truth == 2)
    assert not np.any((labels == 1) & near_membrane)


def test_first_strokes_per_class_counts_and_brush():
    truth = _membranes()
    default = su.first_strokes(truth, 3, np.random.default_rng(0))
    assert np.array_equal(su.first_strokes(truth, [3, 3], np.random.default_rng(0)), default)  # same strokes
    uneven = su.first_strokes(truth, [6, 1], np.random.default_rng(0))
    assert ndi.label(uneven == 1, np.ones((3, 3)))[1] == 6 and ndi.label(uneven == 2, np.ones((3, 3)))[1] == 1
    wide = su.first_strokes(truth, 3, np.random.default_rng(0), brush=su.Brush((30, 40), 5))
    assert np.all(wide[wide > 0] == truth[wide > 0])  # a wider, longer brush still stays inside its class
    assert (wide == 1).sum() > (default == 1).sum()
    with pytest.raises(ValueError, match="3 stroke counts for 2 classes"):
        su.first_strokes(truth, [1, 2, 3], np.random.default_rng(0))


def test_the_loop_refuses_bad_stroke_options():
    for argv in (["--first-strokes", "1", "2", "3"], ["--first-strokes", "0"], ["--stroke-length", "9", "3"],
                 ["--stroke-width", "0"]):
        with pytest.raises(SystemExit, match="--"):
            loop.main(argv)


def test_correction_strokes_go_where_the_preview_is_wrong():
    truth = _membranes()
    rng = np.random.default_rng(1)
    labels = su.first_strokes(truth, 2, rng)
    before = labels.copy()
    # a preview that calls one whole cell "membrane"
    probs = np.stack([(truth == 1), (truth == 2)]).astype(np.float32)
    wrong = np.zeros(truth.shape, bool)
    wrong[27:45, 27:45] = True
    probs[:, wrong] = [[0.1], [0.9]]
    out = su.correction_strokes(truth, labels, probs, 1, rng)
    assert np.array_equal(labels, before)  # the input is not changed
    new = (out > 0) & (before == 0)
    assert new.any() and np.all(wrong[new]) and np.all(out[new] == 1)
    # placed where the model is unsure instead: a tie over another cell
    probs2 = np.stack([(truth == 1), (truth == 2)]).astype(np.float32)
    probs2[:, 51:69, 51:69] = 0.5
    out2 = su.correction_strokes(truth, labels, probs2, 1, rng, place="uncertain")
    new2 = (out2 > 0) & (labels == 0)
    ys, xs = np.nonzero(new2)
    assert new2.any() and ys.min() >= 48 and xs.min() >= 48 and ys.max() <= 72 and xs.max() <= 72
    with pytest.raises(ValueError, match="place"):
        su.correction_strokes(truth, labels, probs, 1, rng, place="random")


def test_scores_against_known_answers():
    truth = np.array([[1, 1], [1, 2]])
    probs = np.stack([np.array([[0.9, 0.9], [0.2, 0.1]]), np.array([[0.1, 0.1], [0.8, 0.9]])])
    s = loop.scores(probs, truth)
    assert s["error"] == 0.25 and s["trivial"] == 0.25
    assert s["pred_share"] == 0.5 and s["true_share"] == 0.25
    assert s["f1_2"] == pytest.approx(2 / 3)
    assert loop.scores(probs, truth, truth == 1)["error"] == pytest.approx(1 / 3)


def _task():
    sample = two_texture_sample((64, 64), seed=3)
    other = two_texture_sample((64, 64), seed=4)
    return loop.Task("tiles", "synthetic", sample.image, sample.truth, [(other.image, other.truth)] * 2,
                     [True, False])


_ARGS = dict(first_strokes=[3], more_strokes=2, rounds=2, round_seconds=None, first_steps=3, round_steps=2, seed=0,
             stroke_length=[12, 24], stroke_width=3)


@pytest.mark.parametrize("kind", ["mpf", "rf"])
def test_a_short_session_runs_every_round(kind, tmp_path):
    args = SimpleNamespace(**_ARGS)
    params = dict(loop.OURS, kind=kind) if kind == "mpf" else dict(loop.ec.RF_DEFAULTS, kind=kind)
    records = loop.run_task(_task(), [(kind, params)], args, "error", kind)
    assert [r["round"] for r in records] == [1, 2]
    assert records[1]["painted"] > records[0]["painted"] > 0
    for r in records:
        assert 0 <= r["error"] <= 1 and 0 <= r["other_error"] <= 1
        assert 0 <= r["unlearned"] <= 1  # painted pixels the preview gets wrong (the widget's hint)
        assert r["false_flags"] in (0.0, 1.0)
        assert r["placed_by"] == kind
    if kind == "mpf":
        assert [r["steps"] for r in records] == [3, 2] and records[0]["first_preview"] > 0
    summary = loop_report.summarise(records + records)
    assert [s["n"] for s in summary] == [2, 2]
    loop_report.plot(summary, tmp_path / "loop.png")
    assert (tmp_path / "loop.png").read_bytes()[:4] == b"\x89PNG"
    text = loop_report.report(summary, [loop.setup(SimpleNamespace(**_ARGS))], [0])
    assert "| " + kind + " | 1 |" in text and "tasks per data set (means over them): tiles 2; seed(s) 0" in text


def test_every_method_learns_from_the_strokes_of_the_one_that_places_them(monkeypatch):
    seen = []  # (method, labels) in the order the learners are given them
    learn_mpf, learn_rf = loop.Ours.learn, loop.Forest.learn

    def spy(original, name):
        def learn(self, image, labels):
            seen.append((name, labels.copy()))
            return original(self, image, labels)
        return learn

    monkeypatch.setattr(loop.Ours, "learn", spy(learn_mpf, "ours"))
    monkeypatch.setattr(loop.Forest, "learn", spy(learn_rf, "rf"))
    args = SimpleNamespace(**dict(_ARGS, rounds=3))
    methods = [("ours", dict(loop.OURS, kind="mpf")), ("rf", dict(loop.ec.RF_DEFAULTS, kind="rf"))]
    records = loop.run_task(_task(), methods, args, "error", "rf")
    assert [(r["method"], r["round"]) for r in records] == [(m, r) for r in (1, 2, 3) for m in ("ours", "rf")]
    for k in range(0, len(seen), 2):  # each round both learn the very same strokes
        assert np.array_equal(seen[k][1], seen[k + 1][1])
    assert {r["placed_by"] for r in records} == {"rf"}
    # "each": separate sessions; round 1 is the same for both (one seed), later rounds follow each preview
    seen.clear()
    records = loop.run_task(_task(), methods, args, "error", "each")
    assert [r["method"] for r in records] == ["ours"] * 3 + ["rf"] * 3
    assert np.array_equal(seen[0][1], seen[3][1])
    with pytest.raises(ValueError, match="not one of the rows"):
        loop.run_task(_task(), methods, args, "error", "forest")


def test_our_rows_keep_the_first_prior_correction_and_can_take_a_superpixel_branch():
    task, rng = _task(), np.random.default_rng(0)
    labels = su.first_strokes(task.truth, 3, rng)
    ours = loop.Ours(dict(loop.OURS, superpixels=16), 2, task.class_names, SimpleNamespace(**_ARGS))
    ours.learn(task.image, labels)
    assert ours.model.superpixels is not None
    shift = ours.model.provenance["prior_shift"]
    ours.learn(task.image, su.correction_strokes(task.truth, labels, ours.proba(task.image), 2, rng))
    assert ours.model.provenance["prior_shift"] == shift  # a continued round keeps the first correction


def test_runs_made_apart_are_reported_together(tmp_path, monkeypatch):
    """--report-from: records of several runs (here two seeds) in one report, nothing run again."""
    monkeypatch.chdir(tmp_path)  # where a stray file from an empty output path would land
    args = SimpleNamespace(**_ARGS)
    methods = [("rf", dict(loop.ec.RF_DEFAULTS, kind="rf"))]
    runs = [loop.run_task(dataclasses.replace(_task(), seed=seed), methods, args, "error", "rf") for seed in (0, 1)]
    assert runs[0][0]["seed"] == 0 and runs[1][0]["seed"] == 1
    assert runs[0][0]["painted"] != runs[1][0]["painted"]  # the seed draws other strokes
    files = []
    for k, records in enumerate(runs):
        for rec in records:
            rec["setup"] = loop.setup(args)
        files.append(tmp_path / f"seed{k}.json")
        files[-1].write_text(json.dumps(records))
    out, merged = tmp_path / "LOOP.md", tmp_path / "all.json"
    loop.main(["--report-from", *map(str, files), "--out", str(out), "--json", str(merged), "--plot", ""])
    text = out.read_text()
    assert "tiles 2; seed(s) 0, 1" in text and loop.setup(args) in text
    assert len(json.loads(merged.read_text())) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LOOP.md", "all.json", "seed0.json", "seed1.json"]
    for bad, message in (("[]", "no records"), ("{", "not a records file"), ('{"a": 1}', "not a records file")):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(SystemExit, match=message):
            loop.main(["--report-from", str(tmp_path / "bad.json"), "--out", "", "--json", "", "--plot", ""])
    none = ["--out", "", "--json", "", "--plot", ""]
    with pytest.raises(SystemExit, match="not a records file"):
        loop.main(["--report-from", str(tmp_path / "missing.json"), *none])
    with pytest.raises(SystemExit, match="twice"):
        loop.main(["--report-from", str(files[0]), str(files[0]), *none])
    assert out.read_text() == text  # nothing written when a command fails

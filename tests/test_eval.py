"""The accuracy evaluation (benchmarks/eval_*.py): metrics with known answers, the scribble
generator, and the --quick paths end to end on tiny synthetic data (never on ../shared)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import eval_common as ec  # noqa: E402


def test_pixel_error_at_threshold():
    prob = np.array([[0.2, 0.8], [0.6, 0.4]])
    truth = np.array([[0, 1], [0, 0]], bool)
    assert ec.pixel_error(prob, truth, 0.5) == 0.25
    assert ec.pixel_error(prob, truth, 0.7) == 0.0
    assert ec.pixel_error(prob, truth, 0.5, mask=np.array([[1, 1], [0, 1]], bool)) == 0.0


def test_choose_threshold_separates_and_centres_plateau():
    prob = np.array([0.1, 0.2, 0.3, 0.6, 0.7])
    truth = np.array([0, 0, 0, 1, 1], bool)
    t = ec.choose_threshold(prob, truth)
    assert 0.3 <= t < 0.6
    assert abs(t - 0.45) < 0.01
    assert ec.pixel_error(prob, truth, t) == 0.0
    # a mask and lists of images; an overlapping case where the best threshold is forced
    p2 = [np.array([0.1, 0.4, 0.45]), np.array([0.5, 0.9, 0.3])]
    t2 = [np.array([0, 1, 1], bool), np.array([1, 1, 0], bool)]
    m2 = [np.array([1, 1, 1], bool), np.array([1, 1, 0], bool)]
    t = ec.choose_threshold(p2, t2, m2)
    assert 0.1 <= t < 0.4


def test_f1_per_class():
    pred = np.array([1, 1, 0, 0], bool)
    truth = np.array([1, 0, 0, 0], bool)
    f_neg, f_pos = ec.f1_per_class(pred, truth)
    assert f_pos == pytest.approx(2 / 3)
    assert f_neg == pytest.approx(0.8)


def test_adapted_rand_perfect_and_merge():
    truth = np.zeros((10, 21), bool)
    truth[:, 10] = True  # a membrane between two cells of 100 pixels each
    assert ec.adapted_rand(truth, truth) == pytest.approx(0.0)
    # no membrane predicted: one segment covers both cells; skimage counts pairs (sum n_ij^2 - n):
    # precision (2*100^2 - 200) / (200^2 - 200), recall 1
    precision = (2 * 100**2 - 200) / (200**2 - 200)
    expected = 1 - 2 * precision / (precision + 1)
    assert ec.adapted_rand(np.zeros_like(truth), truth) == pytest.approx(expected)
    # a thicker predicted membrane still separates the cells: its pixels join the nearest cell
    thick = truth.copy()
    thick[:, 9:12] = True
    assert ec.adapted_rand(thick, truth) == pytest.approx(0.0)


def test_balanced_sample_and_values():
    truths = [np.zeros((4, 4), bool), np.zeros((4, 4), bool)]
    truths[0][0, :3] = True
    truths[1][3, 3] = True
    ii, ff, pos = ec.balanced_sample(truths, 10, np.random.default_rng(0))
    assert pos.sum() == 4  # all 4 defect pixels (fewer than asked)
    assert (~pos).sum() == 10
    maps = [t.astype(float) for t in truths]
    assert np.array_equal(ec.sample_values(maps, ii, ff) > 0.5, pos)


def test_detection_thresholds():
    counts = np.array([0, 1, 10, 20])
    defective = np.array([0, 0, 1, 1], bool)
    t = ec.choose_count_threshold(counts, defective)
    assert t == 5.5
    assert ec.detection_error(counts, defective, t) == 0.0
    # flag-everything is a candidate
    assert ec.choose_count_threshold(np.array([3, 3]), np.array([1, 1], bool)) < 3
    err, thr = ec.crossfit_detection_error(np.array([0, 10, 1, 12]), np.array([0, 1, 0, 1], bool), np.array([0, 0, 1, 1]))
    assert err == 0.0 and len(thr) == 2
    # a threshold that fits one fold badly shows up only in the cross-fit error
    err, _ = ec.crossfit_detection_error(np.array([0, 10, 20, 30]), np.array([0, 1, 0, 1], bool), np.array([0, 0, 1, 1]))
    assert err > 0


def _cells(shape=(96, 96), seed=0):
    """Voronoi cells (class 1) with 3-px membranes (class 2) between them, plus a noisy image."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, shape[0], size=(12, 2))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)
    order = np.sort(d, axis=-1)
    membrane = (order[..., 1] - order[..., 0]) < 3.0
    image = np.where(membrane, 80.0, 140.0) + rng.normal(0, 20, shape)
    return np.clip(image, 0, 255).astype(np.uint8), membrane


def test_scribbles_never_cross_a_boundary():
    _, membrane = _cells()
    truth = membrane.astype(np.uint8) + 1
    for seed in range(3):
        s = ec.scribbles(truth, np.random.default_rng(seed), px_per_class=300, margin=2)
        painted = s > 0
        assert np.all(s[painted] == truth[painted]), "a stroke labelled a pixel of the wrong class"
        for c in (1, 2):
            assert 100 <= np.count_nonzero(s == c) <= 300 + 2 * 4 * 150  # about the asked amount
            dist = ndi.distance_transform_edt(truth == c)
            assert np.all(dist[s == c] >= 2), "a stroke came closer than 2 px to the other class"
    again = ec.scribbles(truth, np.random.default_rng(0), px_per_class=300)
    assert np.array_equal(again, ec.scribbles(truth, np.random.default_rng(0), px_per_class=300))


def test_parse_variants():
    base = dict(ec.MPF_DEFAULTS)
    vs = ec.parse_variants(["mpf", "rf", "relu:activation=relu,crop=128,lr=0.01"], base)
    assert [v.kind for v in vs] == ["mpf", "rf", "mpf"]
    assert vs[2].params["activation"] == "relu" and vs[2].params["crop"] == 128 and vs[2].params["lr"] == 0.01
    assert vs[2].params["optimizer"] == "adam"
    assert vs[1].params["n_estimators"] == 50
    with pytest.raises(SystemExit):
        ec.parse_variants(["x:kind=nope"], base)


def test_standardise():
    x = ec.standardise(np.array([[1.0, 3.0], [1.0, 3.0]]))
    assert np.allclose(x, [[-1, 1], [-1, 1]])


def test_eval_isbi_quick_on_synthetic(tmp_path):
    pytest.importorskip("sklearn")  # the forest peer (extra "eval")
    import eval_isbi

    imgs, labs = zip(*(_cells((64, 64), seed=s) for s in range(3)), strict=True)
    path = tmp_path / "isbi.npz"
    np.savez(path, images=np.stack(imgs), labels=np.stack(labs).astype(np.uint8))
    out = tmp_path / "r.md"
    rows = eval_isbi.main(["--quick", "--data", str(path), "--train-slices", "0:2", "--test-slices", "2:3",
                           "--scribble-px", "150", "--variants", "mpf", "rf", "rfn:kind=rf,norm=image",
                           "--out", str(out)])
    assert [(r["regime"], r["variant"]) for r in rows] == [
        (regime, name) for regime in ("scribbles", "dense") for name in ("mpf", "rf", "rfn")]
    for r in rows:
        assert 0.0 <= r["err05"] <= 1.0 and 0.0 <= r["rand"] <= 1.0
        assert r["train_s"] >= 0 and r["pred_s"] > 0
    text = out.read_text()
    assert "| scribbles | rf |" in text and "command:" in text


def _synthetic_tiles(tmp_path):
    """A tiny tiles file: 16 images in 8 groups, categories Free, Blowhole, Break, Uneven (one
    Uneven mask missing); the path and the arrays."""
    rng = np.random.default_rng(0)
    n, H, W = 16, 48, 72
    images = np.zeros((n, H, W), np.uint8)
    masks = np.zeros((n, H, W), np.uint8)
    heights = np.full(n, 44, np.int32)
    widths = np.full(n, 64, np.int32)
    category = np.array([0, 1, 2, 5] * 4, np.uint8)
    for i in range(n):
        images[i, :44, :64] = rng.normal(128, 10, (44, 64)).clip(0, 255)
        if category[i]:
            y, x = rng.integers(5, 30), rng.integers(5, 50)
            masks[i, y : y + 8, x : x + 8] = 1
            images[i, y : y + 8, x : x + 8] = 40
    missing = np.zeros(n, np.uint8)
    missing[3] = 1
    masks[3] = 0
    path = tmp_path / "tiles.npz"
    np.savez(path, images=images, masks=masks, heights=heights, widths=widths, category=category,
             category_names=np.array(["MT_Free", "MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"]),
             is_defective=(category != 0).astype(np.uint8), mask_missing=missing, group=np.arange(n) // 2,
             split=np.zeros(n, np.uint8))
    return path, n, category, missing


def test_eval_tiles_quick_on_synthetic(tmp_path):
    pytest.importorskip("sklearn")
    import eval_tiles

    path, n, category, missing = _synthetic_tiles(tmp_path)
    out = tmp_path / "t.md"
    rows = eval_tiles.main(["--quick", "--data", str(path), "--downsample", "2", "--val-fraction", "0.5",
                            "--n-pixels", "100", "--out", str(out)])
    assert [r["variant"] for r in rows] == ["mpf", "rf"]
    for r in rows:
        for key in ("bal_all", "bal_no_uneven", "det_cross_all", "det_same_no_uneven"):
            assert 0.0 <= r[key] <= 1.0
        assert {pc["category"] for pc in r["per_category"]} <= {"MT_Free", "MT_Blowhole", "MT_Break", "MT_Uneven"}
    assert "Per category" in out.read_text()

    # several group splits: each in turn, then every row's mean over them
    out3 = tmp_path / "t3.md"
    rows = eval_tiles.main(["--quick", "--data", str(path), "--downsample", "2", "--val-fraction", "0.5",
                            "--n-pixels", "100", "--out", str(out3), "--split-seed", "0", "1", "--variants", "mpf",
                            "--train-skip", "Uneven"])
    assert [(r["split_seed"], r["variant"]) for r in rows] == [(0, "mpf"), (1, "mpf")]
    text = out3.read_text()
    assert "split seed 0" in text and "split seed 1" in text and "training without MT_Uneven" in text
    for seed in (0, 1):  # the Uneven images of the training groups are left out of training
        train_groups = eval_tiles.split_groups(np.arange(n) // 2, category, 0.5, seed)[0]
        kept = sum(1 for i in range(n) if i // 2 in train_groups and not missing[i] and category[i] != 5)
        assert f"{kept} train / " in next(line for line in text.splitlines() if f"split seed {seed}" in line)
    mean_line = next(line for line in text.splitlines() if line.startswith("| mpf | **"))
    first = mean_line.split("|")[2].strip()  # "**mean** (split 0 / split 1)" of the balanced pixel error
    a, b = (float(v) for v in first.split("(")[1].rstrip(")").split(" / "))
    assert (a, b) == pytest.approx((rows[0]["bal_all"], rows[1]["bal_all"]), abs=5e-4)
    assert float(first.split("**")[1]) == pytest.approx((rows[0]["bal_all"] + rows[1]["bal_all"]) / 2, abs=1e-3)

    # the seed methods as rows, with pixel labels on a quarter of the training images
    out2 = tmp_path / "t2.md"
    rows = eval_tiles.main(["--quick", "--data", str(path), "--downsample", "2", "--val-fraction", "0.5",
                            "--n-pixels", "100", "--pixel-label-share", "0.25", "--out", str(out2),
                            "--variants", "head:image_head=1,sp_branch=20,refine=30"])
    (row,) = rows
    assert 0.0 <= row["det_head_all"] <= 1.0 and 0.0 <= row["det_head_cross_no_uneven"] <= 1.0
    assert "image_head=1" in row["method"] and "sp_branch=20" in row["method"]
    assert "pixel labels on 25%" in out2.read_text()


def test_down_takes_block_means():
    import eval_tiles

    stripes = np.tile(np.array([0.0, 10.0]), (4, 4))  # 4 x 8: vertical stripes one pixel wide
    stripes[:, 4:] = 5.0  # the right half is flat at the same mean
    np.testing.assert_allclose(eval_tiles.down(stripes, 2), np.full((2, 4), 5.0))


def test_keep_pixel_labels_per_category():
    import eval_tiles

    category = np.array([0] * 8 + [1] * 4 + [2])
    keep = eval_tiles.keep_pixel_labels(category, 0.25, 0)
    assert keep[:8].sum() == 2 and keep[8:12].sum() == 1 and keep[12]


def test_train_skip_names_categories_with_or_without_prefix():
    import eval_tiles

    names = ["MT_Free", "MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"]
    assert eval_tiles.skipped_categories(["Uneven", "MT_fray"], names) == {4, 5}
    assert eval_tiles.skipped_categories([], names) == set()
    with pytest.raises(SystemExit, match="unknown categories"):
        eval_tiles.skipped_categories(["Scratch"], names)


def test_rows_differing_only_in_prediction_settings_share_one_training():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(24, 24)).astype(np.float32)]
    labels = [rng.integers(0, 3, size=(24, 24)).astype(np.uint8)]
    plain, tta = ec.parse_variants(["a:steps=3,budget=0,crop=none", "b:steps=3,budget=0,crop=none,tta=true"], ec.MPF_DEFAULTS)
    logs = []
    first = ec.run_method(plain, images, labels, log=logs.append)
    second = ec.run_method(tta, images, labels, log=logs.append)
    assert any("reused" in line for line in logs)
    assert second.train_seconds == first.train_seconds
    p_plain, p_tta = first.predict(images[0]), second.predict(images[0])
    assert p_tta.shape == p_plain.shape == (24, 24)
    assert not np.allclose(p_tta, p_plain)  # the mean over rotations and flips is another map
    assert "tta=True" in tta.describe()


def test_an_ensemble_row_averages_members_trained_with_successive_seeds():
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(24, 24)).astype(np.float32)]
    labels = [rng.integers(0, 3, size=(24, 24)).astype(np.uint8)]
    single = [ec.run_method(v, images, labels, log=lambda *_: None) for v in ec.parse_variants(
        ["s0:steps=3,budget=0,crop=none,seed=5", "s1:steps=3,budget=0,crop=none,seed=6"], ec.MPF_DEFAULTS)]
    (pair_row,) = ec.parse_variants(["e:steps=3,budget=0,crop=none,seed=5,ensemble=2"], ec.MPF_DEFAULTS)
    pair = ec.run_method(pair_row, images, labels, log=lambda *_: None)
    expected = (single[0].predict(images[0]) + single[1].predict(images[0])) / 2
    np.testing.assert_allclose(pair.predict(images[0]), expected, rtol=1e-6)
    assert not np.allclose(single[0].predict(images[0]), single[1].predict(images[0]))
    assert pair.info["members"] == 2 and pair.info["steps_done"] == 6
    assert "ensemble=2" in pair_row.describe()


def test_a_filters_row_trains_a_model_with_input_filters():
    rng = np.random.default_rng(2)
    images = [rng.normal(size=(24, 24)).astype(np.float32)]
    labels = [rng.integers(0, 3, size=(24, 24)).astype(np.uint8)]
    (row,) = ec.parse_variants(["f:steps=2,budget=0,crop=none,filters=multiscale"], ec.MPF_DEFAULTS)
    fitted = ec.run_method(row, images, labels, log=lambda *_: None)
    assert "input filters (smooth" in fitted.info["model"] and "filters=multiscale" in row.describe()
    assert fitted.predict(images[0]).shape == (24, 24)


def test_settings_cut_in_1_0_are_refused_not_ignored():
    for setting in ("elastic=2", "intensity=0.2", "shading=0.3", "smoothness=0.5", "by_class=true",
                    "schedule=constant", "balance=global"):
        with pytest.raises(SystemExit, match="cut in 1.0"):
            ec.parse_variants([f"a:steps=2,{setting}"], ec.MPF_DEFAULTS)


def test_a_budget_row_fits_its_schedule_to_the_budget():
    rng = np.random.default_rng(4)
    images = [rng.normal(size=(24, 24)).astype(np.float32)]
    labels = [rng.integers(0, 3, size=(24, 24)).astype(np.uint8)]
    warm = ec.parse_variants(["w:steps=1,budget=0,crop=none,preset=fast"], ec.MPF_DEFAULTS)[0]
    ec.run_method(warm, images, labels, log=lambda *_: None)  # compile first
    (row,) = ec.parse_variants(["b:budget=1.5,crop=none,preset=fast"], ec.MPF_DEFAULTS)
    row.params.pop("steps", None)
    fitted = ec.run_method(row, images, labels, log=lambda *_: None)
    assert fitted.info["steps_done"] == fitted.info["steps_planned"] > 10
    assert 1.0 <= fitted.train_seconds < 10.0


def test_a_context_row_trains_two_stages_sharing_the_steps():
    rng = np.random.default_rng(5)
    images = [rng.normal(size=(24, 24)).astype(np.float32)]
    labels = [rng.integers(0, 3, size=(24, 24)).astype(np.uint8)]
    (row,) = ec.parse_variants(["c:steps=4,budget=0,crop=none,context=C3x3x3;MPF2x2;FC6"], ec.MPF_DEFAULTS)
    assert "context=C3x3x3" in row.describe()
    fitted = ec.run_method(row, images, labels, log=lambda *_: None)
    assert fitted.info["steps_done"] == 4 and "auto-context on a first stage (C5x5x16" in fitted.info["model"]
    assert fitted.predict(images[0]).shape == (24, 24)


def test_other_method_kinds_take_the_common_budget_and_seed():
    base = dict(ec.MPF_DEFAULTS, budget=42.0, seed=7)
    import peer_unet  # noqa: F401  (registers kind "unet"; torch is imported only when it trains)

    (v,) = ec.parse_variants(["u:kind=unet,base=8"], base)
    assert v.kind == "unet" and v.params == {"budget": 42.0, "seed": 7, "base": 8}
    (v,) = ec.parse_variants(["u:kind=unet,budget=5"], base)
    assert v.params["budget"] == 5


def test_unet_peer_learns_membranes_and_predicts_any_size():
    pytest.importorskip("torch")  # the optional benchmark peer (extra "bench")
    import peer_unet

    imgs, membranes = zip(*(_cells((64, 64), seed=s) for s in range(3)), strict=True)
    labels = [m.astype(np.uint8) + 1 for m in membranes]
    labels[1][:, :32] = 0  # unpainted pixels are left out of the loss
    params = dict(base=4, levels=3, crop=48, batch=2, budget=6.0, seed=0)
    fitted = peer_unet.fit_unet(list(imgs[:2]), labels[:2], params, log=lambda *a: None)
    assert fitted.info["steps_done"] > 10 and fitted.train_seconds >= 6.0
    prob = fitted.predict(imgs[2])
    assert prob.shape == (64, 64) and prob.dtype == np.float32
    assert ec.pixel_error(prob, membranes[2]) < 0.15  # a constant answer errs on ~20% of the pixels
    odd = fitted.predict(imgs[2][:37, :45])  # sides that are no multiple of the pooling factor
    assert odd.shape == (37, 45) and np.all((odd >= 0) & (odd <= 1))
    tta = peer_unet.fit_unet(list(imgs[:2]), labels[:2], dict(params, budget=1.0, tta=True), log=lambda *a: None)
    assert tta.predict(imgs[2]).shape == (64, 64)
    with pytest.raises(ValueError, match="two classes"):
        peer_unet.fit_unet([imgs[0]], [np.ones((64, 64), np.uint8)], params, log=lambda *a: None)

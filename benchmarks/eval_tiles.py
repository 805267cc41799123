"""Accuracy on the magnetic-tile defects (Masci et al. 2013 metrics): our networks against the forest peer.

Data: ``../shared/data/magnetic_tile_train.npz`` (the training split; its test split is held back).
The images are split **by acquisition group** (seeded, stratified by category): ``--val-fraction``
of each category's groups is the validation set, the rest trains. Images whose "Uneven" mask is missing (``mask_missing``) are left
out of training and of every score. Each image is cut to its valid region (and to a multiple of
``--downsample``), then down-sampled ``--downsample`` times by block means (the paper used 4x).
Training labels at the low resolution: defect (2) where at least ``--label-frac`` of the block is
defect, background (1) where none of it is, unpainted between. Every method trains on the same
low-resolution images and labels; probabilities are up-sampled (bilinear) and scored at full
resolution against the original masks.

Metrics on the validation images, with and without the "Uneven" category:

- balanced pixel error: a seeded sample of 5K defect + 5K background pixels, at threshold 0.5 and
  at the threshold chosen on a balanced sample of the training images' labelled pixels;
- detection error: an image is "defective" when more than T pixels have probability > 0.5. T is
  chosen on validation, as in the paper. "same set" chooses T on the very images it scores
  (the paper's protocol, optimistic); "cross-fit" splits the validation groups in two halves and
  scores each half with the T chosen on the other (honest);
- per category: images, detection error (cross-fit T), defect-pixel and background-pixel error;
- for methods with an image-level head: detection error of "head probability > 0.5" (no threshold
  fitted) and of the head probability with a cross-fitted threshold.

``--pixel-label-share 0.25`` keeps pixel labels on a quarter of the training images (seeded, per
category) and gives every training image its image-level label (``is_defective``): the regime
where an image-level head may help the segmentation. ``--train-skip Uneven`` leaves the training
images of a category out (validation and every score keep them): the labels of a user who paints
the local defects but not the broad "Uneven" shading bands.

    .venv/bin/python benchmarks/eval_tiles.py --downsample 4 --budget-seconds 180 \\
        --out benchmarks/RESULTS_ACCURACY.md
    .venv/bin/python benchmarks/eval_tiles.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_common as ec  # noqa: E402
import numpy as np  # noqa: E402
import peer_unet  # noqa: E402, F401  (registers the optional PyTorch U-Net peer, kind "unet")

UNEVEN = 5


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ec.SHARED_DATA / "magnetic_tile_train.npz")
    ap.add_argument("--downsample", type=int, default=4, help="down-sampling factor (1 = full resolution)")
    ap.add_argument("--label-frac", type=float, default=0.25,
                    help="defect share of a block above which the low-resolution pixel is labelled defect")
    ap.add_argument("--val-fraction", type=float, default=0.3, help="share of the groups used for validation")
    ap.add_argument("--split-seed", type=int, nargs="+", default=[0],
                    help="seed(s) of the group split; several: every split in turn, then the mean of each row")
    ap.add_argument("--n-pixels", type=int, default=5000, help="pixels per class in the balanced sample")
    ap.add_argument("--pixel-label-share", type=float, default=1.0,
                    help="share of the training images that keep their pixel labels (seeded, stratified by "
                         "category); the others train only through image-level labels (is_defective)")
    ap.add_argument("--train-skip", nargs="+", default=[], metavar="CATEGORY",
                    help="leave the training images of these categories out (e.g. Uneven); validation keeps them")
    ap.add_argument("--rf-max-pixels", type=int, default=200_000)
    ec.add_common_args(ap)
    return ap


def split_groups(groups: np.ndarray, category: np.ndarray, val_fraction: float, seed: int):
    """Seeded split of the group ids, stratified by category (a group's most common category):
    ``(train_groups, val_groups_fold0, val_groups_fold1)``. Within each category about
    ``val_fraction`` of its groups (at least one, when it has two or more) go to validation, and
    the validation groups alternate between the two folds used for cross-fitted thresholds."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    cat_of = {g: int(np.bincount(category[groups == g]).argmax()) for g in uniq}
    train, folds = [], ([], [])
    k = 0
    for c in sorted(set(cat_of.values())):
        gs = rng.permutation([g for g in uniq if cat_of[g] == c])
        n_val = int(round(val_fraction * gs.size))
        if gs.size >= 2:
            n_val = min(max(1, n_val), gs.size - 1)
        for g in gs[:n_val]:
            folds[k % 2].append(g)
            k += 1
        train.extend(gs[n_val:])
    return set(np.asarray(train).tolist()), set(np.asarray(folds[0]).tolist()), set(np.asarray(folds[1]).tolist())


def down(img: np.ndarray, f: int) -> np.ndarray:
    """Block means ``(H/f, W/f)``."""
    h, w = img.shape
    return img.reshape(h // f, f, w // f, f).astype(np.float32).mean(axis=(1, 3))


def low_res_labels(mask: np.ndarray, f: int, frac: float) -> np.ndarray:
    m = down(mask.astype(np.float32), f)
    lab = np.zeros(m.shape, np.uint8)
    lab[m == 0] = 1
    lab[m >= frac] = 2
    return lab


def upsample(p: np.ndarray, shape) -> np.ndarray:
    if p.shape == tuple(shape):
        return p
    from skimage.transform import resize

    return resize(p, shape, order=1, mode="edge", anti_aliasing=False).astype(np.float32)


def skipped_categories(requested: list[str], names: list[str]) -> set[int]:
    """Category numbers of ``requested`` names, with or without the ``MT_`` prefix; unknown names are refused."""
    short = {n.removeprefix("MT_").lower(): c for c, n in enumerate(names)}
    unknown = [r for r in requested if r.removeprefix("MT_").lower() not in short]
    if unknown:
        raise SystemExit(f"--train-skip: unknown categories {unknown}; choose from {sorted(short)}")
    return {short[r.removeprefix("MT_").lower()] for r in requested}


def keep_pixel_labels(category: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Which training images keep their pixel labels: ``share`` of each category (at least one), seeded."""
    rng = np.random.default_rng(seed + 1)
    keep = np.zeros(category.size, bool)
    for c in np.unique(category):
        idx = rng.permutation(np.flatnonzero(category == c))
        keep[idx[: max(1, int(round(share * idx.size)))]] = True
    return keep


def _pair(row: dict, key: str) -> str:
    if f"{key}_all" not in row:
        return "–"
    return f"{row[f'{key}_all']:.3f} ({row[f'{key}_no_uneven']:.3f})"


def main(argv=None) -> list[dict]:
    """Evaluate every variant on every ``--split-seed``; returns one row per (split, variant)."""
    args = build_parser().parse_args(argv)
    with np.load(args.data) as npz:  # read every array once (NpzFile re-reads on each access)
        d = {k: npz[k] for k in npz.files}
    results, texts = [], []
    for split_seed in args.split_seed:
        rows, text = evaluate_split(args, d, split_seed)
        results += [dict(r, split_seed=split_seed) for r in rows]
        texts.append(text)
        if len(args.split_seed) > 1:  # each split's tables as soon as they are known (the report comes at the end)
            print(text, flush=True)
    if len(args.split_seed) > 1:
        texts.append(mean_over_splits(results, args.split_seed))
    ec.write_report("\n\n".join(texts), args.out)
    return results


#: (key, column) of the figures averaged over the split seeds
MEAN_COLUMNS = [
    ("bal_all", "bal. px err"), ("bal_no_uneven", "w/o Uneven"), ("bal_thr_all", "bal. px err @thr train"),
    ("bal_thr_no_uneven", "w/o Uneven"), ("det_cross_all", "detection err (cross-fit)"),
    ("det_cross_no_uneven", "w/o Uneven"), ("det_same_all", "detection err (same set)"),
    ("det_same_no_uneven", "w/o Uneven"), ("train_s", "train s"),
]


def mean_over_splits(results: list[dict], split_seeds: list[int]) -> str:
    """A table of each variant's figures: the mean over the split seeds, then each split's."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in results):
        mine = {r["split_seed"]: r for r in results if r["variant"] == variant}
        cells = []
        for key, _ in MEAN_COLUMNS:
            values = [float(mine[s][key]) for s in split_seeds]
            digits = 0 if key == "train_s" else 3
            each = " / ".join(f"{v:.{digits}f}" for v in values)
            cells.append(f"**{np.mean(values):.{digits}f}** ({each})")
        rows.append([variant, *cells])
    seeds = ", ".join(str(s) for s in split_seeds)
    return (f"### Mean over split seeds {seeds} (each split's figure in brackets, in that order)\n\n"
            + ec.markdown_table(["row", *(c for _, c in MEAN_COLUMNS)], rows))


def evaluate_split(args, d: dict, split_seed: int) -> tuple[list[dict], str]:
    """Train and score every variant on one split of the groups: the rows and their report."""
    f = int(args.downsample)
    cat = d["category"].astype(int)
    names = [str(n) for n in d["category_names"]]
    missing = d["mask_missing"].astype(bool)
    groups = d["group"]
    tr_g, v0_g, v1_g = split_groups(groups, cat, args.val_fraction, split_seed)
    skip = skipped_categories(args.train_skip, names)
    idx_train = [i for i in range(len(cat)) if groups[i] in tr_g and not missing[i] and cat[i] not in skip]
    idx_val = [i for i in range(len(cat)) if groups[i] not in tr_g and not missing[i]]
    if args.quick:
        rng = np.random.default_rng(0)
        idx_train = sorted(rng.choice(idx_train, size=min(8, len(idx_train)), replace=False).tolist())
        idx_val = sorted(rng.choice(idx_val, size=min(8, len(idx_val)), replace=False).tolist())
        if args.steps is None:
            args.steps = 4
        args.budget_seconds = min(args.budget_seconds, 10.0)
    fold = np.array([0 if groups[i] in v0_g else 1 for i in idx_val])

    def full(i):
        h, w = int(d["heights"][i]) // f * f, int(d["widths"][i]) // f * f
        return d["images"][i, :h, :w], d["masks"][i, :h, :w].astype(bool)

    x_train, y_train = [], []
    for i in idx_train:
        img, m = full(i)
        x_train.append(down(img, f))
        y_train.append(low_res_labels(m, f, args.label_frac))
    image_labels = [bool(d["is_defective"][i]) for i in idx_train]
    if args.pixel_label_share < 1:
        keep = keep_pixel_labels(cat[idx_train], args.pixel_label_share, split_seed)
        y_train = [y if k else np.zeros_like(y) for y, k in zip(y_train, keep, strict=True)]
        print(f"pixel labels kept on {int(keep.sum())} of {len(keep)} training images", flush=True)
    val_img, val_mask = zip(*(full(i) for i in idx_val), strict=True)
    cat_val = cat[idx_val]
    defective = cat_val != 0
    print(f"tiles: {len(idx_train)} training images ({len(tr_g)} groups), {len(idx_val)} validation images "
          f"({len(v0_g) + len(v1_g)} groups), down-sampled {f}x to about {x_train[0].shape}; "
          f"{sum(missing)} images without mask left out", flush=True)

    base = ec.mpf_base_from_args(args)
    variants = ec.parse_variants(args.variants, base)
    for v in variants:
        if v.kind == "rf":
            v.params.setdefault("max_pixels", args.rf_max_pixels)
            v.params["class_weight"] = v.params.get("class_weight") or "balanced"
            if args.quick:
                v.params.update(n_estimators=5, max_pixels=5000)

    results = []
    for v in variants:
        print(f"{v.name}: {v.describe()}", flush=True)
        fitted = ec.run_method(v, x_train, y_train, image_labels=image_labels)
        probs, p_image, t0 = [], [], ec.time.perf_counter()
        for img in val_img:
            small = down(img, f)
            probs.append(upsample(np.asarray(fitted.predict(small), np.float32), img.shape))
            if fitted.predict_image is not None:
                p_image.append(fitted.predict_image(small))
        pred_s = (ec.time.perf_counter() - t0) / max(1, len(val_img))
        p_image = np.array(p_image) if p_image else None
        counts = np.array([np.count_nonzero(p > 0.5) for p in probs])
        # pixel threshold chosen on a balanced sample of the training images (low resolution, their labels)
        p_tr = [np.asarray(fitted.predict(x), np.float32) for x in x_train]
        ii, ff, pos = ec.balanced_sample([y == 2 for y in y_train], args.n_pixels, np.random.default_rng(args.seed),
                                         valid=[y > 0 for y in y_train])
        thr_train = ec.choose_threshold(ec.sample_values(p_tr, ii, ff), pos)
        row = dict(variant=v.name, method=v.describe(), train_s=fitted.train_seconds, pred_s=pred_s, info=fitted.info,
                   thr_train=thr_train)
        for tag, keep in (("all", np.ones(len(idx_val), bool)), ("no_uneven", cat_val != UNEVEN)):
            sel = np.flatnonzero(keep)
            rng = np.random.default_rng(args.seed)
            ii, ff, pos = ec.balanced_sample([val_mask[k] for k in sel], args.n_pixels, rng)
            vals = ec.sample_values([probs[k] for k in sel], ii, ff)
            row[f"bal_{tag}"] = float(np.mean((vals > 0.5) != pos))
            row[f"bal_thr_{tag}"] = float(np.mean((vals > thr_train) != pos))
            row[f"npos_{tag}"] = int(pos.sum())
            t_same = ec.choose_count_threshold(counts[sel], defective[sel])
            row[f"det_same_{tag}"] = ec.detection_error(counts[sel], defective[sel], t_same)
            row[f"det_cross_{tag}"], _ = ec.crossfit_detection_error(counts[sel], defective[sel], fold[sel])
            row[f"det_all_{tag}"] = float(np.mean(~defective[sel]))  # error of "flag every image"
            if p_image is not None:
                row[f"det_head_{tag}"] = float(np.mean((p_image[sel] > 0.5) != defective[sel]))
                # the count machinery on a probability: thresholds on integer "counts" of 1e-4 steps
                scaled = np.round(p_image[sel] * 10_000)
                row[f"det_head_cross_{tag}"], _ = ec.crossfit_detection_error(scaled, defective[sel], fold[sel])
        # per category, with the cross-fit thresholds over all validation images
        per = []
        thr_fold = {}
        for fo in (0, 1):
            other = fold != fo
            thr_fold[fo] = ec.choose_count_threshold(counts[other], defective[other]) if other.any() else -0.5
        flagged = np.array([counts[k] > thr_fold[fold[k]] for k in range(len(idx_val))])
        for c in np.unique(cat_val):
            sel = np.flatnonzero(cat_val == c)
            rng = np.random.default_rng(args.seed)
            ii, ff, pos = ec.balanced_sample([val_mask[k] for k in sel], args.n_pixels, rng)
            vals = ec.sample_values([probs[k] for k in sel], ii, ff)
            wrong = (vals > 0.5) != pos
            per.append(dict(category=names[c], n=len(sel),
                            det=float(np.mean(flagged[sel] != defective[sel])),
                            defect_err=float(wrong[pos].mean()) if pos.any() else float("nan"),
                            background_err=float(wrong[~pos].mean()) if (~pos).any() else float("nan"),
                            defect_share=float(np.mean([val_mask[k].mean() for k in sel]))))
        row["per_category"] = per
        results.append(row)
        if p_image is not None:
            print(f"    image head: detection err p>0.5 {row['det_head_all']:.3f} ({row['det_head_no_uneven']:.3f} "
                  f"w/o Uneven), cross-fit {row['det_head_cross_all']:.3f} ({row['det_head_cross_no_uneven']:.3f})",
                  flush=True)
        print(f"    balanced px err {row['bal_all']:.3f} (no Uneven {row['bal_no_uneven']:.3f}), at train thr "
              f"{thr_train:.2f}: {row['bal_thr_all']:.3f} ({row['bal_thr_no_uneven']:.3f}); detection "
              f"cross-fit {row['det_cross_all']:.3f} ({row['det_cross_no_uneven']:.3f}), same-set "
              f"{row['det_same_all']:.3f}; train {row['train_s']:.0f}s, predict {pred_s:.3f}s/image; {fitted.info}",
              flush=True)

    headers = ["row", "bal. px err", "bal. px err w/o Uneven", "bal. px err @thr train (thr)", "w/o Uneven",
               "detection err (cross-fit)",
               "w/o Uneven", "detection err (same set)", "w/o Uneven", "flag-all err",
               "head det. err p>0.5 (w/o Uneven)", "head det. err cross-fit (w/o Uneven)", "train s",
               "predict s/image", "method, steps"]
    rows = []
    for r in results:
        steps = r["info"].get("steps_done")
        extra = r["method"] + (f"; {steps}/{r['info']['steps_planned']} steps" if steps is not None
                               else f"; {r['info'].get('train_pixels')} train px")
        rows.append([r["variant"], r["bal_all"], r["bal_no_uneven"], f"{r['bal_thr_all']:.3f} ({r['thr_train']:.2f})",
                     r["bal_thr_no_uneven"], r["det_cross_all"], r["det_cross_no_uneven"],
                     r["det_same_all"], r["det_same_no_uneven"], r["det_all_all"],
                     _pair(r, "det_head"), _pair(r, "det_head_cross"), f"{r['train_s']:.0f}",
                     f"{r['pred_s']:.3f}", extra])
    text = ec.report_header(
        f"Magnetic tiles: {len(idx_train)} train / {len(idx_val)} validation images, split by group, "
        f"down-sampled {f}x, split seed {split_seed}"
        + (f", pixel labels on {args.pixel_label_share:.0%} of the training images" if args.pixel_label_share < 1 else "")
        + (f", training without {', '.join(names[c] for c in sorted(skip))}" if skip else "")
        + (" (QUICK)" if args.quick else "")) + "\n" + ec.markdown_table(headers, rows)
    cat_rows = []
    for r in results:
        for pc in r["per_category"]:
            cat_rows.append([r["variant"], pc["category"], pc["n"], pc["det"], pc["defect_err"], pc["background_err"],
                             pc["defect_share"]])
    text += "\n\nPer category (validation images; detection with the cross-fit threshold):\n\n" + ec.markdown_table(
        ["row", "category", "images", "detection err", "defect-pixel err", "background-pixel err", "defect share"], cat_rows)
    return results, text


if __name__ == "__main__":
    main()

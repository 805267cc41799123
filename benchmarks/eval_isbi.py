"""Accuracy on ISBI 2012 EM membranes: our networks against the random-forest peer, same split, same labels.

Trains on slices 0-14 of ``../shared/data/isbi2012_train.npz`` and scores on slices 15-19 (slices
20-29 are held back outside this repository). Two label regimes:

- ``dense``: every pixel of the training slices is labelled (cell = 1, membrane = 2);
- ``scribbles``: seeded thin strokes (``eval_common.scribbles``: skeleton pieces of each class,
  2 px wide, at least 2 px from the other class, about ``--scribble-px`` pixels per class and slice).

Metrics on the test slices (membrane = positive): pixel error at threshold 0.5 (and, beside it, on
the training slices' dense truth: the gap to it is what generalisation costs), at the threshold
chosen on the training slices' *labels of the regime* (scribbles or dense; "thr lab") and at the one
chosen on the training slices' dense truth ("thr dense"), F1 per class at 0.5, adapted Rand error at
0.5 (cell components, see ``eval_common.adapted_rand``), the predicted membrane share, training time
and prediction time per 512x512 slice.

    .venv/bin/python benchmarks/eval_isbi.py --regimes scribbles --budget-seconds 210 \\
        --out benchmarks/RESULTS_ACCURACY.md
    .venv/bin/python benchmarks/eval_isbi.py --quick            # smoke test, ~20 s

Rows: ``--variants mpf rf relu:activation=relu steel:preset=steel,crop=128`` (see
``eval_common.parse_variants``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_common as ec  # noqa: E402
import numpy as np  # noqa: E402
import peer_unet  # noqa: E402, F401  (registers the optional PyTorch U-Net peer, kind "unet")


def parse_slices(text: str) -> slice:
    a, _, b = text.partition(":")
    return slice(int(a) if a else None, int(b) if b else None)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ec.SHARED_DATA / "isbi2012_train.npz")
    ap.add_argument("--regimes", nargs="+", default=["scribbles", "dense"], choices=["scribbles", "dense"])
    ap.add_argument("--train-slices", default="0:15")
    ap.add_argument("--test-slices", default="15:20")
    ap.add_argument("--scribble-px", type=int, default=2000, help="painted pixels per class and slice")
    ap.add_argument("--scribble-width", type=int, default=2, choices=[1, 2])
    ap.add_argument("--rf-max-pixels", type=int, default=200_000, help="cap on the forest's training pixels")
    ec.add_common_args(ap)
    return ap


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    data = np.load(args.data)
    images, truth = data["images"], data["labels"].astype(bool)
    train_idx = np.arange(len(images))[parse_slices(args.train_slices)]
    test_idx = np.arange(len(images))[parse_slices(args.test_slices)]
    if args.quick:
        train_idx, test_idx = train_idx[:2], test_idx[:1]
        images, truth = images[:, :128, :128], truth[:, :128, :128]
        if args.steps is None:
            args.steps = 4
        args.budget_seconds = min(args.budget_seconds, 10.0)
        args.crop = min(args.crop or 64, 64)
    base = ec.mpf_base_from_args(args)
    variants = ec.parse_variants(args.variants, base)
    for v in variants:
        if v.kind == "rf":
            v.params.setdefault("max_pixels", args.rf_max_pixels)
            if args.quick:
                v.params.update(n_estimators=5, max_pixels=5000)
    x_train = [images[i].astype(np.float32) for i in train_idx]
    x_test = [images[i].astype(np.float32) for i in test_idx]
    t_train = [truth[i] for i in train_idx]
    t_test = [truth[i] for i in test_idx]
    print(f"ISBI: train slices {train_idx.tolist()}, test slices {test_idx.tolist()}, images {images.shape[1:]}")

    results = []
    for regime in args.regimes:
        if regime == "dense":
            labels = [t.astype(np.uint8) + 1 for t in t_train]
        else:
            labels = [ec.scribbles(t.astype(np.uint8) + 1, np.random.default_rng([args.seed, int(i)]),
                                   px_per_class=args.scribble_px, width=args.scribble_width)
                      for t, i in zip(t_train, train_idx, strict=True)]
        n_lab = [int(np.count_nonzero(lab == c)) for c in (1, 2) for lab in labels]
        print(f"[{regime}] painted pixels per slice: cell {np.mean(n_lab[:len(labels)]):.0f}, "
              f"membrane {np.mean(n_lab[len(labels):]):.0f}")
        for v in variants:
            print(f"[{regime}] {v.name}: {v.describe()}", flush=True)
            fitted = ec.run_method(v, x_train, labels)
            p_test, pred_s = ec.timed_predict(fitted, x_test)
            p_train, _ = ec.timed_predict(fitted, x_train)
            thr_lab = ec.choose_threshold(p_train, [lab == 2 for lab in labels], [lab > 0 for lab in labels])
            thr_dense = ec.choose_threshold(p_train, t_train)
            stack_p, stack_t = np.stack(p_test), np.stack(t_test)
            pred05 = stack_p > 0.5
            f1_cell, f1_mem = ec.f1_per_class(pred05, stack_t)
            rand = float(np.mean([ec.adapted_rand(p > 0.5, t) for p, t in zip(p_test, t_test, strict=True)]))
            row = dict(
                regime=regime, variant=v.name, method=v.describe(),
                err05=ec.pixel_error(stack_p, stack_t, 0.5),
                err_train=ec.pixel_error(np.stack(p_train), np.stack(t_train), 0.5),
                thr_lab=thr_lab, err_lab=ec.pixel_error(stack_p, stack_t, thr_lab),
                thr_dense=thr_dense, err_dense=ec.pixel_error(stack_p, stack_t, thr_dense),
                f1_cell=f1_cell, f1_membrane=f1_mem, rand=rand,
                membrane_share=float(pred05.mean()), true_share=float(stack_t.mean()),
                train_s=fitted.train_seconds, pred_s=pred_s, info=fitted.info,
            )
            results.append(row)
            print(f"    err@0.5 {row['err05']:.4f} (train slices {row['err_train']:.4f})  err@thr_lab({thr_lab:.2f}) {row['err_lab']:.4f}  "
                  f"err@thr_dense({thr_dense:.2f}) {row['err_dense']:.4f}  rand {rand:.3f}  "
                  f"train {fitted.train_seconds:.0f}s  pred {pred_s:.2f}s/slice  {fitted.info}", flush=True)

    headers = ["regime", "row", "px err @0.5", "train slices @0.5", "px err @thr lab (thr)", "px err @thr dense (thr)",
               "F1 cell", "F1 membrane", "adapted Rand", "membrane share (true)", "train s", "predict s/slice", "method, steps"]
    rows = []
    for r in results:
        steps = r["info"].get("steps_done")
        extra = f"{r['method']}" + (f"; {steps}/{r['info']['steps_planned']} steps" if steps is not None else
                                    f"; {r['info'].get('train_pixels')} train px")
        rows.append([r["regime"], r["variant"], r["err05"], r["err_train"], f"{r['err_lab']:.3f} ({r['thr_lab']:.2f})",
                     f"{r['err_dense']:.3f} ({r['thr_dense']:.2f})", r["f1_cell"], r["f1_membrane"], r["rand"],
                     f"{r['membrane_share']:.3f} ({r['true_share']:.3f})", f"{r['train_s']:.0f}", f"{r['pred_s']:.2f}", extra])
    quick = " (QUICK)" if args.quick else ""
    title = f"ISBI 2012 membranes: train slices {args.train_slices}, test slices {args.test_slices}{quick}"
    text = ec.report_header(title) + "\n" + ec.markdown_table(headers, rows)
    ec.write_report(text, args.out)
    return results


if __name__ == "__main__":
    main()

"""The loop benchmark's report (benchmarks/loop.py): means over tasks, the markdown tables, the
answers to the issue's questions and the plot, from the per-round records (also of runs made apart)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_common as ec  # noqa: E402


def read_records(paths: list[Path]) -> list[dict]:
    """The records of files written by ``--json``, one list; a clear message if one is unreadable."""
    records = []
    for path in paths:
        try:
            part = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--report-from {path}: not a records file written by --json ({exc})") from None
        if not isinstance(part, list) or not all(isinstance(r, dict) and "dataset" in r and "error" in r for r in part):
            raise SystemExit(f"--report-from {path}: not a records file written by --json (a list of round records)")
        records += part
    if not records:
        raise SystemExit(f"--report-from {' '.join(map(str, paths))}: no records in the file(s)")
    fields = ("dataset", "task", "seed", "method", "place", "placed_by", "round", "setup")
    keys = [tuple(r.get(f) for f in fields) for r in records]
    if len(set(keys)) < len(keys):
        raise SystemExit(f"--report-from {' '.join(map(str, paths))}: the same task's round is in the files twice "
                         "(a run given twice?); each would count as a task of its own")
    return records


def _mean(values) -> float:
    """Mean of the finite values (NaN when there are none)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(records: list[dict]) -> list[dict]:
    """Means over tasks per (data set, method, placement, placed by, round)."""
    fields = ("dataset", "method", "place", "placed_by", "round")
    keys = sorted({tuple(r[f] for f in fields) for r in records}, key=lambda k: (k[0], k[2], k[3], k[1], k[4]))
    out = []
    for key in keys:
        rows = [r for r in records if tuple(r[f] for f in fields) == key]
        mean = {k: _mean([r.get(k) for r in rows]) for k in rows[0]
                if isinstance(rows[0][k], (int, float)) and k not in ("round", "seed")}
        mean.update(zip(fields, key, strict=True), n=len(rows))
        out.append(mean)
    return out


def _whose(by: str) -> str:
    """Whose preview placed the strokes, in words."""
    return {"each": "each method's own", "ours": "our network's", "rf": "the forest's"}.get(by, f"{by}'s")


def report(summary: list[dict], setups: list[str], seeds: list[int]) -> str:
    """Markdown: per data set and placement, one table of the means over tasks per method and round,
    then the issue's questions answered (:func:`verdicts`)."""
    tasks = {d: max(int(s["n"]) for s in summary if s["dataset"] == d and s["round"] == 1)
             for d in sorted({s["dataset"] for s in summary})}
    lines = [ec.report_header("Loop benchmark: simulated user, ours vs the forest on the same strokes"),
             "- tasks per data set (means over them): " + ", ".join(f"{d} {n}" for d, n in tasks.items())
             + f"; seed(s) {', '.join(map(str, seeds))}",
             *(f"- {text}" for text in setups), ""]
    for dataset in sorted({s["dataset"] for s in summary}):
        for place, by in sorted({(s["place"], s["placed_by"]) for s in summary if s["dataset"] == dataset}):
            rows = [s for s in summary if (s["dataset"], s["place"], s["placed_by"]) == (dataset, place, by)]
            head = ["method", "round", "painted px", "error", "trivial", "other images", "other trivial",
                    "pred / true share", "F1 fg", "s / round", "first preview s"]
            if dataset == "tiles":
                head += ["false flags", "missed flags"]
            table = []
            for s in rows:
                row = [s["method"], s["round"], int(s["painted"]), s["error"], s["trivial"], s["other_error"],
                       s["other_trivial"], f"{s['pred_share']:.2f} / {s['true_share']:.2f}",
                       s.get(f"f1_{int(round(s.get('n_classes', 2)))}", s.get("f1_2")), s["seconds"],
                       s.get("first_preview")]
                if dataset == "tiles":
                    row += [s.get("false_flags"), s.get("missed_flags")]
                table.append(row)
            whose = _whose(by)
            lines += [f"### {dataset}, strokes placed where {whose} preview is "
                      f"{'wrong' if place == 'error' else 'least certain'} ({int(rows[0]['n'])} tasks)",
                      "", ec.markdown_table(head, table), ""]
    return "\n".join(lines + ["### In short", "", *verdicts(summary), ""])


def verdicts(summary: list[dict], ours: str = "ours", peer: str = "rf") -> list[str]:
    """The issue's questions, answered from the means: round 1 against the trivial answer, later
    rounds against the forest, and how many strokes the uncertainty-placed rounds need to reach the
    error of the last error-placed round (for every choice of who placed the strokes)."""
    out = []
    for dataset in sorted({s["dataset"] for s in summary}):
        for by in sorted({s["placed_by"] for s in summary if s["dataset"] == dataset}):
            def row(method, place, r, dataset=dataset, by=by):
                return next((s for s in summary if (s["dataset"], s["method"], s["place"], s["placed_by"], s["round"])
                             == (dataset, method, place, by, r)), None)

            whose = _whose(by) + " preview"
            first = row(ours, "error", 1) or row(ours, "uncertain", 1)
            if first is not None:
                out.append(f"- {dataset}, round 1: ours {first['error']:.3f} on the painted image "
                           f"({first['other_error']:.3f} on the others) against the trivial answer's "
                           f"{first['trivial']:.3f} ({first['other_trivial']:.3f}); first preview "
                           f"{first.get('first_preview', float('nan')):.2f} s after Train")
            for place in ("error", "uncertain"):
                later = [(row(ours, place, r), row(peer, place, r)) for r in range(2, 100)]
                later = [(a, b) for a, b in later if a is not None and b is not None]
                if later:
                    wins = sum(a["error"] < b["error"] for a, b in later)
                    where = "wrong" if place == "error" else "least certain"
                    out.append(f"- {dataset}, strokes where {whose} is {where}, rounds 2-{later[-1][0]['round']}: "
                               f"ours below the forest in {wins} of {len(later)} rounds on the painted image, "
                               f"{sum(a['other_error'] < b['other_error'] for a, b in later)} on the others; "
                               f"mean gap {np.mean([a['error'] - b['error'] for a, b in later]):+.3f} (painted), "
                               f"{np.mean([a['other_error'] - b['other_error'] for a, b in later]):+.3f} (others); "
                               "gap per round (painted) " + " / ".join(f"{a['error'] - b['error']:+.3f}" for a, b in later))
            rounds = sorted(s["round"] for s in summary
                            if (s["dataset"], s["method"], s["place"], s["placed_by"]) == (dataset, ours, "error", by))
            unsure = sorted((s for s in summary if (s["dataset"], s["method"], s["place"], s["placed_by"])
                             == (dataset, ours, "uncertain", by)), key=lambda s: s["round"])
            if rounds and unsure:
                goal = row(ours, "error", rounds[-1])
                hit = next((s for s in unsure if s["error"] <= goal["error"]), None)
                out.append(f"- {dataset}, strokes by {whose}: error-placed strokes reach {goal['error']:.3f} after "
                           f"round {goal['round']} ({goal['painted']:.0f} px painted); uncertainty-placed strokes "
                           + (f"reach it in round {hit['round']} ({hit['painted']:.0f} px)" if hit else
                              f"do not within {len(unsure)} rounds (best {min(s['error'] for s in unsure):.3f})"))
    return out


def plot(summary: list[dict], path: Path) -> None:
    """Error vs round and vs cumulative seconds, one panel pair per data set and per preview that
    placed the strokes; a method keeps its colour and a placement its line style throughout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(s["dataset"], s["placed_by"]) for s in summary})
    methods = sorted({s["method"] for s in summary})
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.4 * len(panels)), squeeze=False)
    for row, (dataset, by) in zip(axes, panels, strict=True):
        for place in ("error", "uncertain"):
            for method in methods:
                pts = [s for s in summary if (s["dataset"], s["method"], s["place"], s["placed_by"])
                       == (dataset, method, place, by)]
                if not pts:
                    continue
                label = method + ("" if place == "error" else " (least certain)")
                style = dict(marker="o", color=f"C{methods.index(method)}", ls="-" if place == "error" else "--",
                             label=label)
                err = [s["error"] for s in pts]
                row[0].plot([s["round"] for s in pts], err, **style)
                row[1].plot(np.cumsum([s["seconds"] for s in pts]), err, **style)
        trivial = [s["trivial"] for s in summary if s["dataset"] == dataset and s["round"] == 1]
        for ax in row:
            ax.axhline(float(np.mean(trivial)), color="grey", ls=":", label="trivial (round 1)")
            ax.set_ylabel("pixel error, unpainted pixels")
            ax.set_title(f"{dataset}, strokes on {_whose(by)} preview", fontsize=10)
        row[0].set_xlabel("round")
        row[1].set_xlabel("seconds since the first Train")
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

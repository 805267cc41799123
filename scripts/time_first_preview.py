"""Time from pressing Train to the first probability preview, in the real widget (run under Xvfb).

    xvfb-run -a .venv/bin/python scripts/time_first_preview.py [--size 512]

Opens the EM-like sample (scaled to ``--size``), docks the trainer with its defaults (the default
preset, preview every 10 steps), waits ``--paint-seconds`` (the time a user spends painting, while
the widget prepares the engine in the background) and prints, for two runs in a row, the seconds
from the Train click to the first preview layer and the seconds per training step, and the longest
gap between two event-loop turns (a frozen UI). For a first use, give an empty Numba cache:

    NUMBA_CACHE_DIR=$(mktemp -d) xvfb-run -a .venv/bin/python scripts/time_first_preview.py --paint-seconds 20
"""

from __future__ import annotations

import argparse
import time

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_mpf._qt.trainer_widget import TrainerWidget
from napari_mpf._sample_data import membrane_em


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preset", default=None, help="network preset (default: the widget's)")
    parser.add_argument("--paint-seconds", type=float, default=0.0,
                        help="seconds between opening the widget and pressing Train")
    args = parser.parse_args()
    image, strokes = membrane_em((args.size, args.size))
    viewer = napari.Viewer(show=False)
    viewer.add_image(image, name="em")
    viewer.add_labels(strokes, name="em labels")
    widget = TrainerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.steps_spin.setValue(args.steps)
    widget.preview_spin.setValue(1)
    if args.preset:
        widget.spec_combo.setCurrentText(args.preset)
    app = QApplication.instance()
    gaps = [0.0]

    def spin(until) -> None:
        last = time.perf_counter()
        while not until():
            app.processEvents()
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last)
            last = now
            time.sleep(0.002)

    opened = time.perf_counter()
    spin(lambda: time.perf_counter() - opened >= args.paint_seconds)
    print(f"painting {args.paint_seconds:.0f} s; engine ready: {widget.engine_ready} "
          f"(warm-up {widget.timings.get('warm_up', float('nan')):.1f} s); longest UI gap while painting "
          f"{gaps[0]:.2f} s")
    gaps[0] = 0.0
    for run in ("first (Numba cache as found)", "second"):
        widget.timings.pop("first_preview", None)
        t0 = time.perf_counter()
        widget.train()
        spin(lambda: widget.timings.get("first_preview") is not None)
        first = time.perf_counter() - t0
        spin(lambda: widget._train_worker is None and widget._predict_worker is None)
        total = time.perf_counter() - t0
        print(f"{run}: Train -> first preview {first:.2f} s; {args.steps} steps in {total:.1f} s "
              f"({total / args.steps:.2f} s/step with a preview every step), {args.size}x{args.size}, "
              f"{widget.spec_combo.currentText()}; longest UI gap since painting {gaps[0]:.2f} s")
    viewer.close()
    assert np.isfinite(total)


if __name__ == "__main__":
    main()

"""The docked trainer: pick image and strokes, train in the background, preview, count, export.

Long work runs as :class:`~napari_mpf._qt.jobs.Jobs` (napari thread workers): training wraps the
engine's ``Trainer.run()`` generator, prediction wraps :meth:`Controller.predict_iter`, "Predict to
zarr" wraps :meth:`ZarrPrediction.iter_run`. Everything that touches layers happens in the GUI thread, in
the workers' signal handlers. Large or dask-backed images get lazy (dask) output layers instead,
computed by napari as slices are shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QWidget

from .._layer_style import class_colormap, class_names_from_features
from ..engine.post.uncertainty import unlearned_share
from ..engine.training.warmup import prepare
from .controller import Controller, TrainingSet, TrainSettings, UserError
from .form import SMALL_SPEC, TrainerForm
from .jobs import Jobs
from .model_jobs import ModelJobs

__all__ = ["TrainerWidget", "SMALL_SPEC"]



@dataclass
class _Run:
    """One training run in flight."""

    image_layer: Image
    tset: TrainingSet
    trainer: object
    started: float
    live: bool = False
    stop_reason: str | None = None
    last_preview: float = 0.0
    first_preview: float | None = None
    losses: list[float] = field(default_factory=list)
    step_offset: int = 0


def warm_labels_colouring() -> None:
    """Make a small Labels layer (no viewer) with the classes' colours: napari compiles its label
    colouring (Numba typed dicts, not cached on disk) in the thread that first needs it, which froze
    the viewer 2.6 s when the first segmentation layer was added."""
    Labels(np.zeros((8, 8), np.uint8), colormap=class_colormap(2))


class TrainerWidget(TrainerForm, ModelJobs, QWidget):
    """Train a max-pooling-fragment CNN on painted strokes, in napari.

    Signals (for scripts and tests): ``training_finished`` after a run ends (done, stopped or
    failed), ``prediction_finished`` after a prediction worker ends, ``preview_updated`` when a
    training preview reached the probability layers.
    """

    training_finished = Signal()
    prediction_finished = Signal()
    preview_updated = Signal()
    #: seconds between time-based preview requests during training
    preview_interval = 1.0
    #: compile the engine's kernels in a background thread when the widget opens (first use only
    #: takes long; tests that do not need it turn it off)
    warm_up_on_open = True

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.controller = Controller(napari_viewer)
        self.jobs = Jobs()  # outside the widget, so that its ``destroyed`` can stop them
        self.destroyed.connect(self.jobs.stop_all)
        self._run: _Run | None = None
        self._watched_labels: Labels | None = None
        self._live_pending = False
        self.messages: list[tuple[str, str]] = []
        self.timings: dict[str, float] = {}
        self.last_hint = None
        self._build()
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(1000)
        self._slice_timer = QTimer(self)
        self._slice_timer.setSingleShot(True)
        self._slice_timer.setInterval(300)
        self._connect()
        self._on_image_changed(self.image_combo.layer())
        self._update_spec_info()
        self._show_model(None)
        self.engine_ready = not self.warm_up_on_open
        self._train_pending = False
        self.steps_spin.valueChanged.connect(self._show_idle_progress)
        self._show_idle_progress()
        if self.warm_up_on_open:
            self._warm_up()

    def _warm_up(self) -> None:
        """Compile the default network's kernels in a worker while the user paints; Train pressed
        meanwhile starts when they are ready."""
        self.progress.setRange(0, 0)  # a busy bar
        self._say("Preparing the engine (first use only: compiling; you can paint meanwhile)…", notify=False)

        def done(seconds) -> None:
            self.timings["warm_up"] = float(seconds)
            self._engine_ready_now(f"Engine ready ({seconds:.1f} s to prepare).")

        self.jobs.start("warm_up", prepare, TrainSettings.spec, on_return=done,
                        on_error=lambda exc: self._engine_ready_now(f"Could not prepare the engine ahead: {exc}"))
        self.jobs.start("warm_layers", warm_labels_colouring)

    def _engine_ready_now(self, text: str) -> None:
        self.engine_ready = True
        self._show_idle_progress()
        if self._train_pending:
            self._train_pending = False
            self.train()
        else:
            self._say(text, notify=False)

    def _show_idle_progress(self, *_) -> None:
        """Before a run the bar reads 0 / the steps Train will take."""
        if self._run is None and self.engine_ready:
            self.progress.setRange(0, self.steps_spin.value())
            self.progress.setValue(0)

    @property
    def _train_worker(self):
        return self.jobs.get("train")

    @property
    def _predict_worker(self):
        return self.jobs.get("predict")

    def _connect(self) -> None:
        self.image_combo.layer_changed.connect(self._on_image_changed)
        self.labels_combo.layer_changed.connect(self._on_labels_changed)
        self.new_labels_btn.clicked.connect(self.new_labels)
        self.spec_combo.currentTextChanged.connect(self._update_spec_info)
        self.filters_combo.currentTextChanged.connect(self._update_spec_info)
        self.context_combo.currentTextChanged.connect(self._update_spec_info)
        self.classes_edit.editingFinished.connect(self._update_spec_info)
        self.train_btn.clicked.connect(self.train)
        self.stop_btn.clicked.connect(self.stop)
        self.predict_btn.clicked.connect(self.predict)
        self.apply_btn.clicked.connect(self.predict)
        self.count_btn.clicked.connect(self.count)
        self.zarr_btn.clicked.connect(self.zarr_dialog)
        self.superpixel_check.toggled.connect(self._update_head_controls)
        self.image_head_check.toggled.connect(self._update_head_controls)
        self.refine_check.toggled.connect(self._update_head_controls)
        self._update_head_controls()
        self.save_btn.clicked.connect(self.export_dialog)
        self.load_btn.clicked.connect(self.import_dialog)
        self._live_timer.timeout.connect(self._live_retrain)
        self._slice_timer.timeout.connect(self._predict_current_slice)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.dims.events.current_step.connect(self._on_slice_changed)

    # ----------------------------------------------------------------- messages
    def _say(self, text: str, level: str = "info", notify: bool = True) -> None:
        """Show ``text`` in the status line and (unless ``notify`` is False) as a napari notification."""
        self.messages.append((level, text))
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6b6b;" if level == "error" else "")
        if notify:
            {"error": show_error, "warning": show_warning}.get(level, show_info)(text)

    def _error(self, text: str, notify: bool = True) -> None:
        self._say(text, "error", notify)

    # ----------------------------------------------------------------- layers
    def _on_image_changed(self, layer) -> None:
        if layer is not None:
            paired = self.controller.paired_labels(layer)
            if isinstance(paired, Labels):
                self.labels_combo.set_layer(paired)
        self._on_labels_changed(self.labels_combo.layer())

    def _on_labels_changed(self, layer) -> None:
        """Watch the strokes layer (live mode) and show its class names."""
        self._watch_labels(layer)
        if isinstance(layer, Labels):
            names = class_names_from_features(layer.features) or layer.metadata.get("class_names")
            if names and len(names) >= 2:
                self.classes_edit.setText(", ".join(str(n) for n in names))
        self._update_spec_info()

    def _on_layer_inserted(self, event) -> None:
        """A new '<image> labels' layer for the chosen image becomes the strokes layer."""
        layer, image = event.value, self.image_combo.layer()
        if isinstance(layer, Labels) and image is not None and layer.name == f"{image.name} labels":
            self.labels_combo.set_layer(layer)

    def _watch_labels(self, layer) -> None:
        old = self._watched_labels
        if old is layer:
            return
        if old is not None:
            for ev in (old.events.paint, old.events.data):
                try:
                    ev.disconnect(self._on_labels_edited)
                except (TypeError, ValueError, RuntimeError):
                    pass
        self._watched_labels = layer
        if layer is not None:
            layer.events.paint.connect(self._on_labels_edited)
            layer.events.data.connect(self._on_labels_edited)

    def _on_labels_edited(self, event=None) -> None:
        if self.live_check.isChecked():
            self._live_timer.start()

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self._watched_labels:
            self._watch_labels(None)
        run = self._run
        if run is not None and self.jobs.running("train"):
            if layer is run.image_layer or any(layer is ly for ly in run.tset.layers):
                run.stop_reason = f"layer '{layer.name}' was removed"
                self.jobs.stop("train")
                if len(self.viewer.layers):
                    self._say(f"Training stopped because layer '{layer.name}' was removed; the last good weights are kept.")
        self.jobs.stop_for_layer(layer)

    def _on_slice_changed(self, event=None) -> None:
        if self.live_check.isChecked() and self.controller.model is not None:
            self._slice_timer.start()
        if self._counted is not None and self._counted[0] in self.viewer.layers:
            self.count_label.setText(self._count_text(*self._counted))  # the image head's p is per slice

    def _predict_current_slice(self) -> None:
        layer = self.image_combo.layer()
        if self.jobs.running("train", "predict") or layer is None:
            return
        if self.controller.is_lazy(layer):
            return  # its lazy layers compute the shown slice themselves
        try:
            z = self.controller.current_slice(layer)
        except UserError:
            return
        if z is not None:
            self.predict(layer, [z], notify=False)

    def new_labels(self) -> Labels | None:
        """Add (or select) ``'<image> labels'`` with the right shape and the named classes."""
        try:
            layer = self.controller.create_labels(self.image_combo.layer(), self.class_names())
        except UserError as exc:
            self._error(str(exc))
            return None
        self.labels_combo.set_layer(layer)
        self._say(f"Paint strokes in '{layer.name}': 1 = {self.class_names()[0]}, 2 = {self.class_names()[1]}.", notify=False)
        return layer

    # ----------------------------------------------------------------- training
    @property
    def is_training(self) -> bool:
        return self.jobs.running("train")

    def train(self, *_, steps: int | None = None, live: bool = False):
        """Start training in a worker; returns the worker (None if not started)."""
        started = time.perf_counter()
        if not self.engine_ready:
            self._train_pending = True
            self._say("Training starts as soon as the engine is ready (first use only)…", notify=False)
            return None
        if self.jobs.running("train"):
            self._say("Training is already running; press Stop first.", "warning", notify=not live)
            return None
        try:
            settings = self.settings()
            if steps is not None:
                settings.steps = int(steps)
                settings.continue_training = True
            image = self.image_combo.layer()
            labels = self.labels_combo.layer()
            tset = self.controller.gather(image, labels, self.pairs_check.isChecked(), settings.class_names)
            trainer = self.controller.make_trainer(tset, settings)
        except UserError as exc:
            self._error(str(exc), notify=not live)
            return None
        for note in tset.notes:
            self._say(note.capitalize(), "warning")
        self._run = _Run(image, tset, trainer, started, live=live, last_preview=started)
        trainer.request_preview()
        continuing = bool(getattr(self.controller, "_continued", False))
        offset = int(trainer.model.provenance.get("steps", 0)) if continuing else 0
        self._run.step_offset = offset  # a continued run counts on from the steps already done
        if not offset:
            self.loss_plot.clear()
        self.progress.setRange(offset, offset + int(trainer.config.steps))
        self.progress.setValue(offset)
        n = len(tset.images)
        what = f"{n} slice(s)/image(s), {tset.n_painted} painted pixels"
        verb = "continuing" if continuing else "new network"
        self._say(f"Training ({verb}) on {what}…", notify=False)
        worker = self.jobs.start("train", trainer.run, on_item=self._on_progress, on_error=self._on_train_error,
                                 on_done=self._on_train_finished, layer=image)
        self._set_busy(True)
        return worker

    def stop(self) -> None:
        """Stop training between two steps (the last good weights are kept); also stops prediction."""
        if self._run is not None and self._run.stop_reason is None and self.jobs.running("train"):
            self._run.stop_reason = "stopped"
        self.jobs.stop("train", "predict")

    def _set_busy(self, busy: bool) -> None:
        self.train_btn.setEnabled(not busy)
        self.stop_btn.setEnabled(busy or self.jobs.running("predict"))

    def _on_progress(self, p) -> None:
        run = self._run
        if run is None or self.jobs.aborted("train"):
            return
        step = run.step_offset + int(p.step)
        self.progress.setMaximum(run.step_offset + int(p.n_steps))
        self.progress.setValue(step)
        self.loss_plot.add(step, p.loss)
        run.losses.append(float(p.loss))
        now = time.perf_counter()
        if p.probabilities is not None:
            _, z = run.tset.origins[run.trainer.config.preview_index]
            try:
                self.controller.show_probabilities(run.image_layer, z, p.probabilities, run.tset.class_names)
            except UserError as exc:
                run.stop_reason = "error"
                self.jobs.stop("train")
                self._error(str(exc))
                return
            self._show_hint(run.image_layer, z, p.probabilities,
                            run.tset.labels[run.trainer.config.preview_index])
            if run.first_preview is None:
                run.first_preview = now - run.started
                self.timings["first_preview"] = run.first_preview
            run.last_preview = now
            self.preview_updated.emit()
        elif now - run.last_preview > self.preview_interval:
            run.trainer.request_preview()
            run.last_preview = now

    def _painted(self, image_layer, z: int | None):
        """The strokes of ``image_layer`` (slice ``z``) when the chosen Labels layer holds them, else None."""
        labels = self.labels_combo.layer()
        if labels is None or image_layer is not self.image_combo.layer():
            return None
        data = labels.data if z is None else labels.data[z]
        return data if data.shape == self.controller.image_info(image_layer).shape else None

    def _show_hint(self, image_layer, z: int | None, proba, painted) -> None:
        """Update the uncertainty layer and the line saying where the model is least certain and
        how much of the painted pixels the preview still gets wrong."""
        where = self.controller.show_uncertainty(image_layer, z, proba, painted)
        if where is None:
            self.hint_label.setText("")
            return
        slice_text = "" if z is None else f" of slice {z}"
        missed = None if painted is None else unlearned_share(proba, painted)
        missed_text = "" if missed is None else f" The preview still disagrees with {missed:.0%} of the painted pixels."
        self.hint_label.setText(
            f"Least certain: around row {where.y}, column {where.x}{slice_text} "
            f"({where.unsure_share:.0%} of the image unsure). Strokes there help most.{missed_text}"
        )
        self.last_hint = where

    def _on_train_error(self, exc: Exception) -> None:
        # napari's worker already shows the exception as a notification
        if self._run is not None:
            self._run.stop_reason = "error"
        self._error(f"Training failed: {exc}", notify=False)

    def _on_train_finished(self) -> None:
        run = self._run
        self._run = None
        self._set_busy(False)
        if run is None:
            return
        try:
            self._finish_run(run)
        finally:
            self.training_finished.emit()

    def _finish_run(self, run: _Run) -> None:
        steps_done = len(run.losses)
        if run.stop_reason != "error" or steps_done:
            self.controller.adopt(run.trainer.model, run.tset)
            self._show_model(self.controller.model)
        self.timings["last_run"] = time.perf_counter() - run.started
        if run.stop_reason not in (None, "stopped"):
            return  # a layer in use was removed, or an error: leave the layers alone
        loss = f", loss {run.losses[-1]:.4g}" if run.losses else ""
        if run.stop_reason == "stopped":
            self._say(f"Stopped after {steps_done} step(s){loss}; the last good weights are kept.", notify=False)
        else:
            self._say(f"Trained {steps_done} step(s) in {self.timings['last_run']:.1f} s{loss}.", notify=False)
        if run.image_layer in self.viewer.layers:
            try:
                z = self.controller.current_slice(run.image_layer)
            except UserError:
                z = None
            if z is not None:
                self._say(self.status.text() + f" Predicted slice {z}; 'Predict all slices' (Predict and "
                          "objects) does every slice, live mode the slice you move to.", notify=False)
            self.predict(run.image_layer, [z], notify=False)
        if self._live_pending:
            self._live_pending = False
            self._live_timer.start()

    def _live_retrain(self) -> None:
        if not self.live_check.isChecked():
            return
        if self.jobs.running("train", "predict"):
            self._live_pending = True
            return
        self.train(steps=self.live_steps_spin.value(), live=True)

    # ----------------------------------------------------------------- teardown
    def close_workers(self, timeout_ms: int = 10_000) -> None:
        """Quit running workers and wait for them (used on close and by tests)."""
        if self._run is not None and self._run.stop_reason is None:
            self._run.stop_reason = "closed"
        self.jobs.stop()
        self.jobs.wait(timeout_ms)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.close_workers()
        super().closeEvent(event)


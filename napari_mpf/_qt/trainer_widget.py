"""The docked trainer: pick image and strokes, train in the background, preview, count, export.

Long work runs in napari thread workers (``create_worker``): training wraps the engine's
``Trainer.run()`` generator, prediction wraps :meth:`Controller.predict_iter`, "Predict to zarr"
wraps :meth:`ZarrPrediction.iter_run`. Everything that touches layers happens in the GUI thread, in
the workers' signal handlers. Large or dask-backed images get lazy (dask) output layers instead,
computed by napari as slices are shown.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._layer_style import class_names_from_features
from ..engine import PRESETS, Model, ModelFileError, load_model, parse_spec, save_model
from ..engine.network.features import FILTER_BANKS, check_filters, n_outputs
from ..engine.scale import CountSettings
from ..engine.training.train import LIVE_STEPS
from ..engine.training.warmup import warm_up
from .controller import (
    OUTPUT_KEY,
    Controller,
    TrainingSet,
    TrainSettings,
    UserError,
    filters_name,
    heads_text,
)
from .layer_combo import LayerCombo
from .loss_plot import LossPlot

__all__ = ["TrainerWidget", "SMALL_SPEC"]

#: a tiny network for quick trials and tests (window 8x8)
SMALL_SPEC = "C3x3x4, MPF2x2, C3x3x4, FC8"
OPTIMIZERS = ("adam", "sgd", "armijo", "lbfgs")


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


class _Workers:
    """The running workers, outside the widget so that the widget's ``destroyed`` can stop them."""

    def __init__(self) -> None:
        self.train = None
        self.predict = None

    def quit_all(self, *_) -> None:
        for worker in (self.train, self.predict):
            if worker is not None:
                worker.quit()
                _stop_event(worker)


def _stop_event(worker) -> None:
    """Also stop the dask run behind a 'Predict to zarr' worker (quit only stops between yields)."""
    event = getattr(worker, "_stop_event", None)
    if event is not None:
        event.set()


def _is_output(layer) -> bool:
    return OUTPUT_KEY in layer.metadata


class TrainerWidget(QWidget):
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
        self._workers = _Workers()
        self.destroyed.connect(self._workers.quit_all)
        self._run: _Run | None = None
        self._watched_labels: Labels | None = None
        self._live_pending = False
        self.messages: list[tuple[str, str]] = []
        self.timings: dict[str, float] = {}
        self.last_hint = None
        self._build()
        self._connect()
        self._on_image_changed(self.image_combo.layer())
        self._update_spec_info()
        self._show_model(None)
        self.engine_ready = not self.warm_up_on_open
        self._train_pending = False
        if self.warm_up_on_open:
            self._warm_up()

    def _warm_up(self) -> None:
        """Compile the default network's kernels in a worker while the user paints; Train pressed
        meanwhile starts when they are ready."""
        worker = create_worker(warm_up, TrainSettings.spec, _start_thread=False)
        self.progress.setRange(0, 0)  # a busy bar
        self._say("Preparing the engine (first use only: compiling; you can paint meanwhile)…", notify=False)

        def done(seconds) -> None:
            self.timings["warm_up"] = float(seconds)
            self._engine_ready_now(f"Engine ready ({seconds:.1f} s to prepare).")

        worker.returned.connect(done)
        worker.errored.connect(lambda exc: self._engine_ready_now(f"Could not prepare the engine ahead: {exc}"))
        worker.start()

    def _engine_ready_now(self, text: str) -> None:
        self.engine_ready = True
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        if self._train_pending:
            self._train_pending = False
            self.train()
        else:
            self._say(text, notify=False)

    @property
    def _train_worker(self):
        return self._workers.train

    @_train_worker.setter
    def _train_worker(self, worker) -> None:
        self._workers.train = worker

    @property
    def _predict_worker(self):
        return self._workers.predict

    @_predict_worker.setter
    def _predict_worker(self, worker) -> None:
        self._workers.predict = worker

    # ----------------------------------------------------------------- UI
    def _build(self) -> None:
        v = self.viewer
        root = QVBoxLayout(self)
        root.setContentsMargins(4, 4, 4, 4)

        data = QGroupBox("Data")
        form = QFormLayout(data)
        self.image_combo = LayerCombo(v, Image, accept=lambda ly: not _is_output(ly))
        self.image_combo.setToolTip("The image to segment: (Y, X), (Z, Y, X) or RGB")
        form.addRow("Image", self.image_combo)
        self.labels_combo = LayerCombo(v, Labels, accept=lambda ly: not _is_output(ly))
        self.labels_combo.setToolTip("Your strokes: 0 = unpainted, 1 = first class, 2 = second, ...")
        self.new_labels_btn = QPushButton("New labels")
        self.new_labels_btn.setToolTip("Add an empty '<image> labels' layer of the right shape, ready to paint")
        row = QHBoxLayout()
        row.addWidget(self.labels_combo, 1)
        row.addWidget(self.new_labels_btn)
        form.addRow("Strokes", row)
        self.classes_edit = QLineEdit("background, foreground")
        self.classes_edit.setToolTip("Class names for label values 1, 2, ... (comma separated)")
        form.addRow("Classes", self.classes_edit)
        self.pairs_check = QCheckBox("also other images with a '<image> labels' layer")
        form.addRow("", self.pairs_check)
        root.addWidget(data)

        net = QGroupBox("Network and training")
        form = QFormLayout(net)
        self.spec_combo = QComboBox()
        self.spec_combo.setEditable(True)
        self.spec_combo.addItems([*PRESETS, SMALL_SPEC])
        self.spec_combo.setCurrentText(TrainSettings.spec)  # engine.network.spec.DEFAULT_PRESET
        self.spec_combo.setToolTip(
            "A preset or a spec such as 'C5x5x8, MPF2x2, C3x3x8, FC32' (the last FC<classes> is added)"
        )
        form.addRow("Network", self.spec_combo)
        self.activation_combo = QComboBox()
        self.activation_combo.addItems(["tanh", "relu"])
        form.addRow("Activation", self.activation_combo)
        self.filters_combo = QComboBox()
        self.filters_combo.addItems(["none", *FILTER_BANKS])
        self.filters_combo.setToolTip(
            "Fixed filters ahead of a new network: 'multiscale' gives its first layer the image smoothed, its "
            "gradient magnitude (sigma 1-16) and its Hessian eigenvalues (sigma 1-8). Lower pixel error on EM "
            "membranes at the same steps, higher on defect images; ~0.15 s more per 512² image."
        )
        form.addRow("Input filters", self.filters_combo)
        self._custom_filters: dict | None = None
        self.context_combo = QComboBox()
        self.context_combo.addItems(["none", "fast", "wide"])
        self.context_combo.setToolTip(
            "Auto-context: a new network trains for half the steps, then a second network (this preset, same "
            "filters and heads) learns from the image and the first one's probabilities for the other half. "
            "On the defect images it lowered the pixel error at equal training time; on EM membranes it "
            "did not (benchmarks/RESULTS_ACCURACY.md). Prediction runs both networks."
        )
        form.addRow("Second stage", self.context_combo)
        self.spec_info = QLabel()
        form.addRow("", self.spec_info)
        self.optimizer_combo = QComboBox()
        self.optimizer_combo.addItems(OPTIMIZERS)
        form.addRow("Optimiser", self.optimizer_combo)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(TrainSettings.steps)
        form.addRow("Steps", self.steps_spin)
        self.lr_edit = QLineEdit()
        self.lr_edit.setPlaceholderText("auto")
        self.lr_edit.setToolTip("Learning rate; empty = the optimiser's default")
        form.addRow("Learning rate", self.lr_edit)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        form.addRow("Seed", self.seed_spin)
        self.augment_check = QCheckBox("rotations and flips")
        self.augment_check.setChecked(True)
        form.addRow("Augment", self.augment_check)
        heads = QHBoxLayout()
        self.superpixel_check = QCheckBox("superpixel branch")
        self.superpixel_check.setToolTip(
            "A new network gets a branch that pools its features over SLIC superpixels and adds the resulting "
            "class scores to every pixel of each superpixel (Schuurmans et al. 2018)."
        )
        self.superpixel_size_spin = _superpixel_size_spin(100, "Mean superpixel area of the branch, in pixels")
        self.superpixel_pool_combo = QComboBox()
        self.superpixel_pool_combo.addItems(["max", "mean"])
        self.superpixel_pool_combo.setToolTip("How the branch pools the features over each superpixel")
        heads.addWidget(self.superpixel_check)
        heads.addWidget(self.superpixel_size_spin, 1)
        heads.addWidget(self.superpixel_pool_combo)
        form.addRow("Heads", heads)
        image_head = QHBoxLayout()
        self.image_head_check = QCheckBox("image-level head")
        self.image_head_check.setToolTip(
            "A new network gets a classifier on the whole image's pooled features that gives p(class present) "
            "(for two classes: p(defect)), shown beside the object count (Haloi 2017)."
        )
        self.image_head_weight_spin = QDoubleSpinBox()
        self.image_head_weight_spin.setRange(0.01, 100.0)
        self.image_head_weight_spin.setSingleStep(0.1)
        self.image_head_weight_spin.setValue(1.0)
        self.image_head_weight_spin.setPrefix("loss weight ")
        self.image_head_weight_spin.setToolTip(
            "Weight of the image-level loss beside the pixel loss; its labels come from the strokes "
            "(a class painted in an image is present; an image with strokes but none of a class is without it)"
        )
        image_head.addWidget(self.image_head_check)
        image_head.addWidget(self.image_head_weight_spin, 1)
        form.addRow("", image_head)
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(0, 100_000)
        self.preview_spin.setValue(10)
        self.preview_spin.setToolTip("Update the probability map every that many steps (and about every second)")
        form.addRow("Preview every", self.preview_spin)
        self.continue_check = QCheckBox("continue from the current weights")
        self.continue_check.setChecked(True)
        form.addRow("", self.continue_check)
        buttons = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        buttons.addWidget(self.train_btn)
        buttons.addWidget(self.stop_btn)
        form.addRow(buttons)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        self.progress.setValue(0)
        form.addRow(self.progress)
        self.loss_plot = LossPlot()
        form.addRow(self.loss_plot)
        self.hint_label = QLabel("")
        self.hint_label.setWordWrap(True)
        self.hint_label.setToolTip(
            "Where the model is least sure (the two most likely classes closest). Show the "
            "'<image> uncertainty' layer to see all such places; strokes there teach the model most."
        )
        form.addRow(self.hint_label)
        live = QHBoxLayout()
        self.live_check = QCheckBox("live: retrain")
        self.live_check.setToolTip("After you paint more strokes, train a few more steps from the current weights")
        self.live_steps_spin = QSpinBox()
        self.live_steps_spin.setRange(1, 10_000)
        self.live_steps_spin.setValue(LIVE_STEPS)
        self.live_steps_spin.setSuffix(" steps after painting")
        live.addWidget(self.live_check)
        live.addWidget(self.live_steps_spin, 1)
        form.addRow(live)
        root.addWidget(net)

        out = QGroupBox("Objects (defect count)")
        form = QFormLayout(out)
        self.class_combo = QComboBox()
        form.addRow("Class", self.class_combo)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        form.addRow("Probability ≥", self.threshold_spin)
        self.min_area_spin = QSpinBox()
        self.min_area_spin.setRange(1, 10_000_000)
        self.min_area_spin.setValue(10)
        self.min_area_spin.setSuffix(" px")
        form.addRow("Min area", self.min_area_spin)
        self.min_count_spin = QSpinBox()
        self.min_count_spin.setRange(0, 1_000_000)
        self.min_count_spin.setValue(1)
        self.min_count_spin.setSpecialValueText("off")
        form.addRow("Flag if objects ≥", self.min_count_spin)
        self.min_pixels_spin = QSpinBox()
        self.min_pixels_spin.setRange(0, 100_000_000)
        self.min_pixels_spin.setValue(0)
        self.min_pixels_spin.setSpecialValueText("off")
        form.addRow("or object pixels ≥", self.min_pixels_spin)
        refine = QHBoxLayout()
        self.refine_check = QCheckBox("superpixel refinement")
        self.refine_check.setToolTip(
            "Average the class probabilities over SLIC superpixels of about this area before segmenting and "
            "counting (final maps and Predict; the training preview is not refined)."
        )
        self.refine_size_spin = _superpixel_size_spin(400, "Mean superpixel area of the refinement, in pixels")
        refine.addWidget(self.refine_check)
        refine.addWidget(self.refine_size_spin, 1)
        form.addRow("Refine", refine)
        self.tta_check = QCheckBox("test-time augmentation (8× slower)")
        self.tta_check.setToolTip(
            "Predict: average the probabilities over the 8 rotations and flips of each slice "
            "(not the training preview, not lazy or zarr predictions)."
        )
        form.addRow("Predict", self.tta_check)
        buttons = QHBoxLayout()
        self.count_btn = QPushButton("Count")
        self.predict_btn = QPushButton("Predict image / stack")
        self.predict_btn.setToolTip("Apply the current model to every slice of the chosen image")
        buttons.addWidget(self.predict_btn)
        buttons.addWidget(self.count_btn)
        form.addRow(buttons)
        self.zarr_btn = QPushButton("Predict to zarr…")
        self.zarr_btn.setToolTip(
            "Predict every slice into a zarr store on disk, chunk by chunk (for big stacks), with progress and "
            "Stop; the same store resumes a stopped run. Objects are counted per slice; the layers then read the store."
        )
        form.addRow(self.zarr_btn)
        self.count_label = QLabel("no objects counted yet")
        self._counted: tuple | None = None  # (image layer, class, counts) last shown in count_label
        self.count_label.setWordWrap(True)
        form.addRow(self.count_label)
        root.addWidget(out)

        box = QGroupBox("Model")
        lay = QVBoxLayout(box)
        buttons = QHBoxLayout()
        self.save_btn = QPushButton("Export…")
        self.load_btn = QPushButton("Import…")
        self.apply_btn = QPushButton("Apply to image")
        for b in (self.save_btn, self.load_btn, self.apply_btn):
            buttons.addWidget(b)
        lay.addLayout(buttons)
        self.model_info = QPlainTextEdit()
        self.model_info.setReadOnly(True)
        self.model_info.setMaximumHeight(110)
        lay.addWidget(self.model_info)
        root.addWidget(box)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch(1)

        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(1000)
        self._slice_timer = QTimer(self)
        self._slice_timer.setSingleShot(True)
        self._slice_timer.setInterval(300)

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

    # ----------------------------------------------------------------- settings
    def class_names(self) -> list[str]:
        return [n.strip() for n in self.classes_edit.text().split(",") if n.strip()]

    def settings(self) -> TrainSettings:
        text = self.lr_edit.text().strip()
        try:
            lr = float(text) if text else None
        except ValueError:
            raise UserError(f"The learning rate '{text}' is not a number; leave it empty for the default.") from None
        if lr is not None and not lr > 0:
            raise UserError(f"The learning rate must be positive, got {text}.")
        return TrainSettings(
            spec=self.spec_combo.currentText().strip(),
            activation=self.activation_combo.currentText(),
            optimizer=self.optimizer_combo.currentText(),
            steps=self.steps_spin.value(),
            lr=lr,
            augment=self.augment_check.isChecked(),
            seed=self.seed_spin.value(),
            preview_every=self.preview_spin.value(),
            continue_training=self.continue_check.isChecked(),
            class_names=self.class_names(),
            superpixel_branch=self.superpixel_check.isChecked(),
            superpixel_size=float(self.superpixel_size_spin.value()),
            superpixel_pool=self.superpixel_pool_combo.currentText(),
            image_head=self.image_head_check.isChecked(),
            image_head_weight=float(self.image_head_weight_spin.value()),
            filters=self._filters_setting(),
            context=self.context_combo.currentText(),
        )

    def _filters_setting(self) -> str | dict:
        text = self.filters_combo.currentText()
        return self._custom_filters if text == "custom" else text

    def refine_size(self) -> float | None:
        """The superpixel refinement's size in pixels, or None when it is off."""
        return float(self.refine_size_spin.value()) if self.refine_check.isChecked() else None

    def _update_head_controls(self, *_) -> None:
        self.superpixel_size_spin.setEnabled(self.superpixel_check.isChecked())
        self.superpixel_pool_combo.setEnabled(self.superpixel_check.isChecked())
        self.image_head_weight_spin.setEnabled(self.image_head_check.isChecked())
        self.refine_size_spin.setEnabled(self.refine_check.isChecked())

    def _update_spec_info(self, *_) -> None:
        layer = self.image_combo.layer()
        channels = 3 if isinstance(layer, Image) and layer.rgb else 1
        n_classes = max(2, len(self.class_names()))
        try:
            filters = check_filters(self._filters_setting())
            window, params = self.controller.describe_spec(self.spec_combo.currentText(), n_classes,
                                                           channels * n_outputs(filters))
            second = self.context_combo.currentText()
            if second != "none":  # it reads the image and the first stage's K - 1 probabilities
                window2, params2 = self.controller.describe_spec(
                    second, n_classes, (channels + n_classes - 1) * n_outputs(filters))
        except UserError as exc:
            self.spec_info.setText(str(exc))
            self.spec_info.setStyleSheet("color: #ff6b6b;")
            return
        self.spec_info.setStyleSheet("")
        if second == "none":
            self.spec_info.setText(f"window {window[0]}×{window[1]} · {params:,} parameters")
        else:  # a second stage sees the first stage's outputs over its own window
            h, w = window[0] + window2[0] - 1, window[1] + window2[1] - 1
            self.spec_info.setText(f"two stages: window {h}×{w} · {params + params2:,} parameters")

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
        if run is not None and self._train_worker is not None:
            if layer is run.image_layer or any(layer is ly for ly in run.tset.layers):
                run.stop_reason = f"layer '{layer.name}' was removed"
                self._train_worker.quit()
                if len(self.viewer.layers):
                    self._say(f"Training stopped because layer '{layer.name}' was removed; the last good weights are kept.")
        worker = self._predict_worker
        if worker is not None and getattr(worker, "_image_layer", None) is layer:
            worker.quit()

    def _on_slice_changed(self, event=None) -> None:
        if self.live_check.isChecked() and self.controller.model is not None:
            self._slice_timer.start()
        if self._counted is not None and self._counted[0] in self.viewer.layers:
            self.count_label.setText(self._count_text(*self._counted))  # the image head's p is per slice

    def _predict_current_slice(self) -> None:
        layer = self.image_combo.layer()
        if self._train_worker is not None or self._predict_worker is not None or layer is None:
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
        return self._train_worker is not None

    def train(self, *_, steps: int | None = None, live: bool = False):
        """Start training in a worker; returns the worker (None if not started)."""
        started = time.perf_counter()
        if not self.engine_ready:
            self._train_pending = True
            self._say("Training starts as soon as the engine is ready (first use only)…", notify=False)
            return None
        if self._train_worker is not None:
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
        self.loss_plot.clear()
        self.progress.setRange(0, int(trainer.config.steps))
        self.progress.setValue(0)
        worker = create_worker(trainer.run, _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.errored.connect(self._on_train_error)
        worker.finished.connect(self._on_train_finished)
        self._train_worker = worker
        self._set_busy(True)
        n = len(tset.images)
        what = f"{n} slice(s)/image(s), {tset.n_painted} painted pixels"
        verb = "continuing" if getattr(self.controller, "_continued", False) else "new network"
        self._say(f"Training ({verb}) on {what}…", notify=False)
        worker.start()
        return worker

    def stop(self) -> None:
        """Stop training between two steps (the last good weights are kept); also stops prediction."""
        if self._train_worker is not None:
            if self._run is not None and self._run.stop_reason is None:
                self._run.stop_reason = "stopped"
            self._train_worker.quit()
        if self._predict_worker is not None:
            self._predict_worker.quit()
            _stop_event(self._predict_worker)

    def _set_busy(self, busy: bool) -> None:
        self.train_btn.setEnabled(not busy)
        self.stop_btn.setEnabled(busy or self._predict_worker is not None)

    def _on_progress(self, p) -> None:
        run, worker = self._run, self._train_worker
        if run is None or worker is None or worker.abort_requested:
            return
        self.progress.setValue(int(p.step))
        self.loss_plot.add(p.step, p.loss)
        run.losses.append(float(p.loss))
        now = time.perf_counter()
        if p.probabilities is not None:
            _, z = run.tset.origins[run.trainer.config.preview_index]
            try:
                self.controller.show_probabilities(run.image_layer, z, p.probabilities, run.tset.class_names)
            except UserError as exc:
                run.stop_reason = "error"
                worker.quit()
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
        """Update the uncertainty layer and the line saying where the model is least certain."""
        where = self.controller.show_uncertainty(image_layer, z, proba, painted)
        if where is None:
            self.hint_label.setText("")
            return
        slice_text = "" if z is None else f" of slice {z}"
        self.hint_label.setText(
            f"Least certain: around row {where.y}, column {where.x}{slice_text} "
            f"({where.unsure_share:.0%} of the image unsure). Strokes there help most."
        )
        self.last_hint = where

    def _on_train_error(self, exc: Exception) -> None:
        # napari's worker already shows the exception as a notification
        if self._run is not None:
            self._run.stop_reason = "error"
        self._error(f"Training failed: {exc}", notify=False)

    def _on_train_finished(self) -> None:
        run = self._run
        self._train_worker = None
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
            self.predict(run.image_layer, [z], notify=False)
        if self._live_pending:
            self._live_pending = False
            self._live_timer.start()

    def _live_retrain(self) -> None:
        if not self.live_check.isChecked():
            return
        if self._train_worker is not None or self._predict_worker is not None:
            self._live_pending = True
            return
        self.train(steps=self.live_steps_spin.value(), live=True)

    # ----------------------------------------------------------------- prediction and objects
    def predict(self, image_layer=None, slices=None, notify: bool = True, *_):
        """Apply the current model to ``image_layer`` (default: the chosen image; all slices) in a worker."""
        if not isinstance(image_layer, Image):
            image_layer, slices = self.image_combo.layer(), None
        if self._predict_worker is not None:
            self._say("A prediction is already running.", "warning", notify)
            return None
        model = self.controller.model
        try:
            if model is None:
                raise UserError("No model yet: train one (Train) or import a model file (Import…).")
            info = self.controller.check_model_fits_image(model, image_layer)
        except UserError as exc:
            self._error(str(exc), notify)
            return None
        if self.controller.is_lazy(image_layer):
            try:
                self.controller.lazy_outputs(model, image_layer)
            except UserError as exc:
                self._error(str(exc), notify)
                return None
            self._say(
                f"'{image_layer.name}' is large or not in memory: its probabilities and segmentation are computed "
                "as you browse (only the slices shown); 'Predict to zarr…' computes them all."
                + (" Superpixel refinement is not applied to them." if self.refine_size() else ""), notify=False,
            )
            self.prediction_finished.emit()
            return None
        slices = list(slices) if slices is not None else self.controller.all_slices(image_layer)
        frozen = model.copy()
        worker = create_worker(self.controller.predict_iter, frozen, image_layer, slices, self.refine_size(),
                               self.tta_check.isChecked(), _start_thread=False)
        worker._image_layer = image_layer
        state = {"done": 0, "n": len(slices), "started": time.perf_counter()}

        def on_slice(item) -> None:
            if worker.abort_requested or image_layer not in self.viewer.layers:
                return
            z, proba, image_proba = item
            try:
                self.controller.show_probabilities(image_layer, z, proba, frozen.class_names, image_proba)
                self.controller.show_segmentation(image_layer, z, proba, frozen.class_names)
                if z is None or z == self.controller.current_slice(image_layer):
                    self._show_hint(image_layer, z, proba, self._painted(image_layer, z))
            except UserError as exc:
                worker.quit()
                self._error(str(exc))
                return
            state["done"] += 1
            if state["n"] > 1 and not self.is_training:
                self.progress.setRange(0, state["n"])
                self.progress.setValue(state["done"])

        def on_finished() -> None:
            self._predict_worker = None
            self._set_busy(self.is_training)
            self.timings["last_prediction"] = time.perf_counter() - state["started"]
            if state["done"] and image_layer in self.viewer.layers:
                if info.is_stack and state["n"] > 1:
                    self._say(f"Predicted {state['done']} of {state['n']} slices of '{image_layer.name}'.", notify=False)
                self.count(image_layer, notify=False)
            self.prediction_finished.emit()

        worker.yielded.connect(on_slice)
        worker.finished.connect(on_finished)
        worker.errored.connect(lambda exc: self._error(f"Prediction failed: {exc}", notify=False))
        self._predict_worker = worker
        self._set_busy(self.is_training)
        worker.start()
        return worker

    def count_settings(self) -> CountSettings:
        """What the 'Objects' controls say."""
        model = self.controller.model
        k = self.class_combo.currentIndex() + 1 if self.class_combo.count() else 1
        if model is not None and k >= model.n_classes:
            k = model.n_classes - 1
        return CountSettings(
            class_index=k, threshold=self.threshold_spin.value(), min_area=self.min_area_spin.value(),
            min_count=self.min_count_spin.value() or None, min_pixels=self.min_pixels_spin.value() or None,
        )

    def zarr_dialog(self) -> None:
        image = self.image_combo.layer()
        default = f"{image.name if image is not None else 'prediction'}.zarr"
        path, _ = QFileDialog.getSaveFileName(self, "Predict to zarr store", default, "Zarr store (*.zarr)")
        if path:
            self.predict_to_zarr(path)

    def predict_to_zarr(self, path, image_layer=None, notify: bool = True, prob_dtype: str = "uint8"):
        """Predict every slice of ``image_layer`` into the zarr store ``path`` in a worker (Stop stops it;
        the same path resumes). Returns the worker (None if not started)."""
        if not isinstance(image_layer, Image):
            image_layer = self.image_combo.layer()
        if self._predict_worker is not None:
            self._say("A prediction is already running.", "warning", notify)
            return None
        model = self.controller.model
        try:
            if model is None:
                raise UserError("No model yet: train one (Train) or import a model file (Import…).")
            if image_layer is None:
                raise UserError("No image layer to predict.")
            job = self.controller.zarr_job(model, image_layer, path, prob_dtype, self.count_settings())
        except UserError as exc:
            self._error(str(exc), notify)
            return None
        stop = threading.Event()
        worker = create_worker(job.iter_run, "threads", None, stop, _start_thread=False)
        worker._image_layer = image_layer
        worker._stop_event = stop
        started = time.perf_counter()

        def on_progress(p) -> None:
            if not self.is_training:
                self.progress.setRange(0, max(p.chunks_total, 1))
                self.progress.setValue(p.chunks_done)

        def on_finished() -> None:
            self._predict_worker = None
            self._set_busy(self.is_training)
            self.timings["last_zarr_prediction"] = time.perf_counter() - started
            try:
                self._zarr_done(job, image_layer, path)
            finally:
                self.prediction_finished.emit()

        worker.yielded.connect(on_progress)
        worker.finished.connect(on_finished)
        worker.errored.connect(lambda exc: self._error(f"Prediction failed: {exc}", notify=False))
        self._predict_worker = worker
        self._set_busy(self.is_training)
        note = " Superpixel refinement is not applied to zarr predictions (computed in chunks)." if self.refine_size() else ""
        self._say(f"Predicting '{image_layer.name}' into {path}" + (" (resuming)…" if job.resumed else "…") + note, notify=False)
        worker.start()
        return worker

    def _zarr_done(self, job, image_layer, path) -> None:
        summary = job.summary()
        done, total = summary["finished_chunks"], summary["total_chunks"]
        if not job.complete():
            self._say(f"Stopped: {done} of {total} chunks are in {path}; 'Predict to zarr…' on the same store resumes.", notify=False)
            return
        if image_layer in self.viewer.layers:
            try:
                self.controller.zarr_outputs(image_layer, path)
            except UserError as exc:
                self._error(str(exc))
        counts = summary.get("counts")
        if counts is not None:
            flagged = [z for z in range(len(counts)) if counts[z, 2] > 0]
            text = f"{int(counts[:, 0].sum())} object(s) in {len(counts)} slice(s); {len(flagged)} flagged"
            if flagged:
                text += ": " + ", ".join(f"z{z}" for z in flagged[:20]) + (" …" if len(flagged) > 20 else "")
            self.count_label.setText(text)
        self._say(f"Wrote the prediction of '{image_layer.name}' to {path}.", notify=False)

    def count(self, image_layer=None, notify: bool = True, *_):
        """Count objects of the chosen class in the probability map -> ``'<image> objects'``."""
        if not isinstance(image_layer, Image):
            image_layer = self.image_combo.layer()
        model = self.controller.model
        k = self.class_combo.currentIndex() + 1 if self.class_combo.count() else 1
        try:
            if image_layer is None:
                raise UserError("No image layer to count objects in.")
            if model is not None and k >= model.n_classes:
                k = model.n_classes - 1
            res = self.controller.count(
                image_layer, k, self.threshold_spin.value(), self.min_area_spin.value(),
                min_count=self.min_count_spin.value() or None, min_pixels=self.min_pixels_spin.value() or None,
            )
        except UserError as exc:
            self._error(str(exc), notify)
            return None
        self._counted = (image_layer, k, res)
        self.count_label.setText(self._count_text(image_layer, k, res))
        return res

    def _count_text(self, image_layer, k: int, res) -> str:
        """The count label: objects, the flag, the image head's p(class) on the slice shown, per slice."""
        model = self.controller.model
        flag = "defect present" if res.defect_present else "no defect"
        text = f"{res.count} object(s) — {flag}"
        if model is not None and model.image_head is not None and k < model.n_classes:
            try:
                z = self.controller.current_slice(image_layer)
            except UserError:
                z = None
            p = self.controller.image_probability(image_layer, k, z)
            if p is not None:
                text += f" · image head p({model.class_names[k]}) = {p:.2f}" + ("" if z is None else f" (slice {z})")
        if res.labels.ndim == 3:
            per = ", ".join(f"z{z}: {int(c)}{'*' if f else ''}" for z, (c, f) in enumerate(zip(res.counts, res.present, strict=True)) if c or f)
            text += f"; per slice (* = flagged): {per or 'none'}"
        return text

    # ----------------------------------------------------------------- model files
    def _show_model(self, model: Model | None) -> None:
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        if model is None:
            self.model_info.setPlainText("No model yet: train one or import a model file.")
            self.class_combo.addItems(self.class_names()[1:] or ["foreground"])
        else:
            self.class_combo.addItems(model.class_names[1:])
            prov = json.dumps(model.provenance, default=str, sort_keys=True)
            h, w = model.window
            heads = heads_text(model)
            self.model_info.setPlainText(
                f"spec: {model.spec.text}\nactivation: {model.activation}\nwindow: {h}×{w}\n"
                + (f"heads: {heads}\n" if heads else "")
                + f"channels: {model.in_channels}\nclasses: {', '.join(model.class_names)}\n"
                f"parameters: {model.n_params:,}\nprovenance: {prov}"
            )
        self.class_combo.setCurrentIndex(max(0, self.class_combo.count() - 1) if model is None else 0)
        self.class_combo.blockSignals(False)

    def _show_heads(self, model: Model) -> None:
        """Set the head and input-filter controls to ``model``'s, so that training can continue from it."""
        name = filters_name(model.filters)
        if name == "custom":  # a bank made through the Python API: kept as the model has it
            self._custom_filters = model.filters
            if self.filters_combo.findText(name) < 0:
                self.filters_combo.addItem(name)
        self.filters_combo.setCurrentText(name)
        second = "none" if model.context is None else model.spec.text
        if model.context is not None:  # the network control then names the first stage
            second = next((p for p in PRESETS if parse_spec(p, model.n_classes).text == second), second)
            self.spec_combo.setCurrentText(
                next((p for p in PRESETS if parse_spec(p, model.n_classes).text == model.context.spec.text),
                     model.context.spec.text))
        if self.context_combo.findText(second) < 0:
            self.context_combo.addItem(second)
        self.context_combo.setCurrentText(second)
        sp = model.superpixels
        self.superpixel_check.setChecked(sp is not None)
        if sp is not None:
            self.superpixel_size_spin.setValue(int(round(sp["size"])))
            self.superpixel_pool_combo.setCurrentText(sp["pool"])
        self.image_head_check.setChecked(model.image_head is not None)
        if model.image_head is not None:
            self.image_head_weight_spin.setValue(float(model.image_head["loss_weight"]))

    def export_model(self, path: str | Path) -> Path | None:
        """Write the current model to ``path`` (``.npz`` added if missing)."""
        model = self.controller.model
        if model is None:
            self._error("No model to export yet: train one first.")
            return None
        path = Path(path)
        if path.suffix.lower() != ".npz":
            path = path.with_name(path.name + ".npz")
        try:
            out = save_model(model, path)
        except OSError as exc:
            self._error(f"Cannot write the model to {path}: {exc}")
            return None
        self._say(f"Model exported to {out}.")
        return Path(out)

    def import_model(self, path: str | Path) -> Model | None:
        """Load a model file; it becomes the current model (then Apply or Train to continue)."""
        try:
            model = load_model(path)
        except ModelFileError as exc:
            self._error(f"Cannot load the model: {exc}")
            return None
        except (OSError, ValueError) as exc:
            self._error(f"Cannot load the model from {path}: {exc}")
            return None
        self.controller.model = model
        self._show_model(model)
        self._show_heads(model)
        self.classes_edit.setText(", ".join(model.class_names))
        h, w = model.window
        self._say(f"Loaded model {Path(path).name}: {model.spec.text}, window {h}×{w}, {model.n_params:,} parameters.")
        return model

    def export_dialog(self) -> None:
        if self.controller.model is None:
            self._error("No model to export yet: train one first.")
            return
        image = self.image_combo.layer()
        default = f"{image.name if image is not None else 'model'}.mpf.npz"
        path, _ = QFileDialog.getSaveFileName(self, "Export model", default, "napari-mpf model (*.npz)")
        if path:
            self.export_model(path)

    def import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import model", "", "napari-mpf model (*.npz);;All files (*)")
        if path:
            self.import_model(path)

    # ----------------------------------------------------------------- teardown
    def close_workers(self, timeout_ms: int = 10_000) -> None:
        """Quit running workers and wait for them (used on close and by tests)."""
        from napari.qt.threading import WorkerBase

        for worker in (self._train_worker, self._predict_worker):
            if worker is not None:
                worker.quit()
                _stop_event(worker)
        if self._run is not None and self._run.stop_reason is None:
            self._run.stop_reason = "closed"
        WorkerBase.await_workers(timeout_ms)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.close_workers()
        super().closeEvent(event)


def _superpixel_size_spin(value: int, tooltip: str) -> QSpinBox:
    """A spin box for a mean superpixel area in pixels."""
    spin = QSpinBox()
    spin.setRange(1, 10_000_000)
    spin.setValue(value)
    spin.setSuffix(" px")
    spin.setToolTip(tooltip)
    return spin

"""The trainer's controls: a Basic part a biologist reads at a glance, the rest in collapsed sections.

Basic: image, strokes (+ New labels), class names, the network (speed or accuracy), Train / Stop with
the status line beside them, progress and the loss curve, where to paint next, live retraining.
Collapsed: training options, prediction and objects, the model file. :class:`TrainerForm` builds
them on the widget and reads what they say; the widget (``trainer_widget.py``) does the work.
"""

from __future__ import annotations

import json

from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from .. import recipe
from ..engine import PRESETS, Model, parse_spec
from ..engine.network.features import check_filters, n_outputs
from ..engine.scale import CountSettings
from .controller import OUTPUT_KEY, TrainSettings, UserError, filters_name, heads_text
from .layer_combo import LayerCombo
from .loss_plot import LossPlot

__all__ = ["TrainerForm", "SMALL_SPEC", "is_output"]

#: a tiny network for quick trials and tests (window 8x8)
SMALL_SPEC = "C3x3x4, MPF2x2, C3x3x4, FC8"


def is_output(layer) -> bool:
    """True for layers this plugin wrote (probabilities, segmentation, objects, uncertainty)."""
    return OUTPUT_KEY in layer.metadata


def recipe_control(name: str, text: str = "") -> QWidget:
    """The control of the recipe's choice ``name``: its type, valid values, default and help."""
    c = recipe.choice(name)
    if c.kind is bool:
        control = QCheckBox(text)
        control.setChecked(bool(c.default))
    elif c.choices:
        control = QComboBox()
        control.addItems([str(v) for v in c.choices])
        control.setEditable(c.free_text)
        control.setCurrentText(str(c.default))
    elif c.kind is int:
        control = QSpinBox()
        control.setRange(int(c.minimum or 0), 2**31 - 1)
        control.setValue(int(c.default))
    else:  # a number or text that may be left automatic
        control = QLineEdit("" if c.default is None else str(c.default))
        control.setPlaceholderText("auto")
    control.setToolTip(c.help[:1].upper() + c.help[1:])
    return control


def _section(title: str, body: QWidget) -> QCollapsible:
    """A collapsed section holding ``body``."""
    box = QCollapsible(title)
    box.setDuration(0)
    box.addWidget(body)
    box.collapse(animate=False)
    return box


def _superpixel_size_spin(value: int, tooltip: str) -> QSpinBox:
    """A spin box for a mean superpixel area in pixels."""
    spin = QSpinBox()
    spin.setRange(1, 10_000_000)
    spin.setValue(value)
    spin.setSuffix(" px")
    spin.setToolTip(tooltip)
    return spin


class TrainerForm:
    """Mixin of :class:`~napari_mpf._qt.trainer_widget.TrainerWidget`: its controls and what they say."""

    viewer: object
    controller: object

    def _build(self) -> None:
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # fit the dock's width
        body = QWidget()
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        root = QVBoxLayout(body)
        root.setContentsMargins(4, 4, 4, 4)
        root.addLayout(self._basic())
        self.options_section = _section("Training options", self._options())
        self.outputs_section = _section("Predict and objects", self._outputs())
        self.model_section = _section("Model file", self._model_box())
        for section in (self.options_section, self.outputs_section, self.model_section):
            root.addWidget(section)
        root.addStretch(1)
        # the dock is as wide as the controls need, with room for the vertical scroll bar; the
        # controls then take the viewport's width, never more
        scroll.setMinimumWidth(body.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width()
                               + 2 * scroll.frameWidth())
        body.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def _basic(self) -> QFormLayout:
        v = self.viewer
        form = QFormLayout()
        self.image_combo = LayerCombo(v, Image, accept=lambda ly: not is_output(ly))
        self.image_combo.setToolTip("The image to segment: (Y, X), (Z, Y, X) or RGB")
        form.addRow("Image", self.image_combo)
        self.labels_combo = LayerCombo(v, Labels, accept=lambda ly: not is_output(ly))
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
        self.spec_combo = recipe_control("network")
        self.spec_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.spec_combo.setMinimumContentsLength(8)
        self.spec_combo.addItem(SMALL_SPEC)
        form.addRow("Network", self.spec_combo)
        self.spec_info = QLabel()
        form.addRow("", self.spec_info)
        buttons = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        buttons.addWidget(self.train_btn)
        buttons.addWidget(self.stop_btn)
        form.addRow(buttons)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form.addRow(self.status)
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
            "'<image> uncertainty' layer to see all such places; strokes there teach the model most. "
            "Painted pixels the preview still disagrees with lie where the network does not (yet) "
            "tell the classes apart."
        )
        form.addRow(self.hint_label)
        self.live_check = QCheckBox("live: retrain after I paint")
        self.live_check.setToolTip(
            "After you paint more strokes, train a few more steps from the current weights "
            "(how many: Training options)"
        )
        form.addRow(self.live_check)
        return form

    def _options(self) -> QWidget:
        box = QWidget()
        form = QFormLayout(box)
        self.pairs_check = QCheckBox("also other images")
        self.pairs_check.setToolTip("Train on every image layer that has a '<image> labels' layer, not only the one above")
        form.addRow("Data", self.pairs_check)
        self.steps_spin = recipe_control("steps")
        form.addRow("Steps", self.steps_spin)
        self.live_steps_spin = recipe_control("live_steps")
        form.addRow("Live steps", self.live_steps_spin)
        self.continue_check = QCheckBox("continue from the current weights")
        self.continue_check.setChecked(True)
        form.addRow("", self.continue_check)
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(0, 100_000)
        self.preview_spin.setValue(10)
        self.preview_spin.setToolTip("Update the probability map every that many steps (and about every second)")
        form.addRow("Preview every", self.preview_spin)
        self.activation_combo = recipe_control("activation")
        form.addRow("Activation", self.activation_combo)
        self.optimizer_combo = recipe_control("optimizer")
        form.addRow("Optimiser", self.optimizer_combo)
        self.lr_edit = recipe_control("lr")
        form.addRow("Learning rate", self.lr_edit)
        self.seed_spin = recipe_control("seed")
        form.addRow("Seed", self.seed_spin)
        self.augment_check = recipe_control("augment", "rotations and flips")
        form.addRow("Augment", self.augment_check)
        self.balance_check = recipe_control("balance", "class-balanced loss")
        form.addRow("Loss", self.balance_check)
        self.step_size_spin = recipe_control("step_size")
        self.step_size_spin.setSuffix(" px")
        form.addRow("Step size", self.step_size_spin)
        self.filters_combo = recipe_control("filters")
        form.addRow("Input filters", self.filters_combo)
        self._custom_filters: dict | None = None
        self.context_combo = QComboBox()
        self.context_combo.addItems(["none", "fast", "wide"])
        self.context_combo.setToolTip(
            "Auto-context: a new network trains for half the steps, then a second network learns from the "
            "image and the first one's probabilities. Lower error on the defect images at equal time, not on "
            "EM membranes (benchmarks/RESULTS_ACCURACY.md)."
        )
        form.addRow("Second stage", self.context_combo)
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
        heads.addWidget(self.superpixel_size_spin, 1)
        heads.addWidget(self.superpixel_pool_combo)
        form.addRow("Heads", self.superpixel_check)
        form.addRow("", heads)
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
        form.addRow("", self.image_head_check)
        form.addRow("", self.image_head_weight_spin)
        return box

    def _outputs(self) -> QWidget:
        box = QWidget()
        form = QFormLayout(box)
        self.predict_btn = QPushButton("Predict all slices")
        self.predict_btn.setToolTip("Apply the current model to every slice of the chosen image")
        self.zarr_btn = QPushButton("Predict to zarr…")
        self.zarr_btn.setToolTip(
            "Predict every slice into a zarr store on disk, chunk by chunk (for big stacks), with progress and "
            "Stop; the same store resumes a stopped run. Objects are counted per slice; the layers then read the store."
        )
        form.addRow(self.predict_btn)
        form.addRow(self.zarr_btn)
        self.tta_check = QCheckBox("rotations and flips (8× slower)")
        self.tta_check.setToolTip(
            "Predict: average the probabilities over the 8 rotations and flips of each slice "
            "(not the training preview, not lazy or zarr predictions)."
        )
        form.addRow("Predict", self.tta_check)
        self.refine_check = QCheckBox("superpixel refinement")
        self.refine_check.setToolTip(
            "Average the class probabilities over SLIC superpixels of about this area before segmenting and "
            "counting (final maps and Predict; the training preview is not refined)."
        )
        self.refine_size_spin = _superpixel_size_spin(400, "Mean superpixel area of the refinement, in pixels")
        form.addRow("Refine", self.refine_check)
        form.addRow("", self.refine_size_spin)
        self.count_check = QCheckBox("count after each prediction")
        self.count_check.setToolTip(
            "For defect-type use: connected regions of the class below become the '<image> objects' layer, "
            "with a per-object table and a flag"
        )
        form.addRow("Objects", self.count_check)
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
        form.addRow("Flag: objects ≥", self.min_count_spin)
        self.min_pixels_spin = QSpinBox()
        self.min_pixels_spin.setRange(0, 100_000_000)
        self.min_pixels_spin.setValue(0)
        self.min_pixels_spin.setSpecialValueText("off")
        form.addRow("or pixels ≥", self.min_pixels_spin)
        self.count_btn = QPushButton("Count now")
        form.addRow(self.count_btn)
        self.count_label = QLabel("no objects counted yet")
        self._counted: tuple | None = None  # (image layer, class, counts) last shown in count_label
        self.count_label.setWordWrap(True)
        form.addRow(self.count_label)
        return box

    def _model_box(self) -> QWidget:
        box = QWidget()
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
        return box

    # ----------------------------------------------------------------- reading the controls
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
            balance=self.balance_check.isChecked(),
            step_size=self.step_size_spin.value(),
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

    def count_class(self) -> int:
        """The class index (1-based among the model's classes) the Objects controls count."""
        k = self.class_combo.currentIndex() + 1 if self.class_combo.count() else 1
        model = self.controller.model
        return min(k, model.n_classes - 1) if model is not None else k

    def count_settings(self) -> CountSettings:
        """What the 'Objects' controls say."""
        return CountSettings(
            class_index=self.count_class(), threshold=self.threshold_spin.value(), min_area=self.min_area_spin.value(),
            min_count=self.min_count_spin.value() or None, min_pixels=self.min_pixels_spin.value() or None,
        )

    # ----------------------------------------------------------------- keeping the controls in step
    def _update_head_controls(self, *_) -> None:
        self.superpixel_size_spin.setEnabled(self.superpixel_check.isChecked())
        self.superpixel_pool_combo.setEnabled(self.superpixel_check.isChecked())
        self.image_head_weight_spin.setEnabled(self.image_head_check.isChecked())
        self.refine_size_spin.setEnabled(self.refine_check.isChecked())

    def _update_spec_info(self, *_) -> None:
        layer = self.image_combo.layer()
        channels = 3 if isinstance(layer, Image) and layer.rgb else 1
        n_classes = max(2, len(self.class_names()))
        if self.controller.model is None:
            self._show_classes(self.class_names()[1:])
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

    def _show_classes(self, names: list[str]) -> None:
        """The classes the Objects controls offer (the foreground classes), keeping the choice if it stays."""
        names = list(names) or ["foreground"]
        current = self.class_combo.currentText()
        if [self.class_combo.itemText(i) for i in range(self.class_combo.count())] == names:
            return
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItems(names)
        self.class_combo.setCurrentIndex(names.index(current) if current in names else len(names) - 1)
        self.class_combo.blockSignals(False)

    def _show_model(self, model: Model | None) -> None:
        if model is None:
            self.model_info.setPlainText("No model yet: train one or import a model file.")
            self._show_classes(self.class_names()[1:])
            return
        self._show_classes(model.class_names[1:])
        self.class_combo.setCurrentIndex(0)
        prov = json.dumps(model.provenance, default=str, sort_keys=True)
        h, w = model.window
        heads = heads_text(model)
        self.model_info.setPlainText(
            f"spec: {model.spec.text}\nactivation: {model.activation}\nwindow: {h}×{w}\n"
            + (f"heads: {heads}\n" if heads else "")
            + f"channels: {model.in_channels}\nclasses: {', '.join(model.class_names)}\n"
            f"parameters: {model.n_params:,}\nprovenance: {prov}"
        )

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

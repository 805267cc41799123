"""Applying the trained model from the widget: predict slices, predict a stack into a zarr store,
count objects, export and import model files. A mixin of the trainer widget; long work runs as
its jobs (``_qt/jobs.py``) and everything that touches layers runs in their handlers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from napari.layers import Image
from qtpy.QtWidgets import QFileDialog

from ..engine import Model, ModelFileError, load_model, save_model
from ..engine.io.modelfile import MODEL_SUFFIX
from ..engine.scale.layouts import OME_SUFFIX
from .controller import UserError

__all__ = ["ModelJobs", "ZARR_FILTERS", "store_path"]

#: the save dialog's choices: an OME-Zarr image (napari-ome-zarr opens it with the labels) or a plain store
ZARR_FILTERS = (f"OME-Zarr image (*{OME_SUFFIX})", "Zarr store (*.zarr)")


def store_path(path: str, chosen_filter: str) -> str:
    """The dialog's path with the chosen kind's suffix added when the name has none."""
    if path.lower().endswith(".zarr"):
        return path
    return path + (OME_SUFFIX if chosen_filter == ZARR_FILTERS[0] or not chosen_filter else ".zarr")


class ModelJobs:
    """Mixin of :class:`~napari_mpf._qt.trainer_widget.TrainerWidget`: what the model is applied to."""

    # ----------------------------------------------------------------- prediction and objects
    def _model_to_apply(self, notify: bool):
        """The current model if a prediction may start now, else None (and the reason said)."""
        if self.jobs.running("predict"):
            self._say("A prediction is already running.", "warning", notify)
            return None
        if self.controller.model is None:
            self._error("No model yet: train one (Train) or import a model file (Import…).", notify)
        return self.controller.model

    def predict(self, image_layer=None, slices=None, notify: bool = True, *_):
        """Apply the current model to ``image_layer`` (default: the chosen image; all slices) in a worker."""
        if not isinstance(image_layer, Image):
            image_layer, slices = self.image_combo.layer(), None
        model = self._model_to_apply(notify)
        if model is None:
            return None
        try:
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
        state = {"done": 0, "n": len(slices), "started": time.perf_counter()}

        def on_slice(item) -> None:
            if self.jobs.aborted("predict") or image_layer not in self.viewer.layers:
                return
            z, proba, image_proba = item
            try:
                self.controller.show_probabilities(image_layer, z, proba, frozen.class_names, image_proba)
                self.controller.show_segmentation(image_layer, z, proba, frozen.class_names)
                if z is None or z == self.controller.current_slice(image_layer):
                    self._show_hint(image_layer, z, proba, self._painted(image_layer, z))
            except UserError as exc:
                self.jobs.stop("predict")
                self._error(str(exc))
                return
            state["done"] += 1
            if state["n"] > 1 and not self.is_training:
                self.progress.setRange(0, state["n"])
                self.progress.setValue(state["done"])

        def on_finished() -> None:
            self._set_busy(self.is_training)
            self.timings["last_prediction"] = time.perf_counter() - state["started"]
            if state["done"] and image_layer in self.viewer.layers:
                if info.is_stack and state["n"] > 1:
                    self._say(f"Predicted {state['done']} of {state['n']} slices of '{image_layer.name}'.", notify=False)
                if self.count_check.isChecked():
                    self.count(image_layer, notify=False)
            self.prediction_finished.emit()

        worker = self.jobs.start(
            "predict", self.controller.predict_iter, frozen, image_layer, slices, self.refine_size(),
            self.tta_check.isChecked(), on_item=on_slice, on_done=on_finished, layer=image_layer,
            on_error=lambda exc: self._error(f"Prediction failed: {exc}", notify=False))
        self._set_busy(self.is_training)
        return worker

    def zarr_dialog(self) -> None:
        image = self.image_combo.layer()
        default = f"{image.name if image is not None else 'prediction'}{OME_SUFFIX}"
        path, chosen = QFileDialog.getSaveFileName(self, "Predict to zarr store", default, ";;".join(ZARR_FILTERS))
        if path:
            self.predict_to_zarr(store_path(path, chosen))

    def predict_to_zarr(self, path, image_layer=None, notify: bool = True, prob_dtype: str = "uint8"):
        """Predict every slice of ``image_layer`` into the zarr store ``path`` in a worker (Stop stops it;
        the same path resumes). Returns the worker (None if not started)."""
        if not isinstance(image_layer, Image):
            image_layer = self.image_combo.layer()
        model = self._model_to_apply(notify)
        if model is None:
            return None
        try:
            if image_layer is None:
                raise UserError("No image layer to predict.")
            job = self.controller.zarr_job(model, image_layer, path, prob_dtype, self.count_settings())
        except UserError as exc:
            self._error(str(exc), notify)
            return None
        stop = threading.Event()  # also stops the dask run between two chunks
        started = time.perf_counter()

        def on_progress(p) -> None:
            if not self.is_training:
                self.progress.setRange(0, max(p.chunks_total, 1))
                self.progress.setValue(p.chunks_done)

        def on_finished() -> None:
            self._set_busy(self.is_training)
            self.timings["last_zarr_prediction"] = time.perf_counter() - started
            try:
                self._zarr_done(job, image_layer, path)
            finally:
                self.prediction_finished.emit()

        worker = self.jobs.start(
            "predict", job.iter_run, "threads", None, stop, on_item=on_progress, on_done=on_finished,
            layer=image_layer, stop=stop, on_error=lambda exc: self._error(f"Prediction failed: {exc}", notify=False))
        self._set_busy(self.is_training)
        note = " Superpixel refinement is not applied to zarr predictions (computed in chunks)." if self.refine_size() else ""
        self._say(f"Predicting '{image_layer.name}' into {path}" + (" (resuming)…" if job.resumed else "…") + note, notify=False)
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
        k = self.count_class()
        try:
            if image_layer is None:
                raise UserError("No image layer to count objects in.")
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
        names = model.class_names if model is not None else self.class_names()
        name = names[k] if k < len(names) else f"class {k + 1}"
        flag = f"flagged: {name} present" if res.defect_present else "not flagged"
        text = f"{res.count} object(s) of {name} — {flag}"
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
    def export_model(self, path: str | Path) -> Path | None:
        """Write the current model to ``path`` (``.mpf.npz``, the suffix napari opens, added if it
        does not end in ``.npz``)."""
        model = self.controller.model
        if model is None:
            self._error("No model to export yet: train one first.")
            return None
        path = Path(path)
        if path.suffix.lower() != ".npz":
            path = path.with_name(path.name + MODEL_SUFFIX)
        try:
            out = save_model(model, path)
        except ModelFileError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            self._error(f"{reason[:1].upper()}{reason[1:]} (cannot write the model {path.name}).")
            return None
        except OSError as exc:
            self._error(f"{exc.strerror or exc} (cannot write the model {path.name} into {path.parent}).")
            return None
        self._say(f"Model exported to {out}.")
        return Path(out)

    def import_model(self, path: str | Path) -> Model | None:
        """Load a model file; it becomes the current model (then Apply or Train to continue)."""
        try:
            model = load_model(path)
        except (ModelFileError, OSError, ValueError) as exc:
            reason = str(exc).removeprefix(f"{path}: ").removeprefix(f"{Path(path)}: ")
            self._error(f"{reason[:1].upper()}{reason[1:]} (cannot load the model {Path(path).name}).")
            return None
        self.use_model(model, Path(path).name)
        return model

    def use_model(self, model: Model, name: str) -> None:
        """Make a loaded ``model`` (from the file ``name``) the current one and show its settings."""
        self.controller.model = model
        self._show_model(model)
        self._show_heads(model)
        self.classes_edit.setText(", ".join(model.class_names))
        h, w = model.window
        self._say(f"Loaded model {name}: {model.spec.text}, window {h}×{w}, {model.n_params:,} parameters.")

    def export_dialog(self) -> None:
        if self.controller.model is None:
            self._error("No model to export yet: train one first.")
            return
        image = self.image_combo.layer()
        default = f"{image.name if image is not None else 'model'}{MODEL_SUFFIX}"
        path, _ = QFileDialog.getSaveFileName(self, "Export model", default, f"napari-mpf model (*{MODEL_SUFFIX})")
        if path:
            self.export_model(path)

    def import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import model", "", "napari-mpf model (*.npz);;All files (*)")
        if path:
            self.import_model(path)

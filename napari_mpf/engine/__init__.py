"""The MPF engine: NumPy + Numba, no napari, no Qt. See README.md for the API and docs/model-file.md for the model file."""

import os

# Numba's OpenMP threads spin after each parallel loop and starve OpenBLAS's threads (the wide layers
# run on BLAS): a passive wait policy, read once when libgomp loads, avoids a several-fold slow-down.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .io.modelfile import ModelFileError, load_model, model_header, save_model
from .network.inputs import InputError, as_image, as_labels
from .network.model import Model
from .network.predict import predict_logits, predict_proba, segment, softmax
from .network.spec import PRESETS, LayerSpec, NetworkSpec, SpecError, parse_spec
from .training.loss import loss_and_gradients, masked_cross_entropy
from .training.train import Progress, TrainConfig, Trainer, fit, train

__all__ = [
    "InputError",
    "LayerSpec",
    "Model",
    "ModelFileError",
    "NetworkSpec",
    "PRESETS",
    "Progress",
    "SpecError",
    "TrainConfig",
    "Trainer",
    "as_image",
    "as_labels",
    "fit",
    "load_model",
    "loss_and_gradients",
    "masked_cross_entropy",
    "model_header",
    "parse_spec",
    "predict_logits",
    "predict_proba",
    "save_model",
    "segment",
    "softmax",
    "train",
]

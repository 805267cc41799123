"""The MPF engine: NumPy + Numba, no napari, no Qt. See README.md for the API and the model file."""

from .inputs import InputError
from .loss import loss_and_gradients, masked_cross_entropy
from .model import Model
from .predict import predict_logits, predict_proba, segment, softmax
from .spec import PRESETS, LayerSpec, NetworkSpec, SpecError, parse_spec

__all__ = [
    "InputError",
    "LayerSpec",
    "Model",
    "NetworkSpec",
    "PRESETS",
    "SpecError",
    "loss_and_gradients",
    "masked_cross_entropy",
    "parse_spec",
    "predict_logits",
    "predict_proba",
    "segment",
    "softmax",
]

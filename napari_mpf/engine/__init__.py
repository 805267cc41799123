"""The MPF engine: NumPy + Numba, no napari, no Qt. See README.md for the API and docs/model-file.md for the model file."""

import os

# Numba's OpenMP threads spin after each parallel loop and starve OpenBLAS's threads (the wide layers
# run on BLAS): a passive wait policy, read once when libgomp loads, avoids a several-fold slow-down.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .io.modelfile import ModelFileError, load_model, save_model
from .io.volume import open_volume
from .network.inputs import InputError
from .network.model import Model
from .network.predict import predict_logits, predict_proba, segment
from .network.spec import PRESETS, SpecError, parse_spec
from .scale import ZarrPrediction, predict_dask
from .training.dataset import PairDataset
from .training.train import Progress, TrainConfig, Trainer, fit, train

#: the public API: a network (Model, its spec), training, prediction, model files, big volumes.
#: Everything else is importable from its sub-package (kernels, network, io, training, scale, post).
__all__ = [
    # the network
    "Model", "parse_spec", "PRESETS",
    # training
    "TrainConfig", "Trainer", "Progress", "fit", "train", "PairDataset",
    # prediction
    "predict_proba", "predict_logits", "segment",
    # model files
    "save_model", "load_model",
    # big volumes (dask, zarr)
    "open_volume", "predict_dask", "ZarrPrediction",
    # errors a user can fix
    "InputError", "SpecError", "ModelFileError",
]

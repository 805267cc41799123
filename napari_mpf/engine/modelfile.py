"""The weights file: an ``.npz`` (no pickle) with a JSON header; see README "Model file format"."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .features import check_filters, n_outputs
from .model import Model
from .spec import LayerSpec, SpecError, resolve_spec

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "save_model", "load_model", "model_header"]

FORMAT = "napari-mpf-model"
FORMAT_VERSION = 4  # 2 adds the optional heads, 3 the input filters, 4 auto-context; a file says the lowest version it needs
#: prefix of the first stage's arrays (and, nested, of its own first stage's)
CONTEXT_PREFIX = "context."


class ModelFileError(ValueError):
    """A file that is not a readable napari-mpf model, with the reason."""


def model_header(model: Model) -> dict:
    """The JSON header written into the model file (a ``context`` model's nested under ``"context"``)."""
    version = 3 if model.filters else 2 if (model.superpixels or model.image_head) else 1
    if model.context is not None:
        context = model_header(model.context)
        version = 4
    return {
        "format": FORMAT,
        "version": version,
        "spec": model.spec.text,
        "window": list(model.window),
        "layers": [
            {"kind": layer.kind, "size": list(layer.size), "maps": layer.maps}
            for layer in model.spec.layers
        ],
        "activation": model.activation,
        "in_channels": model.in_channels,
        "n_classes": model.n_classes,
        "class_names": list(model.class_names),
        "normalisation": {
            "mean": [float(v) for v in model.norm_mean],
            "std": [float(v) for v in model.norm_std],
        },
        "provenance": model.provenance,
        **({"superpixels": model.superpixels} if model.superpixels is not None else {}),
        **({"image_head": model.image_head} if model.image_head is not None else {}),
        **({"filters": model.filters} if model.filters else {}),
        **({"context": context} if model.context is not None else {}),
    }


def _arrays(model: Model, prefix: str = "") -> dict[str, np.ndarray]:
    arrays = {}
    for n, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        arrays[f"{prefix}w{n}"] = np.ascontiguousarray(w, dtype=np.float32)
        arrays[f"{prefix}b{n}"] = np.ascontiguousarray(b, dtype=np.float32)
    arrays[f"{prefix}norm_mean"] = np.asarray(model.norm_mean, np.float32)
    arrays[f"{prefix}norm_std"] = np.asarray(model.norm_std, np.float32)
    if model.filters:
        arrays[f"{prefix}filter_mean"] = np.asarray(model.filter_mean, np.float32)
        arrays[f"{prefix}filter_std"] = np.asarray(model.filter_std, np.float32)
    if model.context is not None:
        arrays.update(_arrays(model.context, prefix + CONTEXT_PREFIX))
    return arrays


def save_model(model: Model, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` (``.npz``) atomically: a temporary file, then a rename."""
    path = Path(path)
    arrays = {"header": np.array(json.dumps(model_header(model), default=_json_default)), **_arrays(model)}
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ModelFileError(f"{path}: cannot save the model, the folder {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_model(path: str | os.PathLike) -> Model:
    """Read a model written by :func:`save_model`; raises :class:`ModelFileError` if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise ModelFileError(f"{path}: not a napari-mpf model file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelFileError(f"{path}: not a napari-mpf model file (not a readable .npz: {exc})") from exc
    if "header" not in arrays:
        raise ModelFileError(f"{path}: not a napari-mpf model file (no 'header' entry)")
    try:
        header = json.loads(str(arrays["header"]))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a napari-mpf model file (format is {header.get('format') if isinstance(header, dict) else None!r})")
    version = header.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file version {version} is newer than this napari-mpf reads "
            f"({FORMAT_VERSION}); upgrade napari-mpf"
        )
    try:
        return _model_from(header, arrays)
    except (KeyError, TypeError, ValueError, SpecError) as exc:
        raise ModelFileError(f"{path}: the model file is inconsistent or incomplete ({exc})") from exc


def _model_from(header: dict, arrays: dict, prefix: str = "") -> Model:
    context = None
    if header.get("context") is not None:
        context = _model_from(header["context"], arrays, prefix + CONTEXT_PREFIX)
    arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix) and CONTEXT_PREFIX not in k[len(prefix):]}
    layers = [LayerSpec(d["kind"], tuple(int(s) for s in d["size"]), int(d["maps"])) for d in header["layers"]]
    for layer in layers:
        if layer.kind not in ("conv", "pool", "fc"):
            raise ValueError(f"unknown layer kind {layer.kind!r}")
    spec = resolve_spec(layers, tuple(header["window"]))
    if list(spec.window) != list(header["window"]):
        raise ValueError(f"window {header['window']} does not match the layers")
    filters = check_filters(header.get("filters"))
    if context is not None and (context.in_channels != int(header["in_channels"])
                                or context.n_classes != int(header["n_classes"])):
        raise ValueError("the first stage's channels or classes do not match the model's")
    n_stage = int(header["in_channels"]) + (0 if context is None else context.n_classes - 1)
    n_in = n_stage * n_outputs(filters)
    weights, biases = [], []
    n = 0
    for layer in spec.layers:
        if layer.kind == "pool":
            continue
        w, b = arrays[f"w{n}"], arrays[f"b{n}"]
        expected = (layer.maps, n_in, *layer.size)
        if w.shape != expected or b.shape != (layer.maps,):
            raise ValueError(f"w{n} has shape {w.shape}, b{n} {b.shape}; expected {expected} and ({layer.maps},)")
        if w.dtype != np.float32 or b.dtype != np.float32:
            raise ValueError(f"w{n}/b{n} must be float32")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ValueError(f"w{n}/b{n} contain NaN or infinite values")
        weights.append(w)
        biases.append(b)
        n_in = layer.maps
        n += 1
    n_feat = weights[-1].shape[1]
    superpixels, image_head = header.get("superpixels"), header.get("image_head")
    for name, config, shape in (
        ("superpixels", superpixels, (spec.n_classes, n_feat)),
        ("image_head", image_head, (spec.n_classes - 1, 2 * (n_feat + spec.n_classes))),
    ):
        if config is None:
            continue
        w, b = arrays[f"w{n}"], arrays[f"b{n}"]
        if w.shape != shape or b.shape != shape[:1] or w.dtype != np.float32 or b.dtype != np.float32:
            raise ValueError(f"the {name} weights w{n}/b{n} have shapes {w.shape}/{b.shape}; expected {shape}")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ValueError(f"w{n}/b{n} contain NaN or infinite values")
        weights.append(w)
        biases.append(b)
        n += 1
    if superpixels is not None:
        superpixels = {"size": float(superpixels["size"]), "compactness": float(superpixels["compactness"]),
                       "pool": str(superpixels["pool"])}
        if superpixels["pool"] not in ("max", "mean") or not superpixels["size"] > 0 or not superpixels["compactness"] > 0:
            raise ValueError(f"bad superpixel settings {superpixels}")
    if image_head is not None:
        image_head = {"loss_weight": float(image_head["loss_weight"])}
    if f"w{n}" in arrays:
        raise ValueError(f"more weight arrays than layers (w{n})")
    mean = arrays["norm_mean"].astype(np.float32)
    std = arrays["norm_std"].astype(np.float32)
    if mean.shape != (n_stage,) or std.shape != mean.shape or np.any(std <= 0):
        raise ValueError("bad normalisation arrays")
    filter_mean = filter_std = None
    if filters:
        filter_mean = arrays["filter_mean"].astype(np.float32)
        filter_std = arrays["filter_std"].astype(np.float32)
        n_extra = n_stage * (n_outputs(filters) - 1)
        if (filter_mean.shape != (n_extra,) or filter_std.shape != (n_extra,) or not np.all(filter_std > 0)
                or not np.isfinite(filter_mean).all() or not np.isfinite(filter_std).all()):
            raise ValueError("bad filter_mean / filter_std arrays")
    names = [str(s) for s in header["class_names"]]
    if len(names) != spec.n_classes or spec.n_classes != int(header["n_classes"]):
        raise ValueError("class names / n_classes do not match the last layer")
    if header["activation"] not in ("tanh", "relu"):
        raise ValueError(f"unknown activation {header['activation']!r}")
    return Model(
        spec=spec,
        activation=header["activation"],
        in_channels=int(header["in_channels"]),
        weights=weights,
        biases=biases,
        class_names=names,
        norm_mean=mean,
        norm_std=std,
        provenance=dict(header.get("provenance", {})),
        superpixels=superpixels,
        image_head=image_head,
        filters=filters,
        filter_mean=filter_mean,
        filter_std=filter_std,
        context=context,
    )


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in the model header")

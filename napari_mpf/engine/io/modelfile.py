"""The weights file: an ``.npz`` (no pickle) with a JSON header; see docs/model-file.md."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ..network.features import check_filters, n_outputs
from ..network.model import Model
from ..network.spec import LayerSpec, SpecError, check_network_size, resolve_spec
from .atomic import make_temp

__all__ = ["FORMAT", "FORMAT_VERSION", "MODEL_SUFFIX", "ModelFileError", "save_model", "load_model", "model_header"]

FORMAT = "napari-mpf-model"
FORMAT_VERSION = 4  # 2 adds the optional heads, 3 the input filters, 4 auto-context; a file says the lowest version it needs
#: the file name suffix of model files: napari's reader claims ``*.mpf.npz`` (any ``.npz`` loads)
MODEL_SUFFIX = ".mpf.npz"
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
    """Write ``model`` to ``path`` (``.npz``) atomically: a temporary file, then a rename.

    Temporary files a killed earlier save of ``path`` left behind are removed first. Non-finite
    numbers in the header (e.g. a ``final_loss`` of NaN) are written as ``null``: the header is
    strict JSON.
    """
    path = Path(path)
    header = json.dumps(_finite_json(model_header(model)), default=_json_default, allow_nan=False)
    arrays = {"header": np.array(header), **_arrays(model)}
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ModelFileError(f"{path}: cannot save the model, the folder {directory} does not exist")
    fd, tmp = make_temp(path)
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


#: the smallest ``norm_std`` / ``filter_std`` a model file may hold (a trained model's are at least
#: 1e-6, see :func:`~napari_mpf.engine.network.model.normalisation_from`); smaller ones overflow float32
MIN_STD = 1e-8
#: errors that mean a file's content does not make a model (all become :class:`ModelFileError`)
_CONTENT_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, SpecError,
                   RecursionError, ZeroDivisionError)


def load_model(path: str | os.PathLike) -> Model:
    """Read a model written by :func:`save_model`; raises :class:`ModelFileError` if it cannot.

    Any file that is not a consistent model (truncated, edited, foreign, with NaN, infinite or
    vanishing normalisation, or a network too large to evaluate) raises :class:`ModelFileError`.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file")
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    arrays = _read_arrays(path)
    if "header" not in arrays:
        raise ModelFileError(f"{path}: not a napari-mpf model file (no 'header' entry)")
    try:
        header = json.loads(str(arrays["header"]))
    except (json.JSONDecodeError, RecursionError) as exc:
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
    except _CONTENT_ERRORS as exc:
        raise ModelFileError(f"{path}: the model file is inconsistent or incomplete ({exc})") from exc


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, each ``.npy`` entry's declared size checked against the
    entry's before anything is allocated; the file is closed whatever happens."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                raise ModelFileError(f"{path}: not a napari-mpf model file (not an .npz archive)")
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                arrays = {}
                for info in zf.infolist():
                    if not info.filename.endswith(".npy"):
                        raise ModelFileError(f"{path}: not a napari-mpf model file (entry {info.filename!r})")
                    with zf.open(info) as entry:
                        arrays[info.filename[:-4]] = _read_npy(entry, info.file_size, info.filename)
                return arrays
    except ModelFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib and numpy's header parser raise many types
        raise ModelFileError(
            f"{path}: not a napari-mpf model file (not a readable .npz: {type(exc).__name__}: {exc})"
        ) from None


def _read_npy(fh, size: int, name: str) -> np.ndarray:
    """One ``.npy`` entry of ``size`` bytes (no pickled objects)."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(fh)
    else:
        raise ValueError(f"{name}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError(f"{name}: holds Python objects")
    count = 1
    for n in shape:
        count *= int(n)
    nbytes = count * dtype.itemsize
    if nbytes > size:
        raise ValueError(f"{name}: declares {nbytes} bytes of data in an entry of {size} bytes")
    data = fh.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"{name}: truncated ({len(data)} of {nbytes} bytes)")
    array = np.frombuffer(bytearray(data), dtype=dtype, count=count)
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def _check_scale(mean: np.ndarray, std: np.ndarray, n: int, names: tuple[str, str], label: str) -> None:
    """Refuse normalisation arrays that would make the network's input NaN or infinite."""
    if mean.shape != (n,) or std.shape != (n,):
        raise ValueError(f"bad {label} arrays {names[0]} / {names[1]}: shapes {mean.shape} and {std.shape}, "
                         f"expected ({n},)")
    if not np.isfinite(mean).all():
        raise ValueError(f"{names[0]} (the {label} mean) holds NaN or infinite values")
    if not (np.isfinite(std).all() and np.all(std >= MIN_STD)):
        raise ValueError(f"{names[1]} (the {label} standard deviation) must be finite and at least {MIN_STD:g}, "
                         f"got {std.tolist()}")


def _model_from(header: dict, arrays: dict, prefix: str = "") -> Model:
    context = None
    if header.get("context") is not None:
        if not isinstance(header["context"], dict):
            raise ValueError("'context' must be a model header")
        context = _model_from(header["context"], arrays, prefix + CONTEXT_PREFIX)
    arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix) and CONTEXT_PREFIX not in k[len(prefix):]}
    if not isinstance(header["layers"], list) or not header["layers"]:
        raise ValueError("'layers' must be a non-empty list")
    layers = [LayerSpec(d["kind"], tuple(int(s) for s in d["size"]), int(d["maps"])) for d in header["layers"]]
    for layer in layers:
        if layer.kind not in ("conv", "pool", "fc") or len(layer.size) != 2 or min(layer.size) < 1:
            raise ValueError(f"bad layer {layer.kind!r} of size {layer.size}")
        if layer.kind != "pool" and layer.maps < 1:
            raise ValueError(f"layer {layer.kind!r} has {layer.maps} maps")
    if layers[-1].kind != "fc":
        raise ValueError("the last layer is not fully connected")
    window = header["window"]
    if not isinstance(window, list) or len(window) != 2 or min(int(v) for v in window) < 1:
        raise ValueError(f"bad window {window!r}")
    spec = resolve_spec(layers, (int(window[0]), int(window[1])))
    if list(spec.window) != list(window):
        raise ValueError(f"window {window} does not match the layers")
    filters = header.get("filters")
    if filters is not None and not isinstance(filters, dict):
        raise ValueError("'filters' must be a dictionary of filter settings")
    filters = check_filters(filters)
    if context is not None and (context.in_channels != int(header["in_channels"])
                                or context.n_classes != int(header["n_classes"])):
        raise ValueError("the first stage's channels or classes do not match the model's")
    if int(header["in_channels"]) < 1:
        raise ValueError(f"in_channels is {header['in_channels']}")
    n_stage = int(header["in_channels"]) + (0 if context is None else context.n_classes - 1)
    n_in = n_stage * n_outputs(filters)
    check_network_size(spec, n_in)
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
    mean = _float32(arrays["norm_mean"], "norm_mean")
    std = _float32(arrays["norm_std"], "norm_std")
    _check_scale(mean, std, n_stage, ("norm_mean", "norm_std"), "normalisation")
    filter_mean = filter_std = None
    if filters:
        filter_mean = _float32(arrays["filter_mean"], "filter_mean")
        filter_std = _float32(arrays["filter_std"], "filter_std")
        _check_scale(filter_mean, filter_std, n_stage * (n_outputs(filters) - 1), ("filter_mean", "filter_std"),
                     "input filters'")
    if not isinstance(header["class_names"], list):
        raise ValueError("'class_names' must be a list")
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


def _float32(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name} has dtype {a.dtype}; expected float32")
    with np.errstate(over="ignore"):
        return a.astype(np.float32)  # a float64 beyond float32's range becomes inf: refused as such


def _finite_json(obj):
    """``obj`` with non-finite floats replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return _finite_json(obj.tolist())
    return obj


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in the model header")

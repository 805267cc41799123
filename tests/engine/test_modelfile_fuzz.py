"""Bad model files: only ModelFileError escapes load_model, and a file that loads never predicts NaN.

Issue 22, items 1 and 6: NaN/vanishing normalisation, empty layer lists, non-dict settings, a
truncated ``.npy`` header inside the zip and truncated zips; then a hypothesis test that mutates
valid files (bytes, JSON header, array dtypes, shapes and values).
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_mpf.engine import (
    InputError,
    Model,
    ModelFileError,
    load_model,
    predict_proba,
    save_model,
)
from napari_mpf.engine.network.heads import add_image_head


def _model(filters: bool = False, context: bool = False) -> Model:
    m = Model.create("C3x3x2, FC4", in_channels=1, n_classes=2, seed=1, filters="multiscale" if filters else None)
    if context:
        m = Model.create("C3x3x2, FC4", in_channels=1, n_classes=2, seed=2, context=m)
        add_image_head(m, 1.0)
    return m


def _arrays(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _with(arrays: dict, header: dict | None = None, **changes) -> dict:
    out = dict(arrays)
    if header is not None:
        out["header"] = np.array(json.dumps(header))
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    out = {}
    for name, kw in (("plain", {}), ("filters", {"filters": True}), ("context", {"context": True})):
        path = save_model(_model(**kw), d / f"{name}.npz")
        out[name] = path.read_bytes()
    return out


def _load_bytes(tmp_path, data: bytes, name="m.npz"):
    path = tmp_path / name
    path.write_bytes(data)
    return load_model(path)


def _check_outcome(tmp_path, data: bytes) -> None:
    """load_model raises ModelFileError or gives a model whose probabilities are finite (or refused)."""
    try:
        model = _load_bytes(tmp_path, data)
    except ModelFileError:
        return
    if max(model.window) > 64 or model.n_params > 10**5:
        return  # valid but slow to evaluate here; its size was checked by load_model
    image = np.random.default_rng(0).normal(size=(model.in_channels, 12, 12)).astype(np.float32)
    try:
        p = predict_proba(model, image)
    except InputError:
        return
    assert np.isfinite(p).all()


@pytest.mark.parametrize("change", [
    {"norm_std": np.array([np.nan], np.float32)},
    {"norm_std": np.array([1e-45], np.float32)},
    {"norm_mean": np.array([-np.inf], np.float32)},
    {"norm_std": np.array([0.0], np.float32)},
    {"norm_std": np.array([1e300])},  # float64 beyond float32: infinite once cast
])
def test_nan_or_vanishing_normalisation_is_refused(tmp_path, files, change):
    arrays = _arrays(io.BytesIO(files["plain"]))
    with pytest.raises(ModelFileError, match="normalisation"):
        _load_bytes(tmp_path, _npz(_with(arrays, **change)))


def test_vanishing_filter_std_is_refused(tmp_path, files):
    arrays = _arrays(io.BytesIO(files["filters"]))
    std = arrays["filter_std"].copy()
    std[3] = 1e-45
    with pytest.raises(ModelFileError, match="filters' standard deviation"):
        _load_bytes(tmp_path, _npz(_with(arrays, filter_std=std)))


def test_header_shapes_that_used_to_escape(tmp_path, files):
    arrays = _arrays(io.BytesIO(files["context"]))
    header = json.loads(str(arrays["header"]))
    for bad in (dict(header, layers=[]), dict(header, filters=[1, 2]), dict(header, filters="multiscale!"),
                dict(header, context=[1]), dict(header, context="x"), dict(header, layers="C3x3"),
                dict(header, window=[0, 0]), dict(header, class_names="ab")):
        with pytest.raises(ModelFileError):
            _load_bytes(tmp_path, _npz(_with(arrays, header=bad)))


def test_truncated_npy_header_inside_the_zip(tmp_path, files):
    """A .npy header whose dict is cut short (numpy's parser raised tokenize.TokenError)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(files["plain"])) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "w0.npy":
                i = data.index(b"}")
                data = data[:i] + b" " + data[i + 1:]
            dst.writestr(info.filename, data)
    with pytest.raises(ModelFileError, match="not a readable .npz"):
        _load_bytes(tmp_path, buf.getvalue())


def test_truncated_zip_closes_the_file(tmp_path, files):
    import gc

    data = files["plain"]
    gc.collect()  # files other tests left to the collector are not this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for cut in (10, len(data) // 3, len(data) - 30):
            with pytest.raises(ModelFileError):
                _load_bytes(tmp_path, data[:cut])
        gc.collect()
    assert not [w for w in caught if "unclosed file" in str(w.message) and str(tmp_path) in str(w.message)]


def test_a_folder_is_not_a_missing_file(tmp_path):
    (tmp_path / "m.npz").mkdir()
    with pytest.raises(ModelFileError, match="is a folder"):
        load_model(tmp_path / "m.npz")


def test_array_claiming_more_data_than_it_holds(tmp_path, files):
    """A shape edited in a .npy header must not allocate what it claims (here 4 TB)."""
    raw = files["plain"]
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "w0.npy":
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    head, {"descr": "<f4", "fortran_order": False, "shape": (2 * 10**12, 1, 3, 3)})
                data = head.getvalue() + data[-72:]  # the 18 float32 weights
            dst.writestr(info.filename, data)
    with pytest.raises(ModelFileError, match="declares"):
        _load_bytes(tmp_path, buf.getvalue())


# ----------------------------------------------------------------------------- hypothesis

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _set(obj, path, value, delete=False):
    if not path:
        return value
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


_dtypes = st.sampled_from(["float32", "float64", "float16", "int32", "uint8", ">f4", "bool", "complex64", "U3"])
_odd_values = st.sampled_from([np.nan, np.inf, -np.inf, 1e-45, 0.0, -1.0, 3e38, 1e30])


@st.composite
def mutated(draw, files):
    raw = files[draw(st.sampled_from(sorted(files)))]
    kind = draw(st.sampled_from(["bytes", "json", "array"]))
    if kind == "bytes":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
            i = draw(st.integers(0, max(len(data) - 1, 0)))
            if op == "flip" and data:
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif op == "cut":
                del data[i:]
            elif op == "insert":
                data[i:i] = draw(st.binary(min_size=1, max_size=8))
            else:
                del data[i:i + draw(st.integers(1, 16))]
        return bytes(data)
    arrays = _arrays(io.BytesIO(raw))
    if kind == "json":
        header = json.loads(str(arrays["header"]))
        path = draw(st.sampled_from(list(_paths(header))))
        delete = bool(path) and draw(st.booleans())
        header = _set(header, path, draw(_json_values), delete)
        arrays["header"] = np.array(json.dumps(header))
        return _npz(arrays)
    key = draw(st.sampled_from(sorted(arrays)))
    op = draw(st.sampled_from(["drop", "dtype", "shape", "value"]))
    a = arrays[key]
    if op == "drop":
        del arrays[key]
    elif op == "dtype":
        arrays[key] = np.zeros(a.shape, draw(_dtypes))
    elif op == "shape":
        shape = draw(st.lists(st.integers(0, 5), max_size=4))
        arrays[key] = np.ones(shape, a.dtype if a.dtype.kind != "U" else np.float32)
    elif a.size and a.dtype.kind == "f":
        a = a.copy()
        a.flat[draw(st.integers(0, a.size - 1))] = draw(_odd_values)
        arrays[key] = a
    return _npz(arrays)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_files_raise_only_model_file_error(tmp_path, files, data):
    _check_outcome(tmp_path, data.draw(mutated(files)))

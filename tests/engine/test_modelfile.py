"""The weights file: round trip, bit-identical predictions, and clear errors on bad files."""

import json
import zipfile

import numpy as np
import pytest

from napari_mpf.engine import Model, ModelFileError, load_model, predict_proba, save_model
from napari_mpf.engine.io.modelfile import FORMAT_VERSION


@pytest.fixture
def model():
    m = Model.create("C3x3x4, MPF2x2, C3x3x5, FC6", in_channels=2, n_classes=3, seed=4,
                     class_names=["bg", "cell", "edge"])
    m.norm_mean = np.array([0.5, 2.0], np.float32)
    m.norm_std = np.array([2.0, 0.25], np.float32)
    m.provenance.update(steps=12, note="test")
    return m


def test_round_trip_is_bit_identical(tmp_path, model):
    path = save_model(model, tmp_path / "m.npz")
    loaded = load_model(path)
    assert loaded.spec == model.spec
    assert loaded.class_names == ["bg", "cell", "edge"]
    assert loaded.provenance["note"] == "test"
    image = np.random.default_rng(0).normal(size=(2, 23, 31)).astype(np.float32)
    np.testing.assert_array_equal(predict_proba(loaded, image), predict_proba(model, image))
    assert not list(tmp_path.glob("*.tmp"))


def test_file_is_readable_without_napari_mpf(tmp_path, model):
    """The documented layout: JSON header, w<n>/b<n> float32, norm_mean/std; no pickle."""
    path = save_model(model, tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(str(data["header"]))
        assert header["format"] == "napari-mpf-model" and header["version"] == 1  # no heads: still version 1
        assert header["window"] == list(model.window)
        assert [d["kind"] for d in header["layers"]] == ["conv", "pool", "conv", "fc", "fc"]
        assert data["w0"].shape == (4, 2, 3, 3) and data["w0"].dtype == np.float32
        assert data["b2"].shape == (6,) and data["b3"].shape == (3,)
        np.testing.assert_array_equal(data["norm_std"], model.norm_std)


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_bad_files_give_clear_errors(tmp_path, model):
    good = save_model(model, tmp_path / "good.npz")
    raw = good.read_bytes()
    cases = {
        "missing": (tmp_path / "nope.npz", "no such"),
        "truncated": (tmp_path / "trunc.npz", "not a napari-mpf model file"),
        "text": (tmp_path / "text.npz", "not a napari-mpf model file"),
        "foreign": (_write_npz(tmp_path / "foreign.npz", a=np.zeros(3)), "no 'header'"),
    }
    cases["truncated"][0].write_bytes(raw[: len(raw) // 2])
    cases["text"][0].write_text("hello")
    for path, message in cases.values():
        with pytest.raises(ModelFileError, match=message):
            load_model(path)

    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays["header"]))
    newer = dict(header, version=FORMAT_VERSION + 1)
    with pytest.raises(ModelFileError, match="newer"):
        load_model(_write_npz(tmp_path / "newer.npz", **{**arrays, "header": np.array(json.dumps(newer))}))
    other = dict(header, format="something-else")
    with pytest.raises(ModelFileError, match="not a napari-mpf"):
        load_model(_write_npz(tmp_path / "other.npz", **{**arrays, "header": np.array(json.dumps(other))}))
    bad_shape = {**arrays, "w1": np.zeros((5, 3, 3, 3), np.float32)}
    with pytest.raises(ModelFileError, match="w1"):
        load_model(_write_npz(tmp_path / "shape.npz", **bad_shape))
    missing = {k: v for k, v in arrays.items() if k != "b0"}
    with pytest.raises(ModelFileError, match="inconsistent or incomplete"):
        load_model(_write_npz(tmp_path / "missing.npz", **missing))
    with pytest.raises(ModelFileError, match="JSON"):
        load_model(_write_npz(tmp_path / "json.npz", **{**arrays, "header": np.array("{oops")}))


def test_failed_save_leaves_the_old_file(tmp_path, model, monkeypatch):
    path = save_model(model, tmp_path / "m.npz")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        save_model(model, path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_zip_is_plain_npz(tmp_path, model):
    path = save_model(model, tmp_path / "m.npz")
    with zipfile.ZipFile(path) as z:
        assert all(name.endswith(".npy") for name in z.namelist())


def test_saved_file_is_readable_by_others_and_folder_errors_are_clear(tmp_path, model):
    import os
    import stat

    path = save_model(model, tmp_path / "m.npz")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(ModelFileError, match="does not exist"):
        save_model(model, tmp_path / "missing" / "m.npz")
    tif = tmp_path / "image.tif"
    tif.write_bytes(b"II*\x00" + bytes(100))
    with pytest.raises(ModelFileError, match="not an .npz archive"):
        load_model(tif)

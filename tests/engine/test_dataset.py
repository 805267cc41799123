"""Training data from a folder of (image, labels) pairs, loaded one pair at a time."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import tifffile

from napari_mpf.engine import InputError, Model, TrainConfig, Trainer, fit
from napari_mpf.engine.training import dataset as D
from napari_mpf.engine.training.dataset import PairDataset, model_for_dataset
from napari_mpf.engine.training.synthetic import two_texture_sample

SPEC = "C3x3x4, MPF2x2, C3x3x4, FC8"


@pytest.fixture
def folder(tmp_path):
    """images/ and labels/ with 4 pairs (one unpainted) and a file holding a 2-slice stack."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for k in range(4):
        s = two_texture_sample((36, 40), seed=k, stroke_length=14)
        tifffile.imwrite(tmp_path / "images" / f"im{k}.tif", s.image)
        strokes = s.strokes if k != 2 else np.zeros_like(s.strokes)
        tifffile.imwrite(tmp_path / "labels" / f"im{k}_labels.tif", strokes.astype(np.uint8))
    s = [two_texture_sample((36, 40), seed=10 + k, stroke_length=14) for k in range(2)]
    np.save(tmp_path / "images" / "im10.npy", np.stack([x.image for x in s]))
    np.save(tmp_path / "labels" / "im10.npy", np.stack([x.strokes for x in s]).astype(np.uint8))
    return tmp_path


def test_folder_pairs_stacks_and_lazy_loading(folder, monkeypatch):
    ds = PairDataset.from_folder(folder)
    assert len(ds) == 6  # 4 single images + a stack of 2, in natural order (im10 last)
    assert [n.split("/")[-1] for n in ds.names][-2:] == ["im10.npy[0]", "im10.npy[1]"]
    loads = []
    original = ds._load
    monkeypatch.setattr(ds, "_load", lambda i: (loads.append(i), original(i))[1])
    image, labels = ds[5]
    assert image.shape == (1, 36, 40) and image.dtype == np.float32 and labels.dtype == np.int32
    ds[5]
    assert loads == [5]  # cached
    for i in range(4):
        ds.pair(i)
    assert len(ds._cache) == 2  # only a couple of pairs stay in memory
    info = ds.check(in_channels=1, n_classes=2)
    assert info.classes == [1, 2] and ds.usable == [0, 1, 3, 4, 5]


def test_single_folder_naming_and_errors(tmp_path):
    s = two_texture_sample((30, 30), seed=1, stroke_length=12)
    tifffile.imwrite(tmp_path / "a.tif", s.image)
    tifffile.imwrite(tmp_path / "a_mask.tif", s.strokes.astype(np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", s.image)  # no labels: ignored
    ds = PairDataset.from_folder(tmp_path)
    assert len(ds) == 1 and ds.label_files[0].name == "a_mask.tif"
    with pytest.raises(InputError, match="no strokes"):
        tifffile.imwrite(tmp_path / "a_mask.tif", np.zeros((30, 30), np.uint8))
        PairDataset.from_folder(tmp_path).check()
    with pytest.raises(InputError, match="one label file per image"):
        PairDataset([tmp_path / "a.tif"], [])
    with pytest.raises(InputError, match="not a folder"):
        PairDataset.from_folder(tmp_path / "nope")
    tifffile.imwrite(tmp_path / "a_mask.tif", np.zeros((31, 30), np.uint8))
    with pytest.raises(InputError, match="must match"):
        PairDataset.from_folder(tmp_path).scan()


def test_streamed_normalisation_and_model_match_in_memory(folder):
    ds = PairDataset.from_folder(folder)
    images, labels = ds.load_all()
    streamed = model_for_dataset(ds, spec=SPEC, seed=2)
    in_memory = Model.for_data(images, labels, spec=SPEC, seed=2)
    np.testing.assert_allclose(streamed.norm_mean, in_memory.norm_mean, rtol=1e-6)
    np.testing.assert_allclose(streamed.norm_std, in_memory.norm_std, rtol=1e-6)
    for a, b in zip(streamed.weights, in_memory.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    # what the Trainer takes today: lists in memory
    losses = [p.loss for p in Trainer(in_memory, images, labels, TrainConfig(steps=3, seed=1)).run()]
    assert len(losses) == 3 and np.isfinite(losses).all()


def test_trainer_streams_pairs_like_in_memory_training(folder):
    ds = PairDataset.from_folder(folder, cache=0)
    images, labels = ds.load_all()
    model = model_for_dataset(ds, spec=SPEC, seed=2)
    config = TrainConfig(steps=8, seed=3)
    streamed = Trainer(model.copy(), ds, None, config)
    in_memory = Trainer(model.copy(), images, labels, config)
    assert [p.loss for p in streamed.run()] == [p.loss for p in in_memory.run()]
    for a, b in zip(streamed.model.weights, in_memory.model.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    shift = streamed.model.provenance["prior_shift"]
    assert shift == in_memory.model.provenance["prior_shift"]
    # a run that continues on the same files keeps the correction, as in memory
    again = Trainer(streamed.model, ds, None, TrainConfig(steps=2, seed=4))
    list(again.run())
    assert again.model.provenance["prior_shift"] == shift


def test_label_suffixes():
    from pathlib import Path

    assert D._strip_label_suffix(Path("x_labels.tif")) == "x"
    assert D._strip_label_suffix(Path("x.labels.png")) == "x"
    assert D._is_label_name(Path("cell_mask.npy")) and not D._is_label_name(Path("cell.npy"))


def test_a_streamed_second_stage_predicts_each_image_once_and_trains_as_in_memory(folder, monkeypatch):
    T = importlib.import_module("napari_mpf.engine.training.train")  # the module (the package exports train())
    ds = PairDataset.from_folder(folder, cache=0)
    images, labels = ds.load_all()
    model = model_for_dataset(ds, spec=SPEC, seed=2)
    config = TrainConfig(steps=24, seed=3, context=SPEC, calibrate=False)  # calibrating predicts too
    calls = []
    original = T.predict_proba
    monkeypatch.setattr(T, "predict_proba", lambda m, x, *a, **k: (calls.append(m), original(m, x, *a, **k))[1])
    streamed = Trainer(model.copy(), ds, None, config)
    streamed_losses = [p.loss for p in streamed.run()]
    firsts = [m for m in calls if m is streamed.model.context]
    assert 0 < len(firsts) <= len(ds.usable) < 12  # 12 second-stage steps over 5 usable images
    in_memory = Trainer(model.copy(), images, labels, config)
    assert streamed_losses == [p.loss for p in in_memory.run()]
    for a, b in zip(streamed.model.weights, in_memory.model.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    # calibrated (the default): the same class priors from the streamed images as from memory
    config.calibrate = True
    streamed = fit(model.copy(), ds, None, config)
    in_memory = fit(model.copy(), images, labels, config)
    assert streamed.provenance["prior_shift"] == in_memory.provenance["prior_shift"]
    assert streamed.context.provenance["prior_shift"] == in_memory.context.provenance["prior_shift"]
    for a, b in zip(streamed.biases, in_memory.biases, strict=True):
        np.testing.assert_array_equal(a, b)

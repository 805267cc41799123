"""OME-Zarr (NGFF) in and out: an NGFF image written by ome-zarr is read at a level with its axes and
scale; a ``*.ome.zarr`` prediction store validates against the NGFF models (ome-zarr-models), equals
whole-image prediction bit for bit at level 0, holds every 2**L-th pixel at level L, and resumes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr
from _cases import make_image, randomise
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import get_metadata, write_multiscales_metadata
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v04.image import Image as NgffImage04
from ome_zarr_models.v04.image_label import ImageLabel as ImageLabel04
from ome_zarr_models.v05.image import Image as NgffImage
from ome_zarr_models.v05.image_label import ImageLabel

from napari_mpf.engine import InputError, Model, predict_proba, segment
from napari_mpf.engine.io.read import read_images
from napari_mpf.engine.io.volume import open_volume
from napari_mpf.engine.scale import CountSettings, ZarrPrediction, encode_probabilities

SCALE = {"z": 3.0, "y": 0.5, "x": 0.25}
SHIFT = {"z": 10.0, "y": 1.0, "x": 2.0}


def write_ngff(path, data: np.ndarray, axes: str, levels: int = 1, unit: str = "micrometer", version: str = "0.5") -> None:
    """An NGFF image (0.5 on zarr v3, or 0.4 on zarr v2) of ``data`` (axes in NGFF order) with
    ``levels`` levels (stride 2 in y, x), its metadata written by ome-zarr."""
    v3 = version == "0.5"
    g = zarr.open_group(str(path), mode="w", zarr_format=3 if v3 else 2)
    datasets = []
    for lv in range(levels):
        s = 2**lv
        arr = data[..., ::s, ::s]
        g.create_array(f"s{lv}", data=arr, chunks=tuple(1 if a in "tcz" else 16 for a in axes),
                       **({"dimension_names": tuple(axes)} if v3 else {}))
        datasets.append({"path": f"s{lv}", "coordinateTransformations": [
            {"type": "scale", "scale": [SCALE.get(a, 1.0) * (s if a in "yx" else 1) for a in axes]},
            {"type": "translation", "translation": [SHIFT.get(a, 0.0) for a in axes]},
        ]})
    kinds = {"t": "time", "c": "channel"}
    write_multiscales_metadata(g, datasets, axes=[
        {"name": a, "type": kinds.get(a, "space"), **({"unit": unit} if a in "zyx" else {})} for a in axes
    ], name="input", fmt=FormatV05() if v3 else FormatV04())


@pytest.fixture(scope="module")
def tiny():
    model = Model.create("C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2", 1, 2, activation="tanh", seed=5,
                         class_names=["cytoplasm", "membrane"])
    randomise(model, 5)
    return model


@pytest.fixture(scope="module")
def stack():
    return np.stack([make_image((41, 38), 1, seed=s).reshape(41, 38) for s in range(3)]).astype(np.float32)


@pytest.fixture(scope="module")
def ngff(tmp_path_factory, stack):
    path = tmp_path_factory.mktemp("ngff") / "in.ome.zarr"
    write_ngff(path, stack[None, None], "tczyx", levels=2)
    return path


def test_ngff_input_level_axes_and_scale(ngff, stack, tmp_path):
    vol = open_volume(ngff)
    assert vol.shape == (3, 1, 41, 38) and vol.stack
    assert vol.ngff.spatial == ("z", "y", "x") and vol.ngff.scale == (3.0, 0.5, 0.25)
    assert vol.ngff.translation == (10.0, 1.0, 2.0) and vol.ngff.units == ("micrometer",) * 3
    np.testing.assert_array_equal(vol.read(1, slice(3, 9), slice(5, 7))[0], stack[1, 3:9, 5:7])
    low = open_volume(ngff, level=1)
    assert low.shape == (3, 1, 21, 19) and low.ngff.scale == (3.0, 1.0, 0.5)
    np.testing.assert_array_equal(low.read(2)[0], stack[2, ::2, ::2])
    images = read_images(ngff, level=1)
    assert images.stack and len(images) == 3
    np.testing.assert_array_equal(images.arrays[0], stack[0, ::2, ::2])
    with pytest.raises(InputError, match="level 2 does not exist; the image has level"):
        open_volume(ngff, level=2)
    with pytest.raises(InputError, match="choose a resolution with --level"):
        open_volume(ngff, key="s0")
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_array("images", data=stack)
    with pytest.raises(InputError, match="--level applies to OME-Zarr images"):
        open_volume(plain, level=0)


def test_ngff_channels_and_time_axes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (3, 20, 24), dtype=np.uint8)
    write_ngff(tmp_path / "cyx.ome.zarr", rgb, "cyx")
    vol = open_volume(tmp_path / "cyx.ome.zarr")
    assert vol.shape == (1, 3, 20, 24) and not vol.stack and vol.ngff.spatial == ("y", "x")
    np.testing.assert_array_equal(vol.read(0), rgb)
    czyx = np.random.default_rng(1).random((2, 4, 20, 24)).astype(np.float32)  # channels before slices
    write_ngff(tmp_path / "czyx.ome.zarr", czyx, "czyx")
    vol = open_volume(tmp_path / "czyx.ome.zarr")
    assert vol.shape == (4, 2, 20, 24)
    np.testing.assert_array_equal(vol.read(3, slice(2, 5)), czyx[:, 3, 2:5])
    np.testing.assert_array_equal(read_images(tmp_path / "czyx.ome.zarr").arrays[1], czyx[:, 1])
    write_ngff(tmp_path / "t2.ome.zarr", np.zeros((2, 1, 20, 24), np.float32), "tzyx")
    with pytest.raises(InputError, match="axis 't' has length 2"):
        open_volume(tmp_path / "t2.ome.zarr")


def _arrays(path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    out = {}
    for name in ("0", "1", "2", "labels/segmentation/0", "labels/segmentation/1", "labels/segmentation/2",
                 "napari_mpf/class_pixels", "napari_mpf/counts"):
        if name in g:
            out[name] = np.asarray(g[name][...])
    return out


def test_ome_zarr_output_validates_and_equals_whole_image(tiny, ngff, stack, tmp_path):
    out = tmp_path / "out.ome.zarr"
    job = ZarrPrediction(tiny, open_volume(ngff), out, chunks=(16, 12), counts=CountSettings(min_area=2), levels=3)
    job.run("threads", num_workers=2)
    assert job.complete()
    root = zarr.open_group(str(out), mode="r")
    image = open_ome_zarr(root)
    assert isinstance(image, NgffImage)  # the NGFF 0.5 model validates the image, its labels and arrays
    assert isinstance(open_ome_zarr(root["labels/segmentation"]), ImageLabel)
    want = np.stack([predict_proba(tiny, v) for v in stack])
    seg = np.stack([segment(p) for p in want])
    got = _arrays(out)
    np.testing.assert_array_equal(got["labels/segmentation/0"], seg)
    np.testing.assert_array_equal(got["0"], encode_probabilities(want, "uint8").transpose(1, 0, 2, 3))
    for lv in (1, 2):
        s = 2**lv
        np.testing.assert_array_equal(got[f"labels/segmentation/{lv}"], seg[:, ::s, ::s])
        np.testing.assert_array_equal(got[str(lv)], got["0"][..., ::s, ::s])
    ome = root.attrs["ome"]
    axes = [a["name"] for a in ome["multiscales"][0]["axes"]]
    assert axes == ["c", "z", "y", "x"]
    for lv, ds in enumerate(root["labels/segmentation"].attrs["ome"]["multiscales"][0]["datasets"]):
        scale, shift = (t[t["type"]] for t in ds["coordinateTransformations"])
        assert scale == [3.0, 0.5 * 2**lv, 0.25 * 2**lv] and shift == [10.0, 1.0, 2.0]
    label = root["labels/segmentation"].attrs["ome"]["image-label"]
    assert [p["class"] for p in label["properties"]] == ["cytoplasm", "membrane"]
    assert [c["label-value"] for c in label["colors"]] == [1, 2]
    assert [c["label"] for c in ome["omero"]["channels"]] == ["cytoplasm", "membrane"]
    assert (got["napari_mpf/counts"] >= 0).all()


def test_ome_zarr_of_one_image_crop_and_slice_step(tiny, stack, tmp_path):
    one = ZarrPrediction(tiny, stack[0], tmp_path / "one.ome.zarr", chunks=16, levels=2)
    one.run("sync")
    root = zarr.open_group(str(tmp_path / "one.ome.zarr"), mode="r")
    assert root["0"].shape == (2, 41, 38) and root["labels/segmentation/1"].shape == (21, 19)
    np.testing.assert_array_equal(root["labels/segmentation/0"][...], segment(predict_proba(tiny, stack[0])))
    assert isinstance(open_ome_zarr(root), NgffImage)
    # a crop and every other slice of an NGFF input: the output sits where it came from
    src = tmp_path / "five.ome.zarr"
    write_ngff(src, np.concatenate([stack, stack[:2]])[None, None], "tczyx")
    vol = open_volume(src, slices="1::2", crop="4:36,8:32")
    ZarrPrediction(tiny, vol, tmp_path / "part.ome.zarr", chunks=16, levels=1).run("sync")
    ds = zarr.open_group(str(tmp_path / "part.ome.zarr"), mode="r").attrs["ome"]["multiscales"][0]["datasets"][0]
    scale, shift = (t[t["type"]] for t in ds["coordinateTransformations"])
    assert scale == [1.0, 6.0, 0.5, 0.25] and shift == [0.0, 10.0 + 3.0, 1.0 + 4 * 0.5, 2.0 + 8 * 0.25]
    with pytest.raises(InputError, match="evenly spaced slices"):
        ZarrPrediction(tiny, open_volume(src, slices="0,1,3"), tmp_path / "uneven.ome.zarr", chunks=16)


def test_ome_zarr_levels_need_divisible_chunks(tiny, stack, tmp_path):
    with pytest.raises(InputError, match="chunk sides divisible by 4"):
        ZarrPrediction(tiny, stack, tmp_path / "a.ome.zarr", chunks=(16, 10), levels=3)
    with pytest.raises(InputError, match="pyramid levels apply to an OME-Zarr output"):
        ZarrPrediction(tiny, stack, tmp_path / "a.zarr", chunks=16, levels=2)
    assert not (tmp_path / "a.ome.zarr").exists() and not (tmp_path / "a.zarr").exists()


def test_ome_zarr_resume_equals_uninterrupted(tiny, ngff, tmp_path):
    counts = CountSettings()
    vol = open_volume(ngff)
    ZarrPrediction(tiny, vol, tmp_path / "full.ome.zarr", chunks=(16, 12), counts=counts, levels=2).run("threads")
    stop = threading.Event()

    def progress(p):
        if p.done >= 5:
            stop.set()

    part = ZarrPrediction(tiny, vol, tmp_path / "part.ome.zarr", chunks=(16, 12), counts=counts, levels=2)
    part.run("threads", progress=progress, stop=stop)
    assert not part.complete()
    again = ZarrPrediction(tiny, open_volume(ngff), tmp_path / "part.ome.zarr", chunks=(16, 12), counts=counts, levels=2)
    assert again.resumed
    again.run("threads")
    full, resumed = _arrays(tmp_path / "full.ome.zarr"), _arrays(tmp_path / "part.ome.zarr")
    assert full.keys() == resumed.keys() and "labels/segmentation/1" in full
    for key in full:
        np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)
    with pytest.raises(InputError, match="different levels"):
        ZarrPrediction(tiny, vol, tmp_path / "part.ome.zarr", chunks=(16, 12), levels=1)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_labels_written_into_the_input_image(tiny, stack, tmp_path, version):
    """``--out IMAGE.ome.zarr/labels/NAME``: the segmentation becomes a label image of the input with
    the image's levels (and shapes, rounded down here), in its NGFF version; the image is untouched."""
    src = tmp_path / "em.ome.zarr"
    write_ngff(src, stack[None, None], "tczyx", levels=2, version=version)
    before = {name: zarr.open_array(str(src), path=name, mode="r")[...] for name in ("s0", "s1")}
    zarr.open_group(str(src), mode="r+")["s1"].resize((1, 1, 3, 20, 19))  # as resize-based writers round: down
    job = ZarrPrediction(tiny, open_volume(src), src / "labels" / "mpf", chunks=(16, 12))
    job.run("threads")
    assert job.complete() and job.layout.levels == 2
    root = zarr.open_group(str(src), mode="r")
    image = open_ome_zarr(root)
    assert isinstance(image, NgffImage if version == "0.5" else NgffImage04)
    assert image.labels is not None and get_metadata(root["labels"])["labels"] == ["mpf"]
    assert isinstance(open_ome_zarr(root["labels/mpf"]), ImageLabel if version == "0.5" else ImageLabel04)
    seg = np.stack([segment(predict_proba(tiny, v)) for v in stack])
    np.testing.assert_array_equal(root["labels/mpf/0"][...], seg)
    np.testing.assert_array_equal(root["labels/mpf/1"][...], seg[:, :40:2, ::2])
    np.testing.assert_array_equal(root["s0"][...], before["s0"])
    again = ZarrPrediction(tiny, open_volume(src), src / "labels" / "mpf", chunks=(16, 12))
    assert again.resumed and again.run("sync").total == 0
    with pytest.raises(InputError, match="keeps no probabilities|does not keep"):
        ZarrPrediction(tiny, open_volume(src), src / "labels" / "other", chunks=16, counts=CountSettings())
    with pytest.raises(InputError, match="at --level 0, without --crop or --slices"):
        ZarrPrediction(tiny, open_volume(src, crop="0:20,0:20"), src / "labels" / "other", chunks=16)
    zarr.open_group(str(src / "labels" / "theirs"), mode="w", zarr_format=3 if version == "0.5" else 2).attrs["x"] = 1
    with pytest.raises(InputError, match="not written by napari-mpf"):
        ZarrPrediction(tiny, open_volume(src), src / "labels" / "theirs", chunks=16, overwrite=True)
    assert not (src / "labels" / "other").exists()

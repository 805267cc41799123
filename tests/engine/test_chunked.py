"""Chunked prediction with dask equals whole-image prediction; zarr output with resume; lazy volumes."""

from __future__ import annotations

import pickle
import threading

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from _cases import make_image, randomise

from napari_mpf.engine import InputError, Model, predict_logits, predict_proba, segment
from napari_mpf.engine.io.volume import ArrayVolume, open_volume
from napari_mpf.engine.post.objects import count_objects
from napari_mpf.engine.scale import (
    CountSettings,
    ZarrPrediction,
    decode_probabilities,
    halo,
    predict_dask,
    predict_region,
    segment_dask,
)

# (spec, channels, classes, activation, image (H, W), chunkings) — odd sizes, chunks smaller than the
# window, one-pixel chunks, rectangular and 3x3 pooling, even windows, images smaller than the window
CASES = [
    ("C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC3", 1, 3, "tanh", (37, 45), [(5, 7), (1, 3), (16, 45), (37, 45)]),
    ("C2x2x3, MPF3x3, C2x2x4, FC5, FC2", 1, 2, "relu", (29, 31), [(4, 4), (13, 8), (29, 31)]),
    ("C3x2x4, MPF2x3, C2x3x4, MPF3x2, C2x2x3, FC4, FC2", 1, 2, "tanh", (23, 40), [(3, 5), (11, 17)]),
    ("steel", 1, 2, "relu", (50, 61), [(7, 9), (25, 31)]),
    ("fast", 2, 3, "tanh", (27, 33), [(10, 11)]),
    ("C3x3x5, MPF2x2, C2x2x4, FC6, FC4", 3, 4, "tanh", (19, 21), [(2, 3), (6, 21)]),
    ("C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2", 1, 2, "relu", (5, 4), [(1, 1), (2, 3)]),
]


def _model(spec, channels, classes, activation, seed=0):
    model = Model.create(spec, channels, classes, activation=activation, seed=seed)
    randomise(model, seed)
    return model


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0][:12]}-{c[4][0]}x{c[4][1]}" for c in CASES])
def test_chunked_equals_whole_image(case):
    spec, channels, classes, activation, shape, chunkings = case
    model = _model(spec, channels, classes, activation, seed=len(spec))
    image = make_image(shape, channels, seed=7)
    image = image[0] if channels == 1 and image.ndim == 3 else image
    whole = predict_proba(model, image)
    whole_logits = predict_logits(model, image)
    for chunks in chunkings:
        arr = da.from_array(image, chunks=(-1, *chunks) if image.ndim == 3 else chunks)
        got = predict_dask(model, arr, chunks=chunks).compute(scheduler="sync")
        assert got.shape == whole.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6, err_msg=f"chunks {chunks}")
        logits = predict_dask(model, arr, chunks=chunks, output="logits").compute(scheduler="sync")
        np.testing.assert_allclose(logits, whole_logits, rtol=0, atol=1e-5)
        seg = predict_dask(model, arr, chunks=chunks, output="segmentation").compute(scheduler="sync")
        np.testing.assert_array_equal(seg, segment(whole))


def test_stack_rgb_and_threads():
    model = _model("C3x3x5, MPF2x2, C2x2x4, FC6, FC2", 3, 2, "relu", seed=3)
    rng = np.random.default_rng(1)
    stack = (rng.random((4, 23, 26, 3)) * 255).astype(np.uint8)  # napari RGB layout, channels last
    arr = da.from_array(stack, chunks=(1, 9, 7, 3))
    probs = predict_dask(model, arr, rgb=True)
    assert probs.shape == (4, 2, 23, 26) and probs.chunks[0] == (1, 1, 1, 1)
    got = probs.compute(scheduler="threads")
    want = np.stack([predict_proba(model, np.moveaxis(s, -1, 0)) for s in stack])
    np.testing.assert_allclose(got, want, atol=1e-6)
    seg = segment_dask(probs).compute()
    np.testing.assert_array_equal(seg, np.stack([segment(p) for p in want]))
    # one slice of the lazy result computes only that slice's chunks
    np.testing.assert_allclose(probs[2].compute(), want[2], atol=1e-6)
    with pytest.raises(InputError, match="channel"):
        predict_dask(model, da.zeros((10, 10)))


def test_cache_tiles_and_numpy_input():
    model = _model("C3x3x4, MPF2x2, C3x3x4, FC8, FC2", 1, 2, "tanh")
    stack = np.stack([make_image((20, 22), 1, seed=s).reshape(20, 22) for s in range(3)])
    probs = predict_dask(model, stack, cache_tiles=3)  # NumPy in: one chunk per slice
    assert probs.chunks[0] == (1, 1, 1)
    first = probs.compute()
    again = probs[:, 1].compute()  # served from the cache
    np.testing.assert_array_equal(again, first[:, 1])


def test_dask_reflect_boundary_is_not_numpy_reflect():
    """Why the mirror padding is done inside the blocks: dask's 'reflect' repeats the edge pixel."""
    x = np.arange(6.0)
    padded = da.overlap.overlap(da.from_array(x, chunks=3), depth={0: 2}, boundary={0: "reflect"}).compute()
    assert padded[:2].tolist() == [1.0, 0.0]  # NumPy 'symmetric'
    assert np.pad(x, 2, mode="reflect")[:2].tolist() == [2.0, 1.0]


def test_predict_region_reads_only_the_halo():
    model = _model("steel", 1, 2, "tanh")
    image = make_image((70, 64), 1, seed=4).reshape(70, 64)
    (bh, ah), (bw, aw) = halo(model)
    boxes = []

    def read(rs, cs):
        boxes.append((rs.start, rs.stop, cs.start, cs.stop))
        return image[rs, cs]

    out = predict_region(model, read, image.shape, (30, 40), (20, 31))
    np.testing.assert_allclose(out, predict_proba(model, image)[:, 30:40, 20:31], atol=1e-6)
    assert boxes == [(30 - bh, 40 + ah, 20 - bw, 31 + aw)]


# ----------------------------------------------------------------------------- zarr output


@pytest.fixture(scope="module")
def tiny():
    return _model("C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2", 1, 2, "tanh", seed=5)


@pytest.fixture(scope="module")
def volume():
    return np.stack([make_image((41, 38), 1, seed=s).reshape(41, 38) for s in range(4)]).astype(np.float32)


def _arrays(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][...]) for k in ("probabilities", "segmentation", "class_pixels", "counts") if k in g}


def test_zarr_prediction_equals_whole_image_and_counts(tiny, volume, tmp_path):
    job = ZarrPrediction(tiny, volume, tmp_path / "p.zarr", chunks=(11, 15), prob_dtype="float32", counts=CountSettings(min_area=2))
    assert job.grid == (4, 3) and not job.resumed
    res = job.run("threads", num_workers=2)
    assert (res.chunks_done, res.chunks_total, res.done, res.total) == (48, 48, 52, 52)
    out = _arrays(tmp_path / "p.zarr")
    want = np.stack([predict_proba(tiny, v) for v in volume])
    np.testing.assert_allclose(out["probabilities"], want, atol=1e-6)
    np.testing.assert_array_equal(out["segmentation"], np.stack([segment(p) for p in want]))
    for z in range(4):
        ref = count_objects(want[z, 1], 0.5, 2)
        assert out["counts"][z].tolist() == [ref.count, int(ref.pixels.sum()), int(ref.defect_present)]
    assert job.complete()
    csv = job.write_csv(tmp_path / "c.csv").read_text().splitlines()
    assert csv[0] == "slice,name,count,object_pixels,defect_present,fraction_class 1,fraction_class 2"
    assert len(csv) == 5 and csv[1].startswith("0,array[0],")


def test_uint8_encoding_and_float16(tiny, volume, tmp_path):
    want = np.stack([predict_proba(tiny, v) for v in volume])
    for dtype, tol in (("uint8", 0.5 / 255 + 1e-7), ("float16", 1e-3)):
        ZarrPrediction(tiny, volume, tmp_path / f"{dtype}.zarr", chunks=20, prob_dtype=dtype).run("sync")
        stored = _arrays(tmp_path / f"{dtype}.zarr")["probabilities"]
        assert stored.dtype == np.dtype(dtype)
        assert np.abs(decode_probabilities(stored, dtype) - want).max() <= tol


def test_resumed_run_equals_uninterrupted(tiny, volume, tmp_path):
    counts = CountSettings()
    ZarrPrediction(tiny, volume, tmp_path / "full.zarr", chunks=(13, 16), counts=counts).run("threads")
    stop = threading.Event()

    def progress(p):
        if p.done >= 7:
            stop.set()

    part = ZarrPrediction(tiny, volume, tmp_path / "part.zarr", chunks=(13, 16), counts=counts)
    first = part.run("threads", progress=progress, stop=stop)
    assert not part.complete()
    todo, _ = part.pending()
    # chunks already running when the stop came are finished and kept too
    assert first.chunks_done >= 7 and 0 < len(todo) <= 48 - first.chunks_done
    again = ZarrPrediction(tiny, volume, tmp_path / "part.zarr", chunks=(13, 16), counts=counts)
    assert again.resumed and len(again.pending()[0]) == len(todo)
    second = again.run("threads")
    assert second.skipped == 48 - len(todo) and second.chunks_done == 48
    assert again.complete()
    full, resumed = _arrays(tmp_path / "full.zarr"), _arrays(tmp_path / "part.zarr")
    for key in full:
        np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)
    # nothing left: a third run does nothing
    assert ZarrPrediction(tiny, volume, tmp_path / "part.zarr", chunks=(13, 16), counts=counts).run("sync").total == 0


def test_store_from_another_setup_is_refused(tiny, volume, tmp_path):
    ZarrPrediction(tiny, volume, tmp_path / "a.zarr", chunks=20).run("sync")
    with pytest.raises(InputError, match="different chunks"):
        ZarrPrediction(tiny, volume, tmp_path / "a.zarr", chunks=16)
    other = tiny.copy()
    other.biases[0][0] += 1
    with pytest.raises(InputError, match="different model"):
        ZarrPrediction(other, volume, tmp_path / "a.zarr", chunks=20)
    assert not ZarrPrediction(other, volume, tmp_path / "a.zarr", chunks=20, overwrite=True).resumed
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not a napari-mpf prediction store"):
        ZarrPrediction(tiny, volume, tmp_path / "junk", chunks=20)


def test_counts_added_later_only_count(tiny, volume, tmp_path):
    ZarrPrediction(tiny, volume, tmp_path / "a.zarr", chunks=20).run("sync")
    job = ZarrPrediction(tiny, volume, tmp_path / "a.zarr", chunks=20, counts=CountSettings(threshold=0.6))
    todo, uncounted = job.pending()
    assert todo == [] and uncounted == [0, 1, 2, 3]
    assert job.run("sync").total == 4
    assert (_arrays(tmp_path / "a.zarr")["counts"] >= 0).all()


# ----------------------------------------------------------------------------- lazy volumes


def test_volumes_read_regions_of_every_format(tmp_path, volume):
    stack = (volume * 1000).astype(np.int16)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    tifffile.imwrite(tmp_path / "c.tif", stack, compression="zlib")
    np.save(tmp_path / "s.npy", stack)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    g.create_array("images", data=stack, chunks=(1, 16, 16))
    g.create_array("other", data=stack[:1])
    (tmp_path / "folder").mkdir()
    for z in range(len(stack)):
        tifffile.imwrite(tmp_path / "folder" / f"img{z + 1}.tif", stack[z])  # img10 sorts after img9
    kinds = {}
    for name in ("s.tif", "c.tif", "s.npy", "s.zarr", "folder"):
        vol = open_volume(tmp_path / name, slices="1:4", crop="3:40,2:30")
        kinds[name] = getattr(vol, "_kind", "folder")
        assert vol.shape == (3, 1, 37, 28) and vol.stack
        np.testing.assert_array_equal(vol.read(1, slice(5, 9), slice(0, 28))[0], stack[2, 8:12, 2:30])
        clone = pickle.loads(pickle.dumps(vol))  # what a dask worker gets: no open handles
        np.testing.assert_array_equal(clone.read(2), stack[3:4, 3:40, 2:30])
    assert kinds == {"s.tif": "tiff-memmap", "c.tif": "tiff-zarr", "s.npy": "npy", "s.zarr": "zarr", "folder": "folder"}
    assert open_volume(tmp_path / "folder").names[:2] == ["img1.tif", "img2.tif"]
    assert open_volume(tmp_path / "s.zarr").name.endswith("s.zarr:images")  # the default key
    with pytest.raises(InputError, match="has no array 'nope'"):
        open_volume(tmp_path / "s.zarr", key="nope")
    rgb = ArrayVolume(np.zeros((2, 12, 10, 3), np.uint8), rgb=True)
    assert rgb.shape == (2, 3, 12, 10) and rgb.read(0).shape == (3, 12, 10)


def test_zarr_prediction_from_a_compressed_tiff(tiny, volume, tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", volume, compression="zlib")
    vol = open_volume(tmp_path / "c.tif")
    ZarrPrediction(tiny, vol, tmp_path / "o.zarr", chunks=(9, 38), prob_dtype="float32").run("threads")
    want = np.stack([predict_proba(tiny, v) for v in volume])
    np.testing.assert_allclose(_arrays(tmp_path / "o.zarr")["probabilities"], want, atol=1e-6)

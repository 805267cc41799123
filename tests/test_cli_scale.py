"""``napari-mpf predict --out STORE.zarr``: big volumes chunk by chunk, resumable, on dask or a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from cli_helpers import run, user_error

from napari_mpf.engine import Model, load_model, predict_proba, save_model, segment
from napari_mpf.engine.io.volume import open_volume
from napari_mpf.engine.scale import CountSettings, ZarrPrediction

TINY = "C3x3x4, MPF2x2, C3x3x4, MPF2x2, C2x2x3, FC6, FC2"
REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A random tiny model, a 5-slice stack as .tif, a folder of images and a zarr store."""
    d = tmp_path_factory.mktemp("scale")
    model = Model.create(TINY, 1, 2, seed=2, class_names=["background", "defect"])
    rng = np.random.default_rng(0)
    for w in model.weights:
        w[...] = rng.normal(size=w.shape) * 1.5 / np.sqrt(np.prod(w.shape[1:]))
    save_model(model, d / "m.npz")
    yy, xx = np.mgrid[:45, :52]
    stack = np.stack([np.sin(xx / (3 + z)) * np.cos(yy / 4) + 0.3 * rng.normal(size=(45, 52)) for z in range(5)]).astype(np.float32)
    tifffile.imwrite(d / "stack.tif", stack)
    (d / "folder").mkdir()
    for z in range(5):
        tifffile.imwrite(d / "folder" / f"s{z}.tif", stack[z])
    zarr.open_group(str(d / "in.zarr"), mode="w").create_array("images", data=stack, chunks=(1, 20, 20))
    return d, stack


def _store(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][...]) for k in ("probabilities", "segmentation", "class_pixels", "counts") if k in g}


def test_zarr_output_equals_in_memory_prediction(data, capsys, tmp_path):
    d, stack = data
    model = load_model(d / "m.npz")
    want = np.stack([predict_proba(model, s) for s in stack])
    code, out, err = run(capsys, "predict", "--model", d / "m.npz", "--image", d / "stack.tif", "--out", tmp_path / "a.zarr",
                         "--chunks", "16,21", "--scheduler", "threads", "--prob-dtype", "float32", "--counts", tmp_path / "a.csv", "-q")
    assert code == 0, err
    assert "5 slice(s) of 45x52" in out and "chunks 16x21" in out and "9 per slice" in out
    a = _store(tmp_path / "a.zarr")
    np.testing.assert_allclose(a["probabilities"], want, atol=1e-6)
    np.testing.assert_array_equal(a["segmentation"], np.stack([segment(p) for p in want]))
    # the in-memory path writes the same table
    code, _, err = run(capsys, "predict", "--model", d / "m.npz", "--image", d / "stack.tif", "--out", tmp_path / "b.npy",
                       "--counts", tmp_path / "b.csv")
    assert code == 0, err
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    rows = (tmp_path / "a.csv").read_text().splitlines()
    assert rows[0] == "slice,name,count,object_pixels,defect_present,fraction_background,fraction_defect" and len(rows) == 6
    # folder and zarr inputs, uint8 by default
    for src in ("folder", "in.zarr"):
        code, out, err = run(capsys, "predict", "--model", d / "m.npz", "--image", d / src, "--out", tmp_path / f"{src}.out.zarr",
                             "--chunks", "30", "--scheduler", "sync", "-q")
        assert code == 0, err
        got = _store(tmp_path / f"{src}.out.zarr")
        assert got["probabilities"].dtype == np.uint8
        assert np.abs(got["probabilities"] / 255.0 - want).max() <= 0.5 / 255 + 1e-6
        np.testing.assert_array_equal(got["segmentation"], a["segmentation"])
    # folders and stores work for the in-memory outputs too
    code, _, err = run(capsys, "predict", "--model", d / "m.npz", "--image", d / "folder", "--slices", "1:3", "--out", tmp_path / "f.npy")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), want[1:3], atol=1e-6)


def test_resume_after_a_stop_equals_an_uninterrupted_run(data, capsys, tmp_path):
    d, _ = data
    args = ["predict", "--model", d / "m.npz", "--image", d / "stack.tif", "--chunks", "12", "--scheduler", "threads",
            "--counts", tmp_path / "c.csv", "-q"]
    assert run(capsys, *args, "--out", tmp_path / "full.zarr")[0] == 0
    # a run stopped after a few chunks (what Ctrl-C does), with the settings the command line uses
    model, vol = load_model(d / "m.npz"), open_volume(d / "stack.tif")
    stop = threading.Event()
    job = ZarrPrediction(model, vol, tmp_path / "part.zarr", (12, 12), "uint8", CountSettings())
    job.run("threads", progress=lambda p: p.done >= 10 and stop.set(), stop=stop)
    assert not job.complete()
    code, out, err = run(capsys, *args, "--out", tmp_path / "part.zarr")
    assert code == 0, err
    done = int(out.split("resuming: ")[1].split(" of ")[0])
    assert 10 <= done < 5 * 4 * 5 and f"({5 * 4 * 5 - done} chunk(s) this run" in out
    full, part = _store(tmp_path / "full.zarr"), _store(tmp_path / "part.zarr")
    for key in full:
        np.testing.assert_array_equal(part[key], full[key], err_msg=key)
    # a different setup on the same store is refused, --overwrite starts again
    err = user_error(capsys, *args, "--out", tmp_path / "part.zarr", "--prob-dtype", "float16")
    assert "different prob_dtype" in err and "--overwrite" in err
    assert run(capsys, *args, "--out", tmp_path / "part.zarr", "--prob-dtype", "float16", "--overwrite")[0] == 0


def test_local_cluster_equals_local_scheduler(data, capsys, tmp_path):
    """A dask.distributed LocalCluster (2 worker processes on the loopback) writes the same store."""
    pytest.importorskip("distributed")
    d, _ = data
    args = ["predict", "--model", d / "m.npz", "--image", d / "in.zarr", "--chunks", "20,26", "--counts", tmp_path / "c.csv", "-q"]
    t0 = time.perf_counter()
    code, out, err = run(capsys, *args, "--out", tmp_path / "cluster.zarr", "--scheduler", "local", "--workers", "2")
    assert code == 0, err
    assert "local dask cluster: 2 worker process(es)" in out
    assert time.perf_counter() - t0 < 60
    assert run(capsys, *args, "--out", tmp_path / "threads.zarr", "--scheduler", "threads")[0] == 0
    cluster, local = _store(tmp_path / "cluster.zarr"), _store(tmp_path / "threads.zarr")
    assert set(cluster) == {"probabilities", "segmentation", "class_pixels", "counts"}
    for key in cluster:
        np.testing.assert_array_equal(cluster[key], local[key], err_msg=key)


def test_user_errors(data, capsys, tmp_path):
    d, _ = data
    base = ["predict", "--model", d / "m.npz", "--image", d / "stack.tif"]
    assert "drop --segmentation" in user_error(capsys, *base, "--out", tmp_path / "x.zarr", "--segmentation", tmp_path / "s.tif")
    assert "--chunks 0" in user_error(capsys, *base, "--out", tmp_path / "x.zarr", "--chunks", "0", "--scheduler", "sync")
    assert "rows,cols" in user_error(capsys, *base, "--out", tmp_path / "x.zarr", "--chunks", "a,b", "--scheduler", "sync")
    assert "--workers" in user_error(capsys, *base, "--out", tmp_path / "x.npy", "--workers", "2")
    assert "--scheduler applies to a .zarr output" in user_error(capsys, *base, "--out", tmp_path / "x.npy", "--scheduler", "threads")
    assert "--count-class" in user_error(capsys, *base, "--out", tmp_path / "x.npy", "--counts", tmp_path / "c.csv", "--count-class", "7")
    assert "does not exist" in user_error(capsys, *base, "--out", tmp_path / "missing" / "x.zarr")
    (tmp_path / "file.zarr").write_text("x")
    assert "is a file" in user_error(capsys, *base, "--out", tmp_path / "file.zarr")
    assert "does not exist" in user_error(capsys, "predict", "--model", d / "m.npz", "--image", tmp_path / "nope", "--out", tmp_path / "y.zarr")
    (tmp_path / "empty").mkdir()
    assert "holds no images" in user_error(capsys, "predict", "--model", d / "m.npz", "--image", tmp_path / "empty", "--out", tmp_path / "y.zarr")
    # the count class by name
    code, out, _ = run(capsys, *base, "--out", tmp_path / "n.npy", "--counts", tmp_path / "n.csv", "--count-class", "defect")
    assert code == 0 and "'defect' objects" in out


_MEMORY_SCRIPT = r"""
import json, sys
from napari_mpf import cli

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

model, small, big, out = sys.argv[1:5]
common = ["--scheduler", "threads", "--workers", "2", "--chunks", "256", "--counts", out + "/c.csv", "-q"]
# warm up imports, Numba, zarr and dask on a small volume, then measure the big one from here
assert cli.main(["predict", "--model", model, "--image", small, "--out", out + "/warm.zarr", *common]) == 0
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current RSS
    reset = True
except OSError:
    reset = False
base = status("VmRSS:")
assert cli.main(["predict", "--model", model, "--image", big, "--out", out + "/out.zarr", *common]) == 0
print(json.dumps({"base": base, "peak": status("VmHWM:"), "reset": reset}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_volume_larger_than_the_memory_limit_runs_with_bounded_rss(data, tmp_path):
    """48 MB of float32 pixels (+ 38 MB of outputs) go through with less than 32 MB of extra memory."""
    d, _ = data
    limit = 32 * 2**20
    rng = np.random.default_rng(1)
    g = zarr.open_group(str(tmp_path / "big.zarr"), mode="w")
    big = g.create_array("images", shape=(48, 512, 512), chunks=(1, 256, 256), dtype=np.float32)
    yy, xx = np.mgrid[:512, :512].astype(np.float32)
    for z in range(48):
        big[z] = np.sin(xx / (5 + z % 7)) * np.cos(yy / 6) + 0.1 * rng.standard_normal((512, 512), np.float32)
    assert big.nbytes > limit
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, rng.normal(size=(2, 200, 200)).astype(np.float32))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(d / "m.npz"), str(small), str(tmp_path / "big.zarr"), str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = res["peak"] - res["base"]
    assert growth < limit, f"peak RSS grew by {growth / 2**20:.1f} MB for a {big.nbytes / 2**20:.0f} MB volume"
    assert len((tmp_path / "c.csv").read_text().splitlines()) == 49
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["probabilities"].shape == (48, 2, 512, 512)
    print(f"peak RSS growth {growth / 2**20:.1f} MB (reset: {res['reset']}) for {big.nbytes / 2**20:.0f} MB of pixels")


def test_train_on_a_folder_of_pairs_streams_them(tmp_path):
    import tifffile

    from napari_mpf.cli import main
    from napari_mpf.engine import load_model

    rng = np.random.default_rng(0)
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "labels").mkdir()
    for n in range(3):
        image = rng.normal(size=(24, 30)).astype(np.float32)
        labels = np.zeros((24, 30), np.uint8)
        labels[2:5, 3:20] = 1
        labels[15:18, 5:25] = 2
        tifffile.imwrite(tmp_path / "set" / "images" / f"p{n}.tif", image)
        tifffile.imwrite(tmp_path / "set" / "labels" / f"p{n}.tif", labels)
    out = tmp_path / "m.npz"
    code = main(["train", "--pairs", str(tmp_path / "set"), "--spec", "C3x3x4, MPF2x2, C3x3x4, FC8",
                 "--steps", "4", "--out", str(out), "--quiet"])
    assert code == 0
    model = load_model(out)
    assert model.provenance["steps"] == 4 and model.provenance["cli"]["pairs"].endswith("set")
    assert main(["train", "--pairs", str(tmp_path / "set"), "--image", "x.tif", "--out", str(out)]) == 2
    two = tmp_path / "two.npz"  # auto-context on a streamed set: the second stage reads its pairs too
    assert main(["train", "--pairs", str(tmp_path / "set"), "--spec", "C3x3x4, MPF2x2, C3x3x4, FC8", "--filters",
                 "multiscale", "--context", "C3x3x3, MPF2x2, FC6", "--steps", "4", "--out", str(two), "--quiet"]) == 0
    model = load_model(two)
    assert model.context is not None and model.provenance["steps"] == 2 and model.context.provenance["steps"] == 2
    assert np.isfinite(model.filter_mean).all() and model.filter_mean.size == 2 * 18


def test_ome_zarr_in_and_out_on_a_local_cluster(data, capsys, tmp_path):
    """An NGFF image (czyx, written by ome-zarr) -> ``--out X.ome.zarr``: the labels equal in-memory
    prediction, keep the input's scale, and a 2-worker LocalCluster writes the same store as threads."""
    pytest.importorskip("distributed")
    from ome_zarr.writer import write_multiscales_metadata

    d, stack = data
    src = tmp_path / "in.ome.zarr"
    g = zarr.open_group(str(src), mode="w", zarr_format=3)
    g.create_array("0", data=stack[None], chunks=(1, 1, 20, 20))
    write_multiscales_metadata(g, [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0, 0.5, 0.5]}]}],
                               axes=[{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"])
    args = ["predict", "--model", d / "m.npz", "--image", src, "--chunks", "16", "--levels", "2", "--counts", tmp_path / "c.csv", "-q"]
    code, out, err = run(capsys, *args, "--out", tmp_path / "cluster.ome.zarr", "--scheduler", "local", "--workers", "2")
    assert code == 0, err
    assert "OME-Zarr image of the probabilities" in out and "2 level(s)" in out
    assert run(capsys, *args, "--out", tmp_path / "threads.ome.zarr", "--scheduler", "threads")[0] == 0
    cluster = zarr.open_group(str(tmp_path / "cluster.ome.zarr"), mode="r")
    local = zarr.open_group(str(tmp_path / "threads.ome.zarr"), mode="r")
    names = ["0", "1", "labels/segmentation/0", "labels/segmentation/1", "napari_mpf/class_pixels", "napari_mpf/counts"]
    for name in names:
        np.testing.assert_array_equal(cluster[name][...], local[name][...], err_msg=name)
    model = load_model(d / "m.npz")
    np.testing.assert_array_equal(cluster["labels/segmentation/0"][...], np.stack([segment(predict_proba(model, s)) for s in stack]))
    ds = cluster["labels/segmentation"].attrs["ome"]["multiscales"][0]["datasets"][1]
    assert ds["coordinateTransformations"][0]["scale"] == [2.0, 1.0, 1.0]
    assert len((tmp_path / "c.csv").read_text().splitlines()) == 6
    err = user_error(capsys, "predict", "--model", d / "m.npz", "--image", src, "--out", tmp_path / "x.npy", "--levels", "2")
    assert "--levels applies to a .zarr output" in err
    err = user_error(capsys, "predict", "--model", d / "m.npz", "--image", src, "--level", "1", "--out", tmp_path / "y.npy")
    assert "--level 1 does not exist; the image has level(s) 0..0" in err
    assert not (tmp_path / "y.npy").exists()


def test_labels_into_the_input_ome_zarr_open_in_napari(data, capsys, tmp_path):
    """``--out IMAGE.ome.zarr/labels/NAME``: napari's OME-Zarr reader opens the image with our labels
    over it, at the image's scale."""
    from napari_ome_zarr import napari_get_reader
    from ome_zarr.writer import write_multiscales_metadata

    d, stack = data
    src = tmp_path / "em.ome.zarr"
    g = zarr.open_group(str(src), mode="w", zarr_format=3)
    g.create_array("0", data=stack, chunks=(1, 20, 20), dimension_names=("z", "y", "x"))
    write_multiscales_metadata(g, [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}],
                               axes=[{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"])
    code, out, err = run(capsys, "predict", "--model", d / "m.npz", "--image", src, "--out", src / "labels" / "mpf",
                         "--chunks", "16", "--scheduler", "threads", "-q")
    assert code == 0, err
    assert "label image of" in out and "no probabilities" in out
    layers = napari_get_reader(str(src))(str(src))
    kinds = [kind for _, _, kind in layers]
    assert kinds.count("image") == 1 and kinds.count("labels") == 1
    data_, kwargs, _ = layers[kinds.index("labels")]
    assert kwargs["scale"] == [2.0, 0.5, 0.5] and list(kwargs["properties"]["class"]) == ["background", "defect"]
    model = load_model(d / "m.npz")
    level0 = data_[0] if isinstance(data_, list) else data_
    np.testing.assert_array_equal(np.asarray(level0), np.stack([segment(predict_proba(model, s)) for s in stack]))
    err = user_error(capsys, "predict", "--model", d / "m.npz", "--image", d / "stack.tif", "--out", src / "labels" / "x",
                     "--chunks", "16", "--scheduler", "threads", "-q")
    assert "labels are added to the OME-Zarr image that is predicted" in err

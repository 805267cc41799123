"""The command line, run in-process: train, predict, info, demo and every user error (exit code 2)."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from cli_helpers import run, user_error

from napari_mpf import cli
from napari_mpf.cli import train as cli_train
from napari_mpf.engine import load_model, predict_proba, save_model
from napari_mpf.engine.training.synthetic import two_texture_sample

TINY = "C3x3x4, MPF2x2, C3x3x4, FC8"  # the output layer FC2 is appended
REPO = Path(__file__).resolve().parents[1]
ISBI = REPO.parent / "shared" / "data" / "isbi2012_train.npz"




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny synthetic image with strokes as .tif and .npy, a 3-slice stack as .npz."""
    d = tmp_path_factory.mktemp("cli")
    s = two_texture_sample((48, 48), seed=1, stroke_length=20)
    tifffile.imwrite(d / "img.tif", s.image)
    tifffile.imwrite(d / "strokes.tif", s.strokes)
    np.save(d / "img.npy", s.image)
    np.save(d / "strokes.npy", s.strokes)
    stack = np.stack([two_texture_sample((48, 48), seed=k).image for k in range(3)])
    np.savez(d / "stack.npz", images=stack, labels=np.stack([two_texture_sample((48, 48), seed=k).strokes for k in range(3)]))
    return d


@pytest.fixture(scope="module")
def model_file(data):
    path = data / "model.npz"
    code = cli.main(["train", "--image", str(data / "img.tif"), "--labels", str(data / "strokes.tif"), "--spec", TINY,
                     "--steps", "4", "--class-names", "smooth,textured", "--out", str(path), "-q"])
    assert code == 0
    return path


def train_args(data, *extra, image="img.tif", labels="strokes.tif", out="m.npz"):
    return ["train", "--image", data / image, "--labels", data / labels, "--spec", TINY, "--steps", "3", "-q",
            "--out", data / out, *extra]


# ----------------------------------------------------------------------------- happy paths


def test_train_predict_info(data, model_file, capsys):
    code, out, err = run(capsys, "train", "--image", data / "img.npy", "--labels", data / "strokes.npy", "--spec", TINY,
                         "--steps", "3", "--optimizer", "sgd", "--lr", "0.01", "--no-augment", "--seed", "3",
                         "--out", data / "m2.npz")
    assert code == 0, err
    assert "window: 8x8 pixels" in out and "parameters" in out and "final loss" in out and "saved model" in out
    assert "training" in err  # the progress bar

    code, out, err = run(capsys, "predict", "--model", model_file, "--image", data / "img.tif",
                         "--out", data / "p.npy", "--segmentation", data / "seg.tif")
    assert code == 0, err
    p = np.load(data / "p.npy")
    assert p.shape == (2, 48, 48) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    seg = tifffile.imread(data / "seg.tif")
    assert seg.shape == (48, 48) and seg.dtype == np.uint8 and set(np.unique(seg)) <= {1, 2}
    np.testing.assert_array_equal(seg, p.argmax(0) + 1)
    assert "smooth" in out and "%" in out

    code, out, err = run(capsys, "info", model_file)
    assert code == 0, err
    assert "C3x3x4, MPF2x2, C3x3x4, FC8, FC2" in out and "window: 8x8" in out
    assert "1 = smooth, 2 = textured" in out and "provenance" in out and "normalisation" in out
    prov = json.loads(out[out.index("{"):])
    assert prov["cli"]["command"] == "train" and prov["steps"] == 4


def test_reloaded_model_predicts_bit_identically(data, model_file, capsys):
    image = tifffile.imread(data / "img.tif")
    m = load_model(model_file)
    expected = predict_proba(m, image)
    save_model(load_model(model_file), data / "again.npz")
    assert np.array_equal(predict_proba(load_model(data / "again.npz"), image), expected)
    for name in ("a.npy", "b.tif"):
        assert run(capsys, "predict", "--model", model_file, "--image", data / "img.tif", "--out", data / name)[0] == 0
    assert np.array_equal(np.load(data / "a.npy"), expected)
    assert np.array_equal(tifffile.imread(data / "b.tif"), expected)


def test_stack_with_slices_npz_output(data, model_file, capsys):
    code, out, err = run(capsys, "predict", "--model", model_file, "--image", data / "stack.npz", "--slices", "1:3",
                         "--out", data / "p.npz", "--segmentation", data / "seg.npz", "-q")
    assert code == 0, err
    with np.load(data / "p.npz") as z:
        assert z["probabilities"].shape == (2, 2, 48, 48)
        assert list(z["class_names"]) == ["smooth", "textured"]
    with np.load(data / "seg.npz") as z:
        assert z["segmentation"].shape == (2, 48, 48)
    assert "stack.npz:images[1]" in out and "stack.npz:images[2]" in out
    # one selected slice of a stack keeps the stack axis
    assert run(capsys, "predict", "--model", model_file, "--image", data / "stack.npz", "--slices", "0", "--out", data / "one.npy")[0] == 0
    assert np.load(data / "one.npy").shape == (1, 2, 48, 48)


def test_train_on_stack_several_files_and_rgb(data, capsys):
    code, out, err = run(capsys, *train_args(data, "--image", data / "img.npy", "--labels", data / "strokes.npy",
                                             "--slices", "0:2", image="stack.npz", labels="stack.npz"))
    # --slices applies to every file: img.npy is one image, so slicing it is refused
    assert code == 2 and "selects images of a stack" in err
    code, out, err = run(capsys, *train_args(data, "--image-key", "images", "--labels-key", "labels", "--slices", "0:2",
                                             "--crop", "0:40,4:44", image="stack.npz", labels="stack.npz"))
    assert code == 0, err
    assert "2 image(s) (40x40)" in out
    rgb = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)
    iio.imwrite(data / "rgb.png", rgb)
    code, out, err = run(capsys, *train_args(data, image="rgb.png", labels="strokes.tif", out="rgb_model.npz"))
    assert code == 0, err
    assert "3 input channel(s)" in out
    assert load_model(data / "rgb_model.npz").in_channels == 3


def test_label_offset_and_sample_labels(data, capsys):
    truth = two_texture_sample((48, 48), seed=1).truth - 1  # dense 0/1 mask: 0 is a class too
    np.save(data / "dense.npy", truth)
    err = user_error(capsys, *train_args(data, labels="dense.npy"))
    assert "only class 1 is painted" in err and "--label-offset 1" in err
    code, out, err = run(capsys, *train_args(data, "--label-offset", "1", "--sample-labels", "0.05", labels="dense.npy"))
    assert code == 0, err
    painted = out.split("painted pixels: ")[1].splitlines()[0]
    counts = [int(c.split()[-1].replace(",", "")) for c in painted.split(", ")]
    assert abs(sum(counts) - round(0.05 * 48 * 48)) <= 2
    prov = load_model(data / "m.npz").provenance["cli"]
    assert prov["label_offset"] == 1 and prov["sample_labels"] == 0.05
    assert prov["recipe"]["network"] == TINY and prov["recipe"]["steps"] == 3  # the recipe is recorded


def test_sample_labels_is_seeded_and_keeps_a_fraction():
    rng = np.random.default_rng(5)
    masks = [rng.integers(0, 3, (50, 60)) for _ in range(2)]
    a = cli_train.sample_labels(masks, 0.1, seed=7)
    b = cli_train.sample_labels(masks, 0.1, seed=7)
    c = cli_train.sample_labels(masks, 0.1, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    for m, s in zip(masks, a, strict=True):
        assert np.count_nonzero(s) == round(0.1 * np.count_nonzero(m))
        kept = s > 0
        np.testing.assert_array_equal(s[kept], m[kept])  # kept pixels keep their class


def test_ctrl_c_stops_after_the_step_and_saves(data, capsys, monkeypatch):
    import signal

    import napari_mpf.engine as engine

    class Interrupted(engine.Trainer):
        def run(self):
            gen = super().run()
            yield next(gen)
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during step 2: step 2 finishes, then stop
            yield next(gen)
            yield next(gen)

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(cli_train, "Trainer", Interrupted)  # the name the command line imported
    code, out, err = run(capsys, *train_args(data, out="int.npz"))
    assert code == 130
    assert "trained 2 step(s)" in out and "stopped early" in out and "stopping after this step" in err
    assert load_model(data / "int.npz").provenance["cli"]["interrupted"] is True
    assert signal.getsignal(signal.SIGINT) is handler  # restored


def test_second_ctrl_c_aborts_without_saving(data, capsys, monkeypatch):
    import signal

    import napari_mpf.engine as engine

    class Aborted(engine.Trainer):
        def run(self):
            gen = super().run()
            yield next(gen)
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            yield next(gen)

    monkeypatch.setattr(cli_train, "Trainer", Aborted)
    code, out, err = run(capsys, *train_args(data, out="abort.npz"))
    assert code == 130 and "aborted" in err
    assert not (data / "abort.npz").exists()


def test_demo_runs(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--size", "48", "--seconds", "1", "--steps", "3", "--save", tmp_path, "-q")
    assert code == 0, err
    assert "accuracy on the" in out and "region(s)" in out
    assert (tmp_path / "demo_model.mpf.npz").exists() and (tmp_path / "demo_image.tif").exists()


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert "napari-mpf" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


# ----------------------------------------------------------------------------- user errors


def test_error_missing_file(data, capsys):
    assert "does not exist" in user_error(capsys, *train_args(data, image="missing.tif"))
    assert "no such model file" in user_error(capsys, "predict", "--model", data / "none.npz", "--image", data / "img.tif", "--out", data / "x.npy")
    assert "no such model file" in user_error(capsys, "info", data / "none.npz")


def test_error_bad_extensions(data, model_file, capsys):
    (data / "img.bmp").write_bytes(b"BM")
    assert "unknown extension '.bmp'" in user_error(capsys, *train_args(data, image="img.bmp"))
    assert "unknown extension '.pt'" in user_error(capsys, *train_args(data, out="m.pt"))
    assert "unknown extension '.png'" in user_error(capsys, "predict", "--model", model_file, "--image", data / "img.tif", "--out", data / "p.png")
    assert "does not exist" in user_error(capsys, "predict", "--model", model_file, "--image", data / "img.tif", "--out", data / "no" / "p.npy")


def test_error_output_would_overwrite_an_input(data, model_file, capsys):
    assert "is also an input file" in user_error(capsys, *train_args(data, out="stack.npz", image="stack.npz", labels="stack.npz"))
    assert "is also an input file" in user_error(capsys, "predict", "--model", model_file, "--image", data / "img.npy", "--out", data / "img.npy")
    assert "is also an input file" in user_error(capsys, "predict", "--model", model_file, "--image", data / "img.tif",
                                                 "--out", data / "same.npz", "--segmentation", data / "same.npz")


def test_error_shape_mismatch(data, capsys):
    np.save(data / "small.npy", np.ones((40, 48), np.uint8))
    err = user_error(capsys, *train_args(data, labels="small.npy"))
    assert "48x48" in err and "40x48" in err and "must match" in err
    assert "give one label file per image" in user_error(capsys, *train_args(data, "--image", data / "img.npy"))
    np.save(data / "two.npy", np.ones((2, 48, 48), np.uint8))
    assert "gives 1 image(s)" in user_error(capsys, *train_args(data, labels="two.npy"))


def test_error_no_strokes_and_single_class(data, capsys):
    np.save(data / "empty.npy", np.zeros((48, 48), np.uint8))
    assert "no painted pixels" in user_error(capsys, *train_args(data, labels="empty.npy"))
    np.save(data / "one.npy", (tifffile.imread(data / "strokes.tif") > 0).astype(np.uint8))
    assert "only class 1 is painted" in user_error(capsys, *train_args(data, labels="one.npy"))


def test_error_nan_image(data, capsys):
    img = tifffile.imread(data / "img.tif").copy()
    img[3, 4] = np.nan
    np.save(data / "nan.npy", img)
    assert "NaN" in user_error(capsys, *train_args(data, image="nan.npy"))


def test_error_bad_spec_and_preset(data, capsys):
    assert "not understood" in user_error(capsys, "train", "--image", data / "img.tif", "--labels", data / "strokes.tif",
                                          "--spec", "C3x3x4, XX2", "--out", data / "m.npz", "-q")
    assert "unknown preset 'huge'" in user_error(capsys, "train", "--image", data / "img.tif", "--labels", data / "strokes.tif",
                                                 "--preset", "huge", "--out", data / "m.npz", "-q")
    assert "class name" in user_error(capsys, *train_args(data, "--class-names", "a,b,c"))


def test_error_corrupt_model(data, model_file, capsys):
    (data / "corrupt.npz").write_bytes(model_file.read_bytes()[:200])
    for bad in (data / "corrupt.npz", data / "img.tif"):
        assert "not a napari-mpf model file" in user_error(capsys, "info", bad)
        assert "not a napari-mpf model file" in user_error(capsys, "predict", "--model", bad, "--image", data / "img.tif", "--out", data / "x.npy")


def test_error_npz_key_and_slices(data, model_file, capsys):
    err = user_error(capsys, "predict", "--model", model_file, "--image", data / "stack.npz", "--image-key", "raw", "--out", data / "x.npy")
    assert "no array 'raw'" in err and "images, labels" in err
    assert "stop 9 is outside" in user_error(capsys, "predict", "--model", model_file, "--image", data / "stack.npz", "--slices", "0:9", "--out", data / "x.npy")
    assert "bad --slices" in user_error(capsys, "predict", "--model", model_file, "--image", data / "stack.npz", "--slices", "a:b", "--out", data / "x.npy")


def test_error_channels_do_not_match_model(data, model_file, capsys):
    iio.imwrite(data / "rgb2.png", np.zeros((48, 48, 3), np.uint8) + np.arange(3, dtype=np.uint8))
    assert "channel" in user_error(capsys, "predict", "--model", model_file, "--image", data / "rgb2.png", "--out", data / "x.npy")


def test_argparse_rejects_bad_numbers(data, capsys):
    for extra in (["--steps", "0"], ["--sample-labels", "1.5"], ["--lr", "-1"]):
        with pytest.raises(SystemExit) as exc:
            cli.main([str(a) for a in train_args(data, *extra)])
        assert exc.value.code == 2
        capsys.readouterr()


# ----------------------------------------------------------------------------- heads and superpixels


def test_train_with_both_heads_then_info_and_predict(data, capsys):
    code, out, err = run(capsys, *train_args(data, "--superpixel-branch", "60", "--superpixel-pool", "mean",
                                             "--image-head", "0.5", "--class-names", "smooth,textured",
                                             out="heads.npz"))
    assert code == 0, err
    assert "heads: superpixel branch (mean pooling" in out and "image-level head (p(textured present); loss weight 0.5)" in out
    assert "image-level labels from the strokes: 1 present, 0 absent, 0 unknown" in out
    m = load_model(data / "heads.npz")
    assert m.superpixels == {"size": 60.0, "compactness": 0.3, "pool": "mean"}
    assert m.image_head == {"loss_weight": 0.5}

    code, out, err = run(capsys, "info", data / "heads.npz")
    assert code == 0, err
    assert "heads: superpixel branch (mean pooling over SLIC superpixels of ~60 px, compactness 0.3); image-level head" in out

    code, out, err = run(capsys, "predict", "--model", data / "heads.npz", "--image", data / "stack.npz", "--image-key", "images",
                         "--out", data / "hp.npz", "--counts", data / "hc.csv", "-q")
    assert code == 0, err
    assert out.count("image head p(textured) = ") == 3
    with np.load(data / "hp.npz") as z:
        image_p = z["image_probabilities"]
        assert z["probabilities"].shape == (3, 2, 48, 48)
    assert image_p.shape == (3, 1) and ((image_p > 0) & (image_p < 1)).all()
    lines = (data / "hc.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[-1] == "p_image_textured" and header[:3] == ["slice", "name", "count"]
    column = [float(line.split(",")[-1]) for line in lines[1:]]
    np.testing.assert_allclose(column, image_p[:, 0], atol=1e-6)

    # .npy keeps the probabilities only; the image-level ones are printed
    code, out, err = run(capsys, "predict", "--model", data / "heads.npz", "--image", data / "img.tif", "--out", data / "hp.npy")
    assert code == 0, err
    assert "image head p(textured) = " in out and "not in it" in out


def test_train_each_head_alone_and_image_labels_file(data, model_file, capsys):
    assert run(capsys, *train_args(data, "--superpixel-branch", "80", out="sp.npz"))[0] == 0
    m = load_model(data / "sp.npz")
    assert m.superpixels == {"size": 80.0, "compactness": 0.3, "pool": "max"} and m.image_head is None
    (data / "il.txt").write_text("yes\n0\n?\n\n")  # a trailing empty line is not an image
    code, out, err = run(capsys, *train_args(data, "--image-head", "--image-labels", data / "il.txt", "--image-key", "images",
                                             "--labels-key", "labels", image="stack.npz", labels="stack.npz", out="ih.npz"))
    assert code == 0, err
    assert f"image-level labels from {data / 'il.txt'}: 1 present, 1 absent, 1 unknown" in out
    m = load_model(data / "ih.npz")
    assert m.superpixels is None and m.image_head == {"loss_weight": 1.0}
    assert m.provenance["cli"]["image_labels"] == str(data / "il.txt")
    assert "heads:" not in run(capsys, "info", model_file)[1]


def test_predict_refine_superpixels(data, model_file, capsys):
    from napari_mpf.engine.network.predict import normalise
    from napari_mpf.engine.network.superpixels import slic_superpixels

    code, out, err = run(capsys, "predict", "--model", model_file, "--image", data / "img.tif", "--out", data / "raw.npy")
    assert code == 0, err
    code, out, err = run(capsys, "predict", "--model", model_file, "--image", data / "img.tif", "--out", data / "ref.npy",
                         "--segmentation", data / "ref_seg.npy", "--refine-superpixels", "30")
    assert code == 0, err
    assert "superpixels of ~30 px" in out
    raw, ref = np.load(data / "raw.npy"), np.load(data / "ref.npy")
    assert ref.shape == raw.shape and not np.allclose(ref, raw)
    np.testing.assert_allclose(ref.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.load(data / "ref_seg.npy"), ref.argmax(0) + 1)
    model = load_model(model_file)
    segments = slic_superpixels(normalise(model, tifffile.imread(data / "img.tif")), 30, 0.3)
    for s in np.unique(segments):
        values = ref[1][segments == s]
        assert np.ptp(values) < 1e-5  # constant within every superpixel
        np.testing.assert_allclose(values[0], raw[1][segments == s].mean(), atol=1e-5)
    # another compactness, other superpixels
    code, _, err = run(capsys, "predict", "--model", model_file, "--image", data / "img.tif", "--out", data / "ref2.npy",
                       "--refine-superpixels", "30", "--superpixel-compactness", "5")
    assert code == 0, err
    assert not np.array_equal(np.load(data / "ref2.npy"), ref)


def test_error_heads_and_superpixels(data, model_file, capsys):
    assert "--image-labels needs --image-head" in user_error(capsys, *train_args(data, "--image-labels", data / "x.txt"))
    assert "apply only with --superpixel-branch" in user_error(capsys, *train_args(data, "--superpixel-pool", "mean"))
    err = user_error(capsys, "train", "--image", data / "img.tif", "--labels", data / "strokes.tif", "--spec", "IN12x12, C3x3x4, C3x3x2",
                     "--steps", "2", "-q", "--out", data / "x.npz", "--superpixel-branch", "50")
    assert "--superpixel-branch: heads need a network whose last layer is 1x1" in err
    assert "no such file" in user_error(capsys, *train_args(data, "--image-head", "--image-labels", data / "none.txt"))
    (data / "two.txt").write_text("1\n0\n")
    err = user_error(capsys, *train_args(data, "--image-head", "--image-labels", data / "two.txt"))
    assert "2 line(s) for 1 training image(s)" in err
    (data / "bad.txt").write_text("maybe\n")
    assert "'maybe' is not 1/0" in user_error(capsys, *train_args(data, "--image-head", "--image-labels", data / "bad.txt"))
    assert "applies only with --refine-superpixels" in user_error(
        capsys, "predict", "--model", model_file, "--image", data / "img.tif", "--out", data / "x.npy", "--superpixel-compactness", "1")
    assert "does not apply to a .zarr output" in user_error(
        capsys, "predict", "--model", model_file, "--image", data / "img.tif", "--out", data / "x.zarr", "--refine-superpixels", "30")
    assert run(capsys, *train_args(data, "--superpixel-branch", "60", out="sp_zarr.npz"))[0] == 0
    assert "has a superpixel branch, which needs whole images" in user_error(
        capsys, "predict", "--model", data / "sp_zarr.npz", "--image", data / "img.tif", "--out", data / "x.zarr")
    for argv in (train_args(data, "--superpixel-branch", "0"), train_args(data, "--image-head", "-1"),
                 ["predict", "--model", model_file, "--image", data / "img.tif", "--out", data / "x.npy", "--refine-superpixels", "0"]):
        with pytest.raises(SystemExit) as exc:
            cli.main([str(a) for a in argv])
        assert exc.value.code == 2
        assert "must be a positive number" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real data (if present)


@pytest.mark.skipif(not ISBI.exists(), reason=f"{ISBI} not present")
def test_isbi_sparse_labels(tmp_path, capsys):
    t0 = time.perf_counter()
    code, out, err = run(capsys, "train", "--image", ISBI, "--image-key", "images", "--labels", ISBI, "--labels-key", "labels",
                         "--slices", "0:2", "--crop", "0:256,0:256", "--label-offset", "1", "--sample-labels", "0.01",
                         "--spec", TINY, "--steps", "6", "--class-names", "cell,membrane", "--out", tmp_path / "isbi.npz", "-q")
    assert code == 0, err
    painted = out.split("painted pixels: ")[1].splitlines()[0]
    assert "cell" in painted and "membrane" in painted
    assert sum(int(c.split()[-1].replace(",", "")) for c in painted.split(", ")) == pytest.approx(2 * 0.01 * 256 * 256, abs=4)
    code, out, err = run(capsys, "predict", "--model", tmp_path / "isbi.npz", "--image", ISBI, "--image-key", "images",
                         "--slices", "5", "--out", tmp_path / "p.tif", "--segmentation", tmp_path / "s.tif")
    assert code == 0, err
    p = tifffile.imread(tmp_path / "p.tif")
    assert p.shape == (1, 2, 512, 512) and p.dtype == np.float32 and np.isfinite(p).all()
    assert tifffile.imread(tmp_path / "s.tif").shape == (1, 512, 512)
    assert "isbi2012_train.npz:images[5]: cell" in out
    assert time.perf_counter() - t0 < 60


def test_a_closed_output_pipe_is_not_an_error(model_file, monkeypatch):
    """``napari-mpf info model.npz | head``: the reader leaving early ends the command quietly."""

    def closed_pipe(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("builtins.print", closed_pipe)
    monkeypatch.setattr(cli.os, "dup2", lambda *fds: None)  # leave the test's own stdout alone
    assert cli.main(["info", str(model_file)]) == 0


def test_predict_with_test_time_augmentation(data, model_file, capsys):
    from napari_mpf.engine import predict_proba

    code, _, err = run(capsys, "predict", "--model", model_file, "--image", data / "img.tif", "--out", data / "tta.npy",
                       "--segmentation", data / "tta_seg.npy", "--augment")
    assert code == 0, err
    got = np.load(data / "tta.npy")
    want = predict_proba(load_model(model_file), tifffile.imread(data / "img.tif"), augment=True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.load(data / "tta_seg.npy"), got.argmax(0) + 1)
    assert "--augment needs whole images" in user_error(
        capsys, "predict", "--model", model_file, "--image", data / "img.tif", "--out", data / "x.zarr", "--augment")


def test_train_with_input_filters_info_and_predict(data, capsys):
    from napari_mpf.engine import predict_proba

    code, _, err = run(capsys, *train_args(data, "--filters", "multiscale", out="filters.npz"))
    assert code == 0, err
    model = load_model(data / "filters.npz")
    assert model.filters["smooth"] == [1.0, 2.0, 4.0, 8.0, 16.0] and model.weights[0].shape[1] == 19
    code, out, _ = run(capsys, "info", data / "filters.npz")
    assert code == 0 and "input filters (smooth sigma [1.0, 2.0, 4.0, 8.0, 16.0]" in out and "19 channels" in out
    code, _, err = run(capsys, "predict", "--model", data / "filters.npz", "--image", data / "img.tif",
                       "--out", data / "filters.npy")
    assert code == 0, err
    want = predict_proba(model, tifffile.imread(data / "img.tif"))
    np.testing.assert_allclose(np.load(data / "filters.npy"), want, atol=1e-6)


def test_train_for_a_number_of_seconds(data, capsys):
    code, out, err = run(capsys, "train", "--image", data / "img.tif", "--labels", data / "strokes.tif", "--spec", TINY,
                         "--seconds", "1.5", "-q", "--out", data / "timed.npz")
    assert code == 0, err
    model = load_model(data / "timed.npz")
    assert model.provenance["seconds"] == 1.5
    done = model.provenance["cli"]["steps_done"]
    assert done > 3 and f"trained {done} step(s)" in out
    code, _, err = run(capsys, "train", "--image", data / "img.tif", "--labels", data / "strokes.tif", "--spec", TINY,
                       "--seconds", "30", "--steps", "4", "-q", "--out", data / "capped.npz")
    assert code == 0 and load_model(data / "capped.npz").provenance["cli"]["steps_done"] == 4
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--image", str(data / "img.tif"), "--labels", str(data / "strokes.tif"), "--spec", TINY,
                  "--seconds", "-2", "-q", "--out", str(data / "bad.npz")])
    assert exc.value.code == 2 and "positive" in capsys.readouterr().err and not (data / "bad.npz").exists()


def test_train_in_two_stages(data, capsys):
    code, out, err = run(capsys, "train", "--image", data / "img.tif", "--labels", data / "strokes.tif", "--spec", TINY,
                         "--context", "C3x3x3, MPF2x2, FC6", "--steps", "6", "-q", "--out", data / "two.npz")
    assert code == 0, err
    assert "second stage (auto-context): C3x3x3, MPF2x2, FC6, FC2" in out and "trained 6 step(s)" in out
    model = load_model(data / "two.npz")
    assert model.context is not None and model.context.spec.text.startswith(TINY)
    assert model.provenance["steps"] == 3 and model.context.provenance["steps"] == 3
    code, out, err = run(capsys, "info", data / "two.npz")
    assert code == 0 and "version 4" in out and "auto-context" in out
    code, _, err = run(capsys, "predict", "--model", data / "two.npz", "--image", data / "img.tif",
                       "--out", data / "two_seg.tif", "-q")
    assert code == 0, err
    err = user_error(capsys, "train", "--image", data / "img.tif", "--labels", data / "strokes.tif",
                     "--spec", TINY, "--context", "bogus", "-q", "--out", data / "bad.npz")
    assert "bogus" in err.lower() and not (data / "bad.npz").exists()


def test_step_size_sets_the_training_box(data, tmp_path, monkeypatch):
    T = importlib.import_module("napari_mpf.engine.training.train")  # the module (the package exports train())
    seen = []
    original = T.Trainer.__init__

    def spy(self, model, images, labels=None, config=None, image_labels=None):
        seen.append(config.crop)
        original(self, model, images, labels, config, image_labels)

    monkeypatch.setattr(T.Trainer, "__init__", spy)
    for extra, crop in (([], T.TrainConfig.crop), (["--step-size", "24"], 24)):
        out = tmp_path / f"m{crop}.npz"
        assert cli.main(["train", "--image", str(data / "img.tif"), "--labels", str(data / "strokes.tif"),
                         "--spec", "C3x3x4, MPF2x2, C3x3x4, FC8", "--steps", "2", "--out", str(out), "-q", *extra]) == 0
        assert seen[-1] == crop

"""Issue 22: bad inputs, faults and interruptions end in ``napari-mpf: error:`` (exit 2) or 130,
never in a traceback, a silent wrong answer or a half-written output. Read-only and full file
systems are simulated (the tests may run as root, who ignores permissions)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_helpers import run, user_error

from napari_mpf import cli, cli_checks
from napari_mpf.cli import train as cli_train
from napari_mpf.engine import InputError, Model, load_model, predict_proba, save_model
from napari_mpf.engine.io import atomic as atomic_mod
from napari_mpf.engine.training.synthetic import two_texture_sample

TINY = "C3x3x4, MPF2x2, C3x3x4, FC8"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel")
    s = two_texture_sample((48, 48), seed=1, stroke_length=20)
    tifffile.imwrite(d / "img.tif", s.image)
    tifffile.imwrite(d / "strokes.tif", s.strokes)
    np.save(d / "strokes.npy", s.strokes)
    stack = np.stack([two_texture_sample((48, 48), seed=k).image for k in range(3)])
    np.save(d / "stack.npy", stack)
    assert cli.main(["train", "--image", str(d / "img.tif"), "--labels", str(d / "strokes.tif"), "--spec", TINY,
                     "--steps", "3", "--out", str(d / "model.npz"), "-q"]) == 0
    return d


def train_args(d, *extra, out="m.npz", labels="strokes.tif"):
    return ["train", "--image", d / "img.tif", "--labels", d / labels, "--spec", TINY, "--steps", "2", "-q",
            "--out", d / out if isinstance(out, str) else out, *extra]


def _fail_writes_in(monkeypatch, folder: Path, code: int = errno.EROFS):
    """Every temporary file made in ``folder`` fails with ``code`` (a read-only or full file system)."""
    real = atomic_mod.make_temp

    def make_temp(path):
        if Path(path).resolve().parent == folder.resolve() or Path(path).resolve().parent.parent == folder.resolve():
            raise OSError(code, os.strerror(code), str(path))
        return real(path)

    monkeypatch.setattr(atomic_mod, "make_temp", make_temp)
    monkeypatch.setattr(cli_checks, "make_temp", make_temp)  # the name check_writable imported


def _rewrite(path: Path, target: Path, **arrays) -> Path:
    with np.load(path) as z:
        a = {k: z[k] for k in z.files}
    np.savez(target, **{**a, **arrays})
    return target


# ----------------------------------------------------------------------------- 1-3: silent wrong answers


def test_1_model_with_nan_or_vanishing_normalisation_is_refused(data, capsys, tmp_path):
    for std in (np.nan, 1e-45):
        bad = _rewrite(data / "model.npz", tmp_path / "bad.npz", norm_std=np.array([std], np.float32))
        err = user_error(capsys, "predict", "--model", bad, "--image", data / "img.tif", "--out", tmp_path / "p.npy")
        assert "normalisation" in err and "bad.npz" in err
        assert not (tmp_path / "p.npy").exists()


def test_2_float64_beyond_float32_is_refused_in_memory_zarr_and_api(data, capsys, tmp_path):
    img = tifffile.imread(data / "img.tif").astype(np.float64)
    img[:24] = 1e40
    np.save(tmp_path / "big.npy", img)
    err = user_error(capsys, "predict", "--model", data / "model.npz", "--image", tmp_path / "big.npy",
                     "--out", tmp_path / "p.npy")
    assert "beyond the float32 range" in err and "NaN" not in err
    err = user_error(capsys, "predict", "--model", data / "model.npz", "--image", tmp_path / "big.npy",
                     "--out", tmp_path / "p.zarr", "--scheduler", "sync", "-q")
    assert "beyond the float32 range" in err
    with pytest.raises(InputError, match="float32 range"):
        predict_proba(load_model(data / "model.npz"), img)
    err = user_error(capsys, "train", "--image", tmp_path / "big.npy", "--labels", data / "strokes.tif", "--spec", TINY,
                     "--steps", "1", "-q", "--out", tmp_path / "m.npz")
    assert "beyond the float32 range" in err


def test_2_overflow_after_normalisation_is_refused(data):
    model = load_model(data / "model.npz")
    model.norm_std[:] = 1e-8
    with pytest.raises(InputError, match="normalised"):
        predict_proba(model, np.full((16, 16), 1e35))


def test_3_diverging_training_exits_nonzero_and_writes_nothing(data, capsys):
    err = user_error(capsys, *train_args(data, "--lr", "1e300", "--optimizer", "sgd", out="div.npz"))
    assert "diverged" in err and "--lr" in err
    assert not (data / "div.npz").exists()


def test_3_header_is_strict_json_with_a_nan_loss(tmp_path):
    model = Model.create("C3x3x2, FC4", 1, 2)
    model.provenance["final_loss"] = float("nan")
    save_model(model, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        def refuse(name):
            raise ValueError(name)

        header = json.loads(str(z["header"]), parse_constant=refuse)
    assert header["provenance"]["final_loss"] is None


# ----------------------------------------------------------------------------- 4-10: clean errors


def test_4_train_read_only_output_is_refused_before_any_work(data, capsys, tmp_path, monkeypatch):
    _fail_writes_in(monkeypatch, tmp_path)
    code, out, err = run(capsys, *train_args(data, out=tmp_path / "m.npz"))
    assert code == 2 and err.startswith("napari-mpf: error: ") and "read-only" in err, err
    assert "data:" not in out and "trained" not in out  # nothing was read or trained


def test_4_train_disk_full_at_the_end_keeps_the_model(data, capsys, tmp_path, monkeypatch):
    import napari_mpf.engine as engine

    real = engine.save_model
    target = tmp_path / "out"
    target.mkdir()
    rescue = tmp_path / "cwd"
    rescue.mkdir()
    monkeypatch.chdir(rescue)

    def save_model(model, path):
        if Path(path).parent == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(model, path)

    monkeypatch.setattr(cli_train, "save_model", save_model)  # the names the command line imported
    monkeypatch.setattr(cli_checks, "save_model", save_model)
    err = user_error(capsys, *train_args(data, out=target / "m.npz"))
    assert "disk is full" in err and f"saved to {rescue / 'm.npz'}" in err
    assert load_model(rescue / "m.npz").provenance["cli"]["steps_done"] == 2
    assert not list(target.iterdir())


def test_5_predict_zarr_read_only_or_full(data, capsys, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _fail_writes_in(m, tmp_path)
        err = user_error(capsys, "predict", "--model", data / "model.npz", "--image", data / "img.tif",
                         "--out", tmp_path / "p.zarr", "--scheduler", "sync", "-q")
        assert "read-only" in err and not (tmp_path / "p.zarr").exists()
    from napari_mpf.engine.scale import store

    class Full:
        def __setitem__(self, key, value):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store, "_output", lambda *a: Full())
    err = user_error(capsys, "predict", "--model", data / "model.npz", "--image", data / "img.tif",
                     "--out", tmp_path / "q.zarr", "--scheduler", "sync", "-q")
    assert "disk is full" in err and "resume" in err


def test_7_huge_labels_and_networks_are_bounded(data, capsys, tmp_path):
    labels = np.load(data / "strokes.npy").astype(np.int64)
    labels[labels == 2] = 900_000_000
    np.save(tmp_path / "huge.npy", labels)
    assert "at most 255 classes" in user_error(capsys, *train_args(data, labels=tmp_path / "huge.npy", out=tmp_path / "m.npz"))
    err = user_error(capsys, *train_args(data, "--label-offset", "900000000", out=tmp_path / "m.npz"))
    assert "at most 255 classes" in err and "--label-offset 900000000" in err
    forty = ", ".join(["MPF2x2"] * 40)
    for spec in ("C3x3x1000000000", forty):
        err = user_error(capsys, "train", "--image", data / "img.tif", "--labels", data / "strokes.tif", "--spec", spec,
                         "--steps", "1", "-q", "--out", tmp_path / "m.npz")
        assert "would need about" in err and "the limit is 16.0 GB" in err
    assert "would need about" in user_error(capsys, *train_args(data, "--context", "C3x3x1000000000", out=tmp_path / "m.npz"))
    assert not (tmp_path / "m.npz").exists()


def test_8_in_memory_prediction_too_big_points_to_zarr(data, capsys, tmp_path, monkeypatch):
    model = load_model(data / "model.npz")
    assert cli_checks.predict_memory(model, [(20000, 20000)]) > 8 * 2**30
    monkeypatch.setattr(cli_checks, "available_memory", lambda: 10**6)
    err = user_error(capsys, "predict", "--model", data / "model.npz", "--image", data / "img.tif",
                     "--out", tmp_path / "p.npy")
    assert "needs about" in err and "--out NAME.zarr" in err
    assert not (tmp_path / "p.npy").exists()


def test_9_demo_too_small(capsys):
    assert "at least 16 pixels" in user_error(capsys, "demo", "--size", "8", "-q")


def test_9_ctrl_c_while_starting(capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt  # as if Ctrl-C came while the engine (Numba) is imported

    monkeypatch.setattr(cli, "_user_errors", interrupted)
    code, _, err = run(capsys, "info", "x.npz")
    assert code == 130 and err.strip() == "napari-mpf: aborted"


def test_9_ctrl_c_while_importing_numpy():
    """A KeyboardInterrupt raised by the import of NumPy (the console script's first import)."""
    script = textwrap.dedent("""
        import sys
        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "numpy":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt())
        from napari_mpf.cli import main
        sys.exit(main(["--version"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 130, res.stderr
    assert "Traceback" not in res.stderr and "napari-mpf: aborted" in res.stderr


def test_10_argparse_errors_take_the_documented_form(data, capsys):
    for argv, words in ((["train", "--seconds", "-1"], "train: argument --seconds"),
                        (["predict", "--model"], "predict: argument --model"),
                        (["frobnicate"], "argument COMMAND")):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("napari-mpf: error: ") and words in err, err
        assert "usage:" not in err and len(err.strip().splitlines()) == 1
    readme = (REPO / "README.md").read_text()
    assert "napari-mpf: error: <what is wrong>" in readme and "wrong options" in readme


# ----------------------------------------------------------------------------- 11-13: nothing lost, nothing half-done


def test_11_killed_saves_leave_no_temp_files_behind(tmp_path):
    """A writer killed with SIGKILL leaves its temporary file; the next save of that target removes it."""
    target = tmp_path / "m.npz"
    script = textwrap.dedent(f"""
        import os, signal
        from napari_mpf.engine.io.atomic import make_temp
        fd, name = make_temp({str(target)!r})
        os.write(fd, b"half a model")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(4):
        res = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
        assert res.returncode == -9
    assert len(list(tmp_path.glob(".m.npz.*.tmp"))) == 1  # each writer removed its killed predecessor's
    old = tmp_path / ".m.npz.abc123xy.tmp"  # an earlier version's name, two hours old
    old.write_bytes(b"x")
    os.utime(old, (old.stat().st_mtime - 7200,) * 2)
    live = tmp_path / f".m.npz.{os.getppid()}.abcdefgh.tmp"  # a running writer's: kept
    live.write_bytes(b"x")
    other = tmp_path / ".other.npz.1.abcdefgh.tmp"  # another target's: kept
    other.write_bytes(b"x")
    save_model(Model.create("C3x3x2, FC4", 1, 2), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.npz", live.name, other.name])


def test_12_png_of_a_stack_is_refused_before_anything_is_written(data, capsys, tmp_path):
    probs = tmp_path / "p.npy"
    probs.write_bytes(b"old")
    err = user_error(capsys, "predict", "--model", data / "model.npz", "--image", data / "stack.npy",
                     "--out", probs, "--segmentation", tmp_path / "s.png")
    assert "PNG holds one image" in err
    assert probs.read_bytes() == b"old"


def test_12_unwritable_counts_or_failing_last_output_writes_nothing(data, capsys, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    probs = tmp_path / "p.npy"
    probs.write_bytes(b"old")
    with monkeypatch.context() as m:
        _fail_writes_in(m, ro)
        err = user_error(capsys, "predict", "--model", data / "model.npz", "--image", data / "img.tif",
                         "--out", probs, "--counts", ro / "c.csv")
    assert "read-only" in err and probs.read_bytes() == b"old"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tifffile, "imwrite", full)  # the segmentation (.tif) fails after the .npy is written
    err = user_error(capsys, "predict", "--model", data / "model.npz", "--image", data / "img.tif",
                     "--out", probs, "--segmentation", tmp_path / "s.tif", "--counts", tmp_path / "c.csv")
    assert "disk is full" in err
    assert probs.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npy", "ro"]


def test_13_messages_say_what_is_wrong(data, capsys, tmp_path, monkeypatch):
    err = user_error(capsys, *train_args(data, "--label-offset", "1000000000000", out=tmp_path / "m.npz"))
    assert "1000000000002" in err and "at most 255" in err
    (tmp_path / "folder.npz").mkdir()
    assert "is a folder" in user_error(capsys, "info", tmp_path / "folder.npz")
    assert "ambiguous" in user_error(capsys, *train_args(data, out=tmp_path / "m.npz")[:-2], "--spec", "C5x5",
                                     "--out", tmp_path / "m.npz")

    def short_write(*args, **kwargs):
        raise OSError("4608 requested and 992 written")

    with monkeypatch.context() as m:
        m.setattr(np, "save", short_write)
        err = user_error(capsys, "predict", "--model", data / "model.npz", "--image", data / "img.tif",
                         "--out", tmp_path / "p.npy")
    assert "disk is full" in err and "requested" not in err

    gaps = np.load(data / "strokes.npy")
    gaps[gaps == 2] = 5
    np.save(tmp_path / "gaps.npy", gaps)
    code, _, err = run(capsys, *train_args(data, labels=tmp_path / "gaps.npy", out=tmp_path / "g.npz"))
    assert code == 0
    assert "warning: label value(s) 2, 3, 4 are never painted" in err

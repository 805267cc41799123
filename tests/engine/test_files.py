"""Reading and writing images, labels and outputs (napari_mpf.engine.io.files)."""

from __future__ import annotations

import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_mpf.engine import InputError
from napari_mpf.engine.io import files as F


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- slices and crops


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, None),
        ("0:5", slice(0, 5, None)),
        (":3", slice(None, 3, None)),
        ("2:", slice(2, None, None)),
        ("::2", slice(None, None, 2)),
        ("3", [3]),
        ("0, 4,7", [0, 4, 7]),
        ("-1", [-1]),
    ],
)
def test_parse_slices(text, expected):
    assert F.parse_slices(text) == expected


@pytest.mark.parametrize("text", ["", "a:b", "1:2:3:4", "0:4,5", "::0", "::-1", "1.5", "x"])
def test_parse_slices_bad(text):
    with pytest.raises(InputError, match="--slices"):
        F.parse_slices(text)


def test_parse_crop():
    assert F.parse_crop("0:10,5:20") == (slice(0, 10), slice(5, 20))
    assert F.parse_crop(":,2:") == (slice(None, None), slice(2, None))
    for bad in ["0:10", "0:10,1", "a:b,0:1", "-1:5,0:5", "0:1,0:1,0:1"]:
        with pytest.raises(InputError, match="--crop"):
            F.parse_crop(bad)


# ----------------------------------------------------------------------------- reading images


@pytest.mark.parametrize("ext", [".tif", ".tiff", ".npy", ".npz", ".png"])
def test_read_2d_image_each_format(tmp_path, ext):
    img = _rng().integers(0, 255, (13, 17), dtype=np.uint8)
    p = tmp_path / f"img{ext}"
    F.write_array(p, img)
    s = F.read_images(p)
    assert not s.stack and len(s) == 1 and s.indices == [0]
    np.testing.assert_array_equal(s.arrays[0], img)


def test_read_jpg(tmp_path):
    img = np.full((16, 20), 100, np.uint8)
    p = tmp_path / "a.jpg"
    iio.imwrite(p, img)
    s = F.read_images(p)
    assert s.arrays[0].shape == (16, 20)
    assert abs(int(s.arrays[0].mean()) - 100) <= 2


def test_rgb_becomes_channels_first(tmp_path):
    rgb = _rng().integers(0, 255, (12, 10, 3), dtype=np.uint8)
    p = tmp_path / "rgb.png"
    iio.imwrite(p, rgb)
    s = F.read_images(p)
    assert s.arrays[0].shape == (3, 12, 10)
    np.testing.assert_array_equal(s.arrays[0], np.moveaxis(rgb, -1, 0))


def test_rgba_constant_alpha_dropped_varying_alpha_kept(tmp_path):
    rgba = _rng().integers(0, 255, (12, 10, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    iio.imwrite(tmp_path / "a.png", rgba)
    assert F.read_images(tmp_path / "a.png").arrays[0].shape == (3, 12, 10)
    rgba[0, 0, 3] = 3
    iio.imwrite(tmp_path / "b.png", rgba)
    assert F.read_images(tmp_path / "b.png").arrays[0].shape == (4, 12, 10)


def test_gray_alpha_png(tmp_path):
    la = np.stack([_rng().integers(0, 255, (12, 10), dtype=np.uint8), np.full((12, 10), 255, np.uint8)], -1)
    iio.imwrite(tmp_path / "la.png", la)
    s = F.read_images(tmp_path / "la.png")
    np.testing.assert_array_equal(s.arrays[0], la[..., 0])  # constant alpha dropped: 2-D again


def test_stack_and_slices(tmp_path):
    stack = np.arange(6 * 8 * 9, dtype=np.float32).reshape(6, 8, 9)
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, stack)
    s = F.read_images(p)
    assert s.stack and len(s) == 6 and s.arrays[0].shape == (8, 9)
    s = F.read_images(p, slices="1:4")
    assert s.indices == [1, 2, 3] and s.names[0].endswith("[1]")
    np.testing.assert_array_equal(s.arrays[2], stack[3])
    assert F.read_images(p, slices="0,5").indices == [0, 5]
    assert F.read_images(p, slices="-1").indices == [5]
    assert F.read_images(p, slices="::2").indices == [0, 2, 4]
    assert F.read_images(p, slices="4").stack  # one slice of a stack is still a stack


@pytest.mark.parametrize("sel, match", [("0:7", "stop 7 is outside"), ("6:", "start 6 is outside"), ("3:1", "selects no slice"), ("9", "index 9 is outside"), ("-7", "index -7")])
def test_bad_slices_of_stack(tmp_path, sel, match):
    p = tmp_path / "stack.npy"
    np.save(p, np.zeros((6, 4, 4), np.uint8))
    with pytest.raises(InputError, match=match):
        F.read_images(p, slices=sel)


def test_slices_on_single_image_refused(tmp_path):
    p = tmp_path / "one.npy"
    np.save(p, np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="selects images of a stack"):
        F.read_images(p, slices="0:1")


def test_channels_first(tmp_path):
    arr = _rng().random((2, 8, 9)).astype(np.float32)
    p = tmp_path / "c.npy"
    np.save(p, arr)
    assert F.read_images(p).stack  # default: a stack of two grayscale images
    s = F.read_images(p, channels_first=True)
    assert not s.stack and s.arrays[0].shape == (2, 8, 9)
    np.save(p, _rng().random((3, 2, 8, 9)))
    s = F.read_images(p, channels_first=True, slices="1:")
    assert s.stack and len(s) == 2 and s.arrays[0].shape == (2, 8, 9)


def test_stack_of_rgb(tmp_path):
    arr = _rng().integers(0, 255, (3, 8, 9, 3), dtype=np.uint8)
    p = tmp_path / "rgbstack.tif"
    tifffile.imwrite(p, arr, photometric="rgb")
    s = F.read_images(p)
    assert s.stack and len(s) == 3 and s.arrays[1].shape == (3, 8, 9)
    np.testing.assert_array_equal(s.arrays[1], np.moveaxis(arr[1], -1, 0))


def test_ambiguous_4d_and_5d_refused(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((2, 5, 8, 9)))
    with pytest.raises(InputError, match="ambiguous"):
        F.read_images(p)
    np.save(p, np.zeros((2, 2, 5, 8, 9)))
    with pytest.raises(InputError, match="expected a 2-D image"):
        F.read_images(p)


def test_crop(tmp_path):
    stack = _rng().random((2, 20, 30)).astype(np.float32)
    p = tmp_path / "s.npy"
    np.save(p, stack)
    s = F.read_images(p, crop="5:15,:10")
    np.testing.assert_array_equal(s.arrays[1], stack[1, 5:15, :10])
    with pytest.raises(InputError, match="do not fit"):
        F.read_images(p, crop="0:25,0:5")
    with pytest.raises(InputError, match="do not fit"):
        F.read_images(p, crop="5:5,0:5")


def test_nan_image_refused(tmp_path):
    img = np.zeros((3, 8, 8), np.float32)
    img[1, 2, 3] = np.nan
    p = tmp_path / "nan.npy"
    np.save(p, img)
    with pytest.raises(InputError, match=r"nan\.npy\[1\]: 1 pixel\(s\) are NaN"):
        F.read_images(p)
    F.read_images(p, slices="0")  # the selected slice is fine


def test_npz_keys(tmp_path):
    p = tmp_path / "d.npz"
    a, b = np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)
    np.savez(p, images=a, labels=b)
    np.testing.assert_array_equal(F.read_images(p).arrays[0], a)  # default key 'images'
    np.testing.assert_array_equal(F.read_labels(p).arrays[0], b)  # default key 'labels'
    np.testing.assert_array_equal(F.read_images(p, key="labels").arrays[0], b)
    with pytest.raises(InputError, match="has no array 'raw'; it holds: images, labels"):
        F.read_images(p, key="raw")
    q = tmp_path / "e.npz"
    np.savez(q, x=a, y=b)
    with pytest.raises(InputError, match=r"holds several arrays \(x, y\); choose one with --image-key"):
        F.read_images(q)
    with pytest.raises(InputError, match="--labels-key"):
        F.read_labels(q)
    r = tmp_path / "one.npz"
    np.savez(r, whatever=a)
    np.testing.assert_array_equal(F.read_images(r).arrays[0], a)  # the only array


def test_key_for_non_npz_refused(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.zeros((4, 4)))
    with pytest.raises(InputError, match="only applies to .npz"):
        F.read_images(p, key="images")


def test_missing_file_bad_extension_directory_and_corrupt(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        F.read_images(tmp_path / "nope.tif")
    (tmp_path / "a.bmp").write_bytes(b"x")
    with pytest.raises(InputError, match=r"unknown extension '\.bmp'"):
        F.read_images(tmp_path / "a.bmp")
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        F.read_images(tmp_path / "d.tif")
    for name in ["bad.tif", "bad.png", "bad.npy", "bad.npz", "bad.jpg"]:
        (tmp_path / name).write_bytes(b"this is not an image at all")
        with pytest.raises(InputError, match="could not be read"):
            F.read_images(tmp_path / name)


def test_object_and_empty_arrays_refused(tmp_path):
    p = tmp_path / "s.npy"
    np.save(p, np.array(["a", "b"]))
    with pytest.raises(InputError, match="numeric"):
        F.read_images(p)
    np.save(p, np.zeros((0, 4)))
    with pytest.raises(InputError, match="empty"):
        F.read_images(p)


# ----------------------------------------------------------------------------- reading labels


def test_labels_offset_and_dtype(tmp_path):
    m = np.array([[0, 1], [1, 0]], np.uint8)
    p = tmp_path / "m.tif"
    tifffile.imwrite(p, m)
    s = F.read_labels(p)
    assert s.arrays[0].dtype == np.int32
    np.testing.assert_array_equal(s.arrays[0], m)
    np.testing.assert_array_equal(F.read_labels(p, offset=1).arrays[0], m + 1)  # every pixel
    with pytest.raises(InputError, match="negative"):
        F.read_labels(p, offset=-1)


def test_labels_bool_float_and_bad_values(tmp_path):
    p = tmp_path / "m.npy"
    np.save(p, np.array([[True, False]]))
    np.testing.assert_array_equal(F.read_labels(p).arrays[0], [[1, 0]])
    np.save(p, np.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(F.read_labels(p).arrays[0], [[1, 2]])
    np.save(p, np.array([[1.5, 2.0]]))
    with pytest.raises(InputError, match="whole numbers"):
        F.read_labels(p)
    np.save(p, np.array([[np.nan, 2.0]]))
    with pytest.raises(InputError, match="NaN"):
        F.read_labels(p)
    np.save(p, np.array([[-1, 2]]))
    with pytest.raises(InputError, match="negative"):
        F.read_labels(p)


def test_labels_grey_rgb_png_and_colour_refused(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[2:4] = 1
    m[5:] = 2
    iio.imwrite(tmp_path / "g.png", np.stack([m, m, m], -1))
    np.testing.assert_array_equal(F.read_labels(tmp_path / "g.png").arrays[0], m)
    c = np.stack([m, m, m], -1)
    c[0, 0, 1] = 9
    iio.imwrite(tmp_path / "c.png", c)
    with pytest.raises(InputError, match="single-channel"):
        F.read_labels(tmp_path / "c.png")


def test_labels_palette_png_keeps_indices(tmp_path):
    from PIL import Image

    m = np.zeros((8, 9), np.uint8)
    m[2:4], m[5:] = 1, 2
    im = Image.fromarray(m).convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    im.putdata(m.ravel().tolist())
    im.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(F.read_labels(tmp_path / "pal.png").arrays[0], m)
    I16 = tmp_path / "i16.png"
    iio.imwrite(I16, (m.astype(np.uint16) * 300))
    np.testing.assert_array_equal(F.read_labels(I16).arrays[0], m.astype(np.int32) * 300)


def test_labels_stack_slices_and_crop(tmp_path):
    m = _rng().integers(0, 3, (5, 10, 12)).astype(np.uint16)
    p = tmp_path / "m.npz"
    np.savez(p, labels=m)
    s = F.read_labels(p, slices="2:4", crop="1:9,2:10")
    assert s.stack and s.indices == [2, 3]
    np.testing.assert_array_equal(s.arrays[1], m[3, 1:9, 2:10])
    with pytest.raises(InputError, match="labels must be"):
        np.save(tmp_path / "x.npy", np.zeros((2, 3, 4, 5)))
        F.read_labels(tmp_path / "x.npy")


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("ext", [".tif", ".tiff", ".npy", ".npz"])
def test_write_float_roundtrip_bit_exact(tmp_path, ext):
    a = _rng().random((2, 3, 7, 5)).astype(np.float32)
    p = F.write_array(tmp_path / f"p{ext}", a, key="probabilities", extra={"class_names": np.array(["a", "b", "c"])})
    if ext == ".npz":
        with np.load(p) as z:
            assert sorted(z.files) == ["class_names", "probabilities"]
            b = z["probabilities"]
            assert list(z["class_names"]) == ["a", "b", "c"]
    elif ext == ".npy":
        b = np.load(p)
    else:
        b = tifffile.imread(p)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert np.array_equal(a, b)
    assert [q.name for q in tmp_path.iterdir()] == [p.name]  # no temporary file left


@pytest.mark.parametrize("shape", [(3, 9, 8), (2, 3, 9, 8), (9, 8, 3), (4, 9, 8)])
def test_tif_never_written_as_rgb(tmp_path, shape):
    a = _rng().random(shape).astype(np.float32)
    p = F.write_array(tmp_path / "p.tif", a)
    with tifffile.TiffFile(p) as t:
        assert t.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    assert np.array_equal(tifffile.imread(p), a)


def test_write_png_rules(tmp_path):
    seg = np.array([[1, 2], [2, 1]], np.int64)
    p = F.write_array(tmp_path / "s.png", seg)
    b = iio.imread(p)
    assert b.dtype == np.uint8
    np.testing.assert_array_equal(b, seg)
    F.write_array(tmp_path / "big.png", np.array([[0, 300]]))
    assert iio.imread(tmp_path / "big.png").dtype == np.uint16
    with pytest.raises(InputError, match="PNG holds one 2-D"):
        F.write_array(tmp_path / "f.png", np.zeros((2, 2), np.float32))
    with pytest.raises(InputError, match="PNG holds one 2-D"):
        F.write_array(tmp_path / "z.png", np.zeros((5, 6, 7), np.uint8))
    with pytest.raises(InputError, match="16-bit"):
        F.write_array(tmp_path / "n.png", np.array([[-1, 2]]))


def test_write_errors(tmp_path):
    with pytest.raises(InputError, match="unknown extension"):
        F.write_array(tmp_path / "x.bmp", np.zeros((2, 2)))
    with pytest.raises(InputError, match="does not exist"):
        F.write_array(tmp_path / "missing" / "x.npy", np.zeros((2, 2)))
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        F.write_array(tmp_path / "d.npy", np.zeros((2, 2)))


def test_write_is_atomic_old_file_survives_failure(tmp_path, monkeypatch):
    p = tmp_path / "out.npy"
    old = np.arange(4.0)
    F.write_array(p, old)
    os.chmod(p, 0o640)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        F.write_array(p, np.zeros(3))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(p), old)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out.npy"]
    F.write_array(p, np.ones(2))  # replacing keeps the file's permissions
    assert (p.stat().st_mode & 0o777) == 0o640
    np.testing.assert_array_equal(np.load(p), np.ones(2))


def test_atomic_open_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    F.write_array("rel.npy", np.ones(3))
    np.testing.assert_array_equal(np.load(tmp_path / "rel.npy"), np.ones(3))


def test_labels_too_large_are_refused_before_counting(tmp_path):
    """Issue 22: a label value or offset of 9e8 was accepted and then counted in a 7 GB array."""
    m = np.zeros((6, 6), np.int64)
    m[0, 0], m[1, 1] = 1, 900_000_000
    np.save(tmp_path / "m.npy", m)
    with pytest.raises(InputError, match="up to 900000000; at most 65535"):
        F.read_labels(tmp_path / "m.npy")
    m[1, 1] = 2
    np.save(tmp_path / "m.npy", m)
    with pytest.raises(InputError, match=r"up to 2 \+ --label-offset 1000000000000 = 1000000000002; at most 255"):
        F.read_labels(tmp_path / "m.npy", offset=10**12, max_label=255)
    assert F.read_labels(tmp_path / "m.npy", offset=253, max_label=255).arrays[0].max() == 255

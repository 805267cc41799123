"""Defect counting on probability maps with a known number of objects."""

import numpy as np
import pytest

from napari_mpf.engine.post.objects import FEATURE_COLUMNS, count_objects, defect_present


def _disks(shape, centres, radius, value=0.9):
    yy, xx = np.indices(shape)
    prob = np.full(shape, 0.05, np.float32)
    for cy, cx in centres:
        prob[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return prob


def test_counts_known_blobs_and_features():
    centres = [(10, 10), (10, 40), (30, 25), (50, 50)]
    prob = _disks((64, 64), centres, 4)
    prob[60, 2] = 0.99  # a one-pixel speck, removed by min_area
    res = count_objects(prob, threshold=0.5, min_area=5)
    assert res.count == 4
    assert res.labels.shape == prob.shape and res.labels.dtype == np.int32
    assert set(np.unique(res.labels)) == {0, 1, 2, 3, 4}
    assert tuple(res.features) == FEATURE_COLUMNS
    assert len(res.features["area"]) == 4
    np.testing.assert_array_equal(res.features["label"], [1, 2, 3, 4])
    got = sorted(zip(res.features["centroid_y"].round(), res.features["centroid_x"].round(), strict=True))
    assert got == sorted((float(y), float(x)) for y, x in centres)
    np.testing.assert_allclose(res.features["mean_probability"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(res.features["max_probability"], 0.9, rtol=1e-6)
    assert (res.features["area"] == np.count_nonzero(res.labels == 1)).any()
    assert res.defect_present and res.pixels[0] == res.features["area"].sum()


def test_min_area_threshold_and_connectivity():
    prob = np.zeros((8, 8), np.float32)
    prob[1, 1] = prob[2, 2] = 0.8  # diagonal neighbours
    assert count_objects(prob, 0.5, connectivity=2).count == 1
    assert count_objects(prob, 0.5, connectivity=1).count == 2
    assert count_objects(prob, 0.5, min_area=3).count == 0
    assert count_objects(prob, 0.9).count == 0


def test_empty_map_not_flagged():
    res = count_objects(np.zeros((16, 16), np.float32))
    assert res.count == 0 and not res.defect_present
    assert all(len(v) == 0 for v in res.features.values())
    assert res.summary()["count"] == 0


def test_defect_rule():
    assert defect_present(1, 10, min_count=1)
    assert not defect_present(1, 10, min_count=2)
    assert defect_present(1, 10, min_count=2, min_pixels=10)
    assert not defect_present(1, 9, min_count=2, min_pixels=10)
    assert not defect_present(5, 100, min_count=None, min_pixels=None)


def test_stack_counts_per_slice_with_unique_labels():
    a = _disks((32, 32), [(8, 8), (20, 20)], 3)
    b = _disks((32, 32), [(16, 16)], 3)
    c = np.zeros((32, 32), np.float32)
    res = count_objects(np.stack([a, b, c]), threshold=0.5, min_area=4, min_count=2)
    np.testing.assert_array_equal(res.counts, [2, 1, 0])
    np.testing.assert_array_equal(res.present, [True, False, False])
    assert res.count == 3 and res.labels.shape == (3, 32, 32)
    np.testing.assert_array_equal(res.features["slice"], [0, 0, 1])
    np.testing.assert_array_equal(res.features["label"], [1, 2, 3])
    assert set(np.unique(res.labels[1])) == {0, 3}
    s = res.summary()
    assert s["counts_per_slice"] == [2, 1, 0] and s["defect_present_per_slice"] == [True, False, False]


def test_rejects_bad_shape():
    with pytest.raises(ValueError, match="probability map"):
        count_objects(np.zeros(5))


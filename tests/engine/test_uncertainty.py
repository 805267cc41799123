"""The uncertainty map and the least certain region (engine/post/uncertainty.py)."""

import numpy as np
import pytest

from napari_mpf.engine.post.uncertainty import least_certain, uncertainty, unlearned_share


def test_uncertainty_is_one_minus_the_margin_and_finds_the_unsure_region():
    p = np.zeros((3, 40, 40), np.float32)
    p[0] = 1.0
    p[:, 20:30, 5:15] = np.array([0.45, 0.45, 0.1])[:, None, None]  # a tie between classes 1 and 2
    u = uncertainty(p)
    assert u.dtype == np.float32 and u[0, 0] == 0 and u[25, 10] == pytest.approx(1.0)
    where = least_certain(p, size=5)
    assert 20 <= where.y < 30 and 5 <= where.x < 15 and where.value == pytest.approx(1.0)
    assert where.unsure_share == pytest.approx(100 / 1600)
    painted = np.zeros((40, 40), np.uint8)
    painted[18:32, 3:17] = 1  # painted already: look elsewhere
    assert least_certain(p, size=5, painted=painted).value < 1.0
    with pytest.raises(ValueError, match="2 classes"):
        uncertainty(p[:1])


def test_unlearned_share_counts_painted_pixels_the_preview_gets_wrong():
    p = np.zeros((2, 10, 10), np.float32)
    p[0] = 0.8
    p[1] = 0.2  # class 1 everywhere...
    p[:, :, 5:] = p[::-1, :, 5:]  # ...but class 2 on the right half
    labels = np.zeros((10, 10), np.uint8)
    assert unlearned_share(p, labels) is None  # nothing painted
    labels[0, :] = 1  # 5 right, 5 wrong
    labels[9, 5:] = 2  # 5 right
    labels[5, 0] = 3  # no class of the model: left out
    assert unlearned_share(p, labels) == pytest.approx(5 / 15)
    with pytest.raises(ValueError, match="labels"):
        unlearned_share(p, labels[:, :5])

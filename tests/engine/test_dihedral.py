"""Rotations and flips, and test-time augmentation built on them."""

import numpy as np
import pytest

from napari_mpf.engine import Model, predict_proba
from napari_mpf.engine.network.dihedral import dihedral, undo_dihedral


def test_the_eight_transforms_are_distinct_and_undone():
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    seen = set()
    for k in range(8):
        t = dihedral(a, k)
        assert t.shape[0] == 2 and sorted(t.shape[1:]) == [3, 4]
        seen.add(t.tobytes() + bytes(t.shape))
        np.testing.assert_array_equal(undo_dihedral(t, k), a)
    assert len(seen) == 8


def _model():
    return Model.create("C3x3x4, MPF2x2, C3x3x4, FC6", 1, 3, seed=0, dtype=np.float64)


def test_augmented_prediction_is_the_mean_over_the_transforms():
    model = _model()
    image = np.random.default_rng(0).normal(size=(23, 17))
    manual = np.mean([undo_dihedral(predict_proba(model, dihedral(image, k)), k) for k in range(8)], axis=0)
    augmented = predict_proba(model, image, augment=True)
    assert augmented.shape == (3, 23, 17)
    np.testing.assert_allclose(augmented, manual, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(augmented.sum(axis=0), 1.0, rtol=1e-6)


@pytest.mark.parametrize("k", range(8))
def test_augmented_prediction_is_invariant_under_the_transforms(k):
    """The mean over the group is equivariant whatever the network (which alone is not)."""
    model = _model()
    image = np.random.default_rng(1).normal(size=(20, 26))
    base = predict_proba(model, image, augment=True)
    moved = predict_proba(model, dihedral(image, k), augment=True)
    np.testing.assert_allclose(undo_dihedral(moved, k), base, rtol=1e-5, atol=1e-6)

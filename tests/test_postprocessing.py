"""Connected-component post-processing: per-label number of kept components, FLARE21 kidney rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnsdm.labels import FLARE21_KEEP
from nnsdm.postprocessing import keep_largest_components


def _abdomen() -> np.ndarray:
    """Liver with a spurious island, two kidneys plus a small third kidney blob, spleen in two pieces, pancreas."""
    seg = np.zeros((20, 40, 40), dtype=np.uint8)
    seg[2:12, 2:20, 2:20] = 1  # liver
    seg[15:17, 30:33, 2:5] = 1  # liver island
    seg[5:12, 25:32, 5:11] = 2  # right kidney (294 voxels)
    seg[5:12, 25:32, 28:33] = 2  # left kidney (245 voxels)
    seg[16:18, 5:7, 30:32] = 2  # spurious kidney blob (8 voxels)
    seg[3:9, 5:15, 25:37] = 3  # spleen
    seg[14:16, 14:16, 14:16] = 3  # spleen fragment
    seg[13:15, 20:24, 12:30] = 4  # pancreas
    return seg


def test_flare21_rule_keeps_both_kidneys_and_drops_the_spurious_blob():
    seg = _abdomen()
    out = keep_largest_components(seg, keep=FLARE21_KEEP)
    kidney, n = ndimage.label(out == 2)
    assert n == 2
    assert sorted(np.bincount(kidney.ravel())[1:]) == [245, 294]
    assert not out[16:18, 5:7, 30:32].any()
    # liver and spleen keep only their largest piece
    assert (out[15:17, 30:33, 2:5] == 0).all()
    assert (out[14:16, 14:16, 14:16] == 0).all()
    assert (out[2:12, 2:20, 2:20] == 1).all()
    assert np.count_nonzero(out == 3) == 6 * 10 * 12
    # nothing else changes: every voxel is either unchanged or a removed component set to 0
    changed = out != seg
    assert (out[changed] == 0).all()
    assert np.count_nonzero(changed) == 2 * 3 * 3 + 8 + 8


def test_default_keeps_one_component_and_deletes_a_kidney():
    seg = _abdomen()
    out = keep_largest_components(seg)
    _, n = ndimage.label(out == 2)
    assert n == 1
    assert (out[5:12, 25:32, 5:11] == 2).all()  # the larger kidney survives
    assert not (out == 2)[:, :, 28:33].any()


def test_labels_restrict_which_labels_change_and_input_is_untouched():
    seg = _abdomen()
    before = seg.copy()
    out = keep_largest_components(seg, labels=[1])
    np.testing.assert_array_equal(seg, before)
    assert out.dtype == seg.dtype
    # only liver changed
    np.testing.assert_array_equal(out[seg != 1], seg[seg != 1])
    assert (out[15:17, 30:33, 2:5] == 0).all()
    _, n = ndimage.label(out == 3)
    assert n == 2  # spleen fragment untouched


def test_diagonal_neighbours_are_connected_like_nnunet():
    seg = np.zeros((6, 6, 6), dtype=np.int16)
    seg[1, 1, 1] = seg[2, 2, 2] = seg[3, 3, 3] = 1  # a chain touching only at corners: one component
    seg[5, 5, 0] = 1  # a separate single voxel
    out = keep_largest_components(seg)
    assert out[1, 1, 1] == out[2, 2, 2] == out[3, 3, 3] == 1
    assert out[5, 5, 0] == 0


def test_matches_nnunet_remove_all_but_largest_component():
    morphology = pytest.importorskip("acvl_utils.morphology.morphology_helper")
    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = ndimage.gaussian_filter(rng.random((24, 30, 28)), 1.2) > 0.55
        sizes = np.bincount(ndimage.label(mask, structure=np.ones((3, 3, 3)))[0].ravel())[1:]
        assert len(sizes) > 1
        expected = morphology.remove_all_but_largest_component(mask)
        seg = mask.astype(np.uint8) * 4
        out = keep_largest_components(seg, labels=[4])
        np.testing.assert_array_equal(out == 4, expected)


def test_ties_at_the_cut_are_all_kept_and_missing_labels_are_ignored():
    seg = np.zeros((5, 10, 10), dtype=np.uint8)
    seg[1, 1:3, 1:3] = 2
    seg[1, 6:8, 6:8] = 2
    seg[3, 1:3, 6:8] = 2  # three components of 4 voxels each
    seg[4, 0, 0] = 2
    out = keep_largest_components(seg, labels=[2, 3], keep={2: 2})
    assert np.count_nonzero(out == 2) == 12
    assert out[4, 0, 0] == 0


def test_bad_input():
    with pytest.raises(ValueError):
        keep_largest_components(np.zeros((3, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        keep_largest_components(np.ones((3, 3, 3), dtype=np.uint8), keep={1: 0})

"""Signed distance map targets: hand-checked values, spacing, edge cases, and equality with the reference method."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import find_boundaries

from nnsdm.sdm import batch_signed_distance_maps, signed_distance_map


def reference_sdm(labels, classes, spacing=None):
    """SegWithDistMap's compute_sdf method (scipy EDT + skimage inner boundary) in mm; empty/full cases defined."""
    out = np.zeros((len(classes), *labels.shape))
    for k, c in enumerate(classes):
        posmask = labels == c
        if not posmask.any():
            continue
        if posmask.all():
            out[k] = -1
            continue
        posdis = ndimage.distance_transform_edt(posmask, sampling=spacing)
        negdis = ndimage.distance_transform_edt(~posmask, sampling=spacing)
        boundary = find_boundaries(posmask, mode="inner")
        sdf = (negdis - negdis.min()) / (negdis.max() - negdis.min()) - (posdis - posdis.min()) / (
            posdis.max() - posdis.min()
        )
        sdf[boundary] = 0
        out[k] = sdf
    return out


def random_blobs(rng, shape, n_labels, sigma=2.0):
    """Smooth random label regions: threshold blurred noise per label."""
    labels = np.zeros(shape, dtype=np.int16)
    for label in range(1, n_labels + 1):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        labels[field > np.quantile(field, 0.85)] = label
    return labels


# ---------------------------------------------------------------- hand-checked values


def test_1d_line_exact_values():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0, 0])
    # inside distances 1,2,3,2,1 (max 3); outside 2,1 | 1,2,3 (max 3); voxels 2 and 6 are the boundary
    expected = np.array([2, 1, 0, -2, -3, -2, 0, 1, 2, 3]) / 3
    sdm = signed_distance_map(labels, [1])
    assert sdm.shape == (1, 10) and sdm.dtype == np.float32
    np.testing.assert_allclose(sdm[0], expected, atol=1e-7)


def test_1d_array_border_is_not_boundary():
    # voxel 0 touches the array border but has no neighbour outside the mask: it is interior, distance 3
    labels = np.array([1, 1, 1, 0, 0])
    sdm = signed_distance_map(labels, [1], spacing=[2.0])
    np.testing.assert_allclose(sdm[0], [-1, -2 / 3, 0, 1 / 2, 1], atol=1e-7)
    assert not find_boundaries(labels == 1, mode="inner")[0]  # the reference agrees


def test_cube_in_7x7x7():
    labels = np.zeros((7, 7, 7), dtype=np.uint8)
    labels[2:5, 2:5, 2:5] = 3
    sdm = signed_distance_map(labels, [3])[0]
    negmax = math.sqrt(12)  # corner (0,0,0) to the cube corner (2,2,2)
    assert sdm[3, 3, 3] == -1.0  # centre: the only interior voxel, distance 2
    cube = sdm[2:5, 2:5, 2:5].copy()
    cube[1, 1, 1] = 0
    assert np.all(cube == 0)  # the other 26 cube voxels are boundary
    assert sdm[0, 0, 0] == 1.0 and sdm[6, 6, 6] == 1.0
    assert sdm[3, 3, 0] == pytest.approx(2 / negmax, abs=1e-7)  # 2 voxels out
    assert sdm[3, 3, 1] == pytest.approx(1 / negmax, abs=1e-7)
    assert sdm[0, 0, 3] == pytest.approx(math.sqrt(8) / negmax, abs=1e-7)
    assert sdm.min() == -1.0 and sdm.max() == 1.0


def test_2d_square():
    labels = np.zeros((6, 8), dtype=np.int32)
    labels[1:5, 2:6] = 1  # 4x4 square
    sdm = signed_distance_map(labels, [1], spacing=(1.0, 1.0))[0]
    # inside: the 2x2 centre is interior at distance 2, the ring is boundary
    np.testing.assert_array_equal(sdm[2:4, 3:5], -1.0)
    assert np.all(sdm[1, 2:6] == 0) and np.all(sdm[4, 2:6] == 0) and np.all(sdm[1:5, 2] == 0)
    negmax = math.hypot(1, 2)  # the farthest pixels are corners, e.g. (0, 0) -> (1, 2)
    assert sdm[0, 0] == pytest.approx(1.0) and sdm[5, 7] == pytest.approx(1.0)
    assert sdm[2, 0] == pytest.approx(2 / negmax, abs=1e-7)
    assert sdm[0, 3] == pytest.approx(1 / negmax, abs=1e-7)


# ---------------------------------------------------------------- spacing


def test_anisotropic_spacing_in_millimetres():
    labels = np.zeros((7, 7, 7), dtype=np.uint8)
    labels[2:5, 2:5, 2:5] = 1
    spacing = (2.5, 0.8, 0.8)
    sdm = signed_distance_map(labels, [1], spacing=spacing)[0]
    negmax = math.sqrt((2 * 2.5) ** 2 + 2 * (2 * 0.8) ** 2)  # to the corner, in mm
    assert sdm[1, 3, 3] == pytest.approx(2.5 / negmax, abs=1e-6)  # one slice away along z
    assert sdm[3, 1, 3] == pytest.approx(0.8 / negmax, abs=1e-6)  # one pixel away along y
    assert sdm[3, 3, 1] == pytest.approx(0.8 / negmax, abs=1e-6)  # one pixel away along x
    assert sdm[0, 3, 3] == pytest.approx(5.0 / negmax, abs=1e-6)
    assert sdm[3, 3, 3] == -1.0 and sdm[0, 0, 0] == 1.0


def test_spacing_follows_array_axis_order():
    labels = np.zeros((5, 5, 5), dtype=np.uint8)
    labels[2, 2, 2] = 1  # a single voxel: it is all boundary, so 0
    sdm = signed_distance_map(labels, [1], spacing=(1.0, 2.0, 3.0))[0]
    negmax = math.sqrt(2**2 + 4**2 + 6**2)
    assert sdm[2, 2, 2] == 0.0
    assert sdm[3, 2, 2] == pytest.approx(1 / negmax, abs=1e-7)
    assert sdm[2, 3, 2] == pytest.approx(2 / negmax, abs=1e-7)
    assert sdm[2, 2, 3] == pytest.approx(3 / negmax, abs=1e-7)
    assert sdm.min() == 0.0 and sdm.max() == 1.0


# ---------------------------------------------------------------- agreement with the reference method


@pytest.mark.parametrize(
    "shape, spacing",
    [((24, 40, 36), (2.5, 0.8, 0.8)), ((20, 20, 20), None), ((48, 56), (0.7, 1.3)), ((200,), (1.5,))],
)
def test_matches_reference_on_random_blobs(shape, spacing):
    rng = np.random.default_rng(sum(shape))
    labels = random_blobs(rng, shape, 3, sigma=3.0 if len(shape) > 1 else 8.0)
    labels[(slice(0, 3),) * len(shape)] = 7  # a label not asked for counts as outside
    classes = [2, 0, 1, 3, 5]  # any order, background and an absent class included
    sdm = signed_distance_map(labels, classes, spacing)
    expected = reference_sdm(labels, classes, spacing)
    assert sdm.dtype == np.float32 and sdm.shape == (5, *shape)
    assert np.abs(sdm - expected).max() < 1e-5
    assert np.all(sdm[4] == 0)


def test_parallel_threads_give_same_values():
    labels = random_blobs(np.random.default_rng(3), (16, 32, 32), 2)
    one = signed_distance_map(labels, [1, 2], (2.5, 0.8, 0.8))
    two = signed_distance_map(labels, [1, 2], (2.5, 0.8, 0.8), parallel=2)
    np.testing.assert_array_equal(one, two)


def test_sign_convention_and_range():
    labels = random_blobs(np.random.default_rng(5), (20, 30, 30), 3)
    sdm = signed_distance_map(labels, [1, 2, 3], (2.5, 0.8, 0.8))
    for k, c in enumerate([1, 2, 3]):
        mask = labels == c
        boundary = find_boundaries(mask, mode="inner")
        assert np.all(sdm[k][mask & ~boundary] < 0)
        assert np.all(sdm[k][boundary] == 0)
        assert np.all(sdm[k][~mask] > 0)
        assert sdm[k].max() == 1.0 and sdm[k].min() >= -1.0


# ---------------------------------------------------------------- edge cases


def test_absent_class_is_zero_and_full_class_is_minus_one():
    labels = np.full((4, 5, 6), 2, dtype=np.uint8)
    sdm = signed_distance_map(labels, [1, 2])
    assert np.all(sdm[0] == 0)
    assert np.all(sdm[1] == -1)


def test_all_boundary_mask_has_no_nan():
    # a plane one slice thick: every mask voxel has a z neighbour outside, so all are boundary
    labels = np.zeros((5, 6, 6), dtype=np.uint8)
    labels[2] = 1
    sdm = signed_distance_map(labels, [1], spacing=(2.5, 0.8, 0.8))[0]
    assert np.isfinite(sdm).all()
    assert np.all(sdm[2] == 0)
    assert sdm[1, 0, 0] == pytest.approx(0.5) and sdm[0, 0, 0] == 1.0 and sdm[4, 3, 3] == 1.0


def test_two_touching_classes():
    labels = np.array([1, 1, 1, 1, 2, 2, 0])
    sdm = signed_distance_map(labels, [1, 2])
    # class 1: inside 4,3,2,1 (max 4), boundary at 3; outside 1,2,3 (max 3)
    np.testing.assert_allclose(sdm[0], [-1, -3 / 4, -1 / 2, 0, 1 / 3, 2 / 3, 1], atol=1e-7)
    # class 2: inside 1,1 (both boundary); outside 4,3,2,1 | 1 (max 4)
    np.testing.assert_allclose(sdm[1], [1, 3 / 4, 1 / 2, 1 / 4, 0, 0, 1 / 4], atol=1e-7)


def test_empty_class_list_and_input_untouched():
    labels = random_blobs(np.random.default_rng(1), (8, 10, 12), 2)
    copy = labels.copy()
    assert signed_distance_map(labels, []).shape == (0, 8, 10, 12)
    signed_distance_map(labels, [1, 2], (2.5, 0.8, 0.8))
    np.testing.assert_array_equal(labels, copy)


@pytest.mark.parametrize(
    "labels, classes, spacing",
    [
        (np.zeros((4, 4, 4)), [1], (1.0, 1.0)),  # spacing length
        (np.zeros((4, 4, 4)), [1], (1.0, 0.0, 1.0)),  # spacing not positive
        (np.zeros((4, 4)), [1, 1], None),  # duplicate classes
        (np.zeros((2, 2, 2, 2)), [1], None),  # 4D
    ],
)
def test_bad_arguments(labels, classes, spacing):
    with pytest.raises(ValueError):
        signed_distance_map(labels, classes, spacing)


# ---------------------------------------------------------------- batches


def test_batch_3d_with_and_without_channel_axis():
    rng = np.random.default_rng(7)
    seg = np.stack([random_blobs(rng, (12, 20, 16), 3) for _ in range(3)])[:, None]  # (B, 1, z, y, x)
    spacing = (2.5, 0.8, 0.8)
    out = batch_signed_distance_maps(seg, [1, 2, 3], spacing)
    assert out.shape == (3, 3, 12, 20, 16) and out.dtype == np.float32
    for b in range(3):
        np.testing.assert_array_equal(out[b], signed_distance_map(seg[b, 0], [1, 2, 3], spacing))
        assert np.abs(out[b] - reference_sdm(seg[b, 0], [1, 2, 3], spacing)).max() < 1e-5
    np.testing.assert_array_equal(batch_signed_distance_maps(seg[:, 0], [1, 2, 3], spacing), out)
    no_spacing = batch_signed_distance_maps(seg, [1, 2, 3])  # (B, 1, ...) read as a channel axis
    np.testing.assert_array_equal(no_spacing, batch_signed_distance_maps(seg[:, 0], [1, 2, 3]))
    assert out.min() >= -1 and out.max() <= 1


def test_batch_2d_and_singleton_spatial_axis():
    rng = np.random.default_rng(8)
    seg = np.stack([random_blobs(rng, (24, 20), 2) for _ in range(2)])[:, None]  # (B, 1, y, x), nnU-Net 2D
    out = batch_signed_distance_maps(seg, [1, 2], (0.8, 0.8))
    assert out.shape == (2, 2, 24, 20) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1], signed_distance_map(seg[1, 0], [1, 2], (0.8, 0.8)))
    # with 3D spacing the singleton axis 1 is a z axis of one slice, not a channel
    as_3d = batch_signed_distance_maps(seg, [1, 2], (2.5, 0.8, 0.8))
    assert as_3d.shape == (2, 2, 1, 24, 20)
    with pytest.raises(ValueError):
        batch_signed_distance_maps(np.zeros((2, 3, 8, 8)), [1], (1.0, 1.0))  # 3 channels

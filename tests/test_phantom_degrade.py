"""Degraded synthetic cases: same anatomy as the clean case, the image changed the way each degradation says."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnsdm.errors import NnsdmError
from nnsdm.phantom import DEGRADATIONS, generate_case

SHAPE, SPACING = (24, 64, 64), (8.0, 5.0, 5.0)
IMAGE_ONLY = ("noise", "low_dose", "non_contrast", "arterial", "metal", "motion")


def _case(**kwargs):
    image, label, info = generate_case(seed=3, shape=SHAPE, spacing=SPACING, orientation="LPS", return_info=True, **kwargs)
    return sitk.GetArrayFromImage(image).astype(float), sitk.GetArrayFromImage(label), image, info


@pytest.fixture(scope="module")
def clean():
    return _case()


@pytest.mark.parametrize("kind", IMAGE_ONLY)
def test_image_only_degradations_keep_grid_and_labels(clean, kind):
    ct, label, image, _ = clean
    d_ct, d_label, d_image, info = _case(degradation=kind, severity=1.0)
    assert info["degradation"] == kind and info["severity"] == 1.0
    assert d_image.GetSpacing() == image.GetSpacing() and d_image.GetOrigin() == image.GetOrigin()
    np.testing.assert_array_equal(d_label, label)
    assert (np.abs(d_ct - ct) > 20).mean() > 0.01  # the image did change
    again, *_ = _case(degradation=kind, severity=1.0)
    np.testing.assert_array_equal(again, d_ct)  # deterministic


def test_severity_orders_the_change(clean):
    ct = clean[0]
    changes = [np.abs(_case(degradation="noise", severity=s)[0] - ct).mean() for s in (0.2, 0.6, 1.0)]
    assert changes[0] < changes[1] < changes[2]


def test_contrast_phases_change_organ_hu(clean):
    ct, label, *_ = clean
    native = _case(degradation="non_contrast")[0]
    arterial = _case(degradation="arterial")[0]
    liver = label == 1
    kidney = label == 2
    assert np.median(native[liver]) < np.median(ct[liver]) - 20  # unenhanced liver is darker
    assert np.median(native[kidney]) < 80
    assert np.median(arterial[kidney]) > np.median(ct[kidney]) - 60  # the cortex stays bright


def test_grid_changing_degradations_keep_world_geometry(clean):
    ct, label, image, _ = clean
    cut, cut_label, cut_image, _ = _case(degradation="truncated_fov", severity=1.0)
    assert cut.shape[0] == ct.shape[0] and cut.shape[1] < ct.shape[1] and cut.shape[2] < ct.shape[2]
    # the cropped grid lies on the clean one: its first voxel is a clean voxel with the same label
    index = image.TransformPhysicalPointToIndex(cut_image.GetOrigin())
    lo = tuple(reversed(index))
    np.testing.assert_array_equal(cut_label, label[lo[0]:lo[0] + cut.shape[0], lo[1]:lo[1] + cut.shape[1],
                                                   lo[2]:lo[2] + cut.shape[2]])
    thick, thick_label, thick_image, _ = _case(degradation="thick_slices", severity=1.0)
    assert thick.shape[0] == ct.shape[0] // 3 and thick_image.GetSpacing()[2] == pytest.approx(3 * image.GetSpacing()[2])
    np.testing.assert_array_equal(thick_label, label[1:3 * thick.shape[0]:3])


def test_unknown_degradation_is_a_clear_error():
    with pytest.raises(NnsdmError, match="degradation"):
        generate_case(seed=1, shape=SHAPE, spacing=SPACING, degradation="blur")
    assert "metal" in DEGRADATIONS

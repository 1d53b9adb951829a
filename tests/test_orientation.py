"""Orientation codes of images and the majority orientation of a set of files (headers only)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from nnsdm.orientation import majority_orientation, orientation_code


def test_orientation_code_of_an_image_and_of_its_direction():
    image = sitk.DICOMOrient(sitk.GetImageFromArray(np.zeros((4, 6, 8), np.uint8)), "RAS")
    assert orientation_code(image) == orientation_code(image.GetDirection()) == "RAS"
    assert orientation_code(sitk.GetImageFromArray(np.zeros((4, 6, 8), np.uint8))) == "LPS"  # identity direction


def test_majority_orientation_of_headers(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((4, 6, 8), np.uint8))
    files = []
    for i, code in enumerate(("RAS", "LPS", "RAS")):
        files.append(tmp_path / f"{i}.nii.gz")
        sitk.WriteImage(sitk.DICOMOrient(image, code), str(files[-1]))
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    assert majority_orientation(files + [tmp_path / "junk.nii.gz"]) == "RAS"
    assert majority_orientation([tmp_path / "junk.nii.gz"]) is None

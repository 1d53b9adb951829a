"""Previews checked as images: size, organ colours where the organs are, physical proportions, left-right."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from scipy import ndimage

from nnsdm.inference.preview import OVERLAY_ALPHA, organ_colour, write_contact_sheet, write_preview
from nnsdm.labels import FLARE21_LABELS

NAMES = FLARE21_LABELS  # the model's dataset.json labels in these tests
SPACING = (5.0, 2.0, 2.5)  # (z, y, x) mm


def phantom(orientation: str = "RAS"):
    """Uniform 40 HU CT (mid-grey in the abdominal window) with box organs, built in LPS and stored in ``orientation``.

    Liver (patient's right): 60 mm (x) x 30 mm (y) x 60 mm (z); spleen (patient's left); no kidney, no pancreas.
    """
    labels = np.zeros((16, 40, 48), dtype=np.uint8)  # LPS (z, y, x): superior, posterior, left
    labels[2:14, 10:25, 6:30] = 1
    labels[6:10, 12:20, 36:44] = 3
    ct = sitk.GetImageFromArray(np.full(labels.shape, 40, dtype=np.int16))
    lab = sitk.GetImageFromArray(labels)
    for image in (ct, lab):
        image.SetSpacing(tuple(reversed(SPACING)))
    ct, lab = sitk.DICOMOrient(ct, orientation), sitk.DICOMOrient(lab, orientation)
    return sitk.GetArrayFromImage(lab), ct


def blobs(rgb: np.ndarray, colour: str) -> list[tuple[float, float, float]]:
    """(centre column, width, height) in pixels of the connected regions showing ``colour`` over mid-grey."""
    expected = (1 - OVERLAY_ALPHA) * 0.5 + OVERLAY_ALPHA * np.asarray(to_rgb(colour))
    mask = np.all(np.abs(rgb - expected) < 6 / 255, axis=-1)
    regions, n = ndimage.label(mask)
    found = []
    for sl in ndimage.find_objects(regions):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if h * w >= 30:  # leave out stray anti-aliased pixels
            found.append(((sl[1].start + sl[1].stop) / 2, w, h))
    return sorted(found)


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_preview_colours_proportions_and_sides(tmp_path, orientation):
    labels, image = phantom(orientation)
    path = write_preview(labels, image, tmp_path / "case_preview.png", NAMES, title="case")
    rgb = imread(path)[..., :3]
    assert rgb.shape == (460, 1200, 3)
    liver = blobs(rgb, organ_colour(1, "liver"))
    assert len(liver) == 3  # axial, coronal, sagittal, left to right
    for (_, width, height), physical in zip(liver, (60 / 30, 60 / 60, 30 / 60)):
        assert width / height == pytest.approx(physical, rel=0.1)  # mm, not voxels (these would be 1.6, 2, 1.25)
    spleen = blobs(rgb, organ_colour(3, "spleen"))
    assert len(spleen) == 2  # the sagittal plane through the organs' centre cuts the liver, not the spleen
    for (liver_x, *_), (spleen_x, *_) in zip(liver, spleen):
        assert liver_x < spleen_x  # patient's right on the image's left
    assert blobs(rgb, organ_colour(2, "kidney")) == []
    assert blobs(rgb, organ_colour(4, "pancreas")) == []


def test_preview_without_organs_and_contact_sheet(tmp_path):
    labels, image = phantom()
    empty = write_preview(np.zeros_like(labels), image, tmp_path / "b.png", NAMES, title="empty")
    full = write_preview(labels, image, tmp_path / "a.png", NAMES, title="full")
    assert blobs(imread(empty)[..., :3], organ_colour(1, "liver")) == []
    sheet = write_contact_sheet([full, empty, full], tmp_path / "previews.png", columns=2, tile_width=300)
    rgb = imread(sheet)[..., :3]
    assert rgb.shape == (2 * 115, 2 * 300, 3)  # 1200 x 460 previews at 300 pixels wide: 115 high
    tile = rgb[:115, :300]
    assert len(blobs(tile, organ_colour(1, "liver"))) == 3  # organ colours survive the scaling
    assert np.all(rgb[115:, 300:] == 1.0)  # the fourth cell is empty

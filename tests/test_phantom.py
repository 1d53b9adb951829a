"""The synthetic abdominal CT generator: geometry, plausibility, orientation, determinism, dataset layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnsdm.errors import NnsdmError
from nnsdm.labels import FLARE21_DATASET_LABELS
from nnsdm.phantom import OTHER_ORIENTATIONS, case_seed, generate_case, generate_dataset

SMALL = (32, 96, 96)  # fast cases for geometry; intensities are checked at the default grid
TINY = (20, 64, 64)  # for dataset writing
LIVER, KIDNEY, SPLEEN, PANCREAS = 1, 2, 3, 4


@pytest.fixture(scope="module")
def small_cases():
    return {seed: generate_case(seed=seed, shape=SMALL, return_info=True) for seed in (0, 1, 2, 3, 6, 12, 17, 19)}


@pytest.fixture(scope="module")
def default_cases():
    return {seed: generate_case(seed=seed, return_info=True) for seed in (0, 1, 2, 17)}


def arrays(image, label):
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)


def centroid_mm(image, mask) -> np.ndarray:
    """Physical (LPS) centroid of a (z, y, x) mask of ``image``'s grid."""
    index = np.argwhere(mask).mean(axis=0)[::-1]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index.tolist()))


def tissue_mask(info, name):
    return info["tissue"] == info["tissue_names"].index(name)


def test_image_and_label_share_a_correct_geometry(small_cases):
    for image, label, info in small_cases.values():
        assert image.GetPixelID() == sitk.sitkInt16
        assert label.GetPixelID() == sitk.sitkUInt8
        assert image.GetSize() == label.GetSize()
        assert image.GetSpacing() == label.GetSpacing()
        assert image.GetOrigin() == label.GetOrigin()
        assert image.GetDirection() == label.GetDirection()
        direction = np.array(image.GetDirection()).reshape(3, 3)
        np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-12)
        assert list(sitk.GetArrayViewFromImage(image).shape) == info["shape"]
        # anisotropic: slices (whichever array axis they are on) much thicker than pixels
        spacing = sorted(image.GetSpacing())
        assert spacing[0] == pytest.approx(spacing[1])
        assert 0.6 <= spacing[0] <= 1.0
        assert 2.0 <= spacing[2] <= 5.0 and spacing[2] > 2 * spacing[1]
        assert sorted(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) == [0, 1, 2, 3, 4]


def test_cases_vary_in_grid_and_orientation():
    infos = [generate_case(seed=case_seed(1, i), shape=TINY, return_info=True)[2] for i in range(8)]
    assert len({tuple(i["shape"]) for i in infos}) == len(infos)
    assert len({round(i["spacing"][0], 3) for i in infos if i["orientation"] == "LPS"}) > 1
    orientations = [i["orientation"] for i in infos]
    assert "LPS" in orientations and set(orientations) - {"LPS"}


def test_same_seed_same_case_other_seed_differs():
    a_img, a_lab = arrays(*generate_case(seed=7, shape=TINY))
    b_img, b_lab = arrays(*generate_case(seed=7, shape=TINY))
    c_img, _ = arrays(*generate_case(seed=8, shape=TINY))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert a_img.shape != c_img.shape or not np.array_equal(a_img, c_img)


def test_organ_sizes_and_positions_in_patient_coordinates(small_cases):
    for seed, (image, label, info) in small_cases.items():
        img, lab = arrays(image, label)
        volume = {k: int((lab == k).sum()) for k in (LIVER, KIDNEY, SPLEEN, PANCREAS)}
        assert volume[LIVER] > volume[SPLEEN] > volume[PANCREAS] > 0, seed
        assert volume[LIVER] > volume[KIDNEY] > volume[PANCREAS], seed
        components, n = ndimage.label(lab == KIDNEY)
        assert n == 2, seed  # both kidneys carry label 2
        spine = centroid_mm(image, tissue_mask(info, "vertebral_body"))
        aorta = centroid_mm(image, tissue_mask(info, "aorta"))
        liver, spleen, pancreas = (centroid_mm(image, lab == k) for k in (LIVER, SPLEEN, PANCREAS))
        kidneys = sorted(centroid_mm(image, components == i)[0] for i in (1, 2))
        # LPS: x grows towards the patient's left, y towards the back
        assert liver[0] < spine[0] < spleen[0], seed
        assert kidneys[0] < spine[0] < kidneys[1], seed
        assert spleen[1] > aorta[1] and spleen[1] > liver[1], seed  # spleen posterior
        assert pancreas[1] < aorta[1], seed  # pancreas in front of the aorta
        assert spine[1] > aorta[1], seed


def test_intensities_are_portal_venous_ct(default_cases):
    cross = ndimage.generate_binary_structure(3, 1)
    for seed, (image, label, info) in default_cases.items():
        img, lab = arrays(image, label)
        median = {k: np.median(img[ndimage.binary_erosion(lab == k, cross)]) for k in (LIVER, SPLEEN, PANCREAS)}
        assert 100 <= median[SPLEEN] <= 130, seed
        assert 80 <= median[PANCREAS] <= 110, seed
        if info["fatty_liver"]:
            assert median[LIVER] < median[SPLEEN] - 20, seed
        else:
            assert 90 <= median[LIVER] <= 130, seed
        # kidney: an outer layer just below the surface is brighter than the kidney's inner part
        depth = ndimage.distance_transform_edt(lab == KIDNEY, sampling=image.GetSpacing()[::-1])
        pixel = min(image.GetSpacing())
        outer = img[(depth > pixel) & (depth <= 2.5 * pixel)]
        inner = img[depth > 0.6 * depth.max()]
        assert np.median(outer) > np.median(inner) + 10, seed
        assert np.median(img[tissue_mask(info, "kidney_cortex")]) > np.median(img[tissue_mask(info, "kidney_medulla")])
        assert -120 <= np.median(img[tissue_mask(info, "subcutaneous_fat")]) <= -80, seed
        assert -1010 <= np.median(img[tissue_mask(info, "air")]) <= -990, seed
        assert np.median(img[tissue_mask(info, "vertebral_body")]) > 120, seed
        assert np.median(img[tissue_mask(info, "aorta")]) > np.median(img[lab == LIVER]), seed
    assert any(info["fatty_liver"] for _, _, info in default_cases.values())
    assert not all(info["fatty_liver"] for _, _, info in default_cases.values())


def test_lesions_cysts_and_tumours_keep_their_organ_label(small_cases):
    seen = set()
    for seed, (image, label, info) in small_cases.items():
        lab = sitk.GetArrayFromImage(label)
        for tissue, organ in (("liver_lesion", LIVER), ("kidney_cyst", KIDNEY), ("kidney_tumour", KIDNEY),
                              ("liver_vessel", LIVER)):
            mask = tissue_mask(info, tissue)
            if mask.any():
                seen.add(tissue)
                assert (lab[mask] == organ).all(), (seed, tissue)
        assert (tissue_mask(info, "liver_lesion").any()) == (info["liver_lesions"] > 0), seed
        assert (tissue_mask(info, "kidney_cyst").any()) == info["kidney_cyst"], seed
        assert not (lab[tissue_mask(info, "gallbladder")] == LIVER).any(), seed
    assert seen == {"liver_lesion", "kidney_cyst", "kidney_tumour", "liver_vessel"}


def test_liver_dome_crop_flag_matches_the_top_slice(small_cases):
    flags = []
    for seed, (image, label, info) in small_cases.items():
        lps = sitk.GetArrayFromImage(sitk.DICOMOrient(label, "LPS"))
        assert info["liver_dome_cropped"] == bool((lps[-1] == LIVER).any()), seed  # last slice: most superior
        flags.append(info["liver_dome_cropped"])
    assert any(flags) and not all(flags)


@pytest.mark.parametrize("orientation", OTHER_ORIENTATIONS)
def test_orientation_variants_hold_the_same_physical_anatomy(orientation):
    ref_img, ref_lab = generate_case(seed=3, shape=SMALL, orientation="LPS")
    img, lab = generate_case(seed=3, shape=SMALL, orientation=orientation)
    assert img.GetDirection() != ref_img.GetDirection()
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection()) == orientation
    back_img, back_lab = sitk.DICOMOrient(img, "LPS"), sitk.DICOMOrient(lab, "LPS")
    np.testing.assert_allclose(back_img.GetOrigin(), ref_img.GetOrigin(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back_img), sitk.GetArrayFromImage(ref_img))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back_lab), sitk.GetArrayFromImage(ref_lab))
    a_ref, a = sitk.GetArrayFromImage(ref_lab), sitk.GetArrayFromImage(lab)
    for k in (LIVER, KIDNEY, SPLEEN, PANCREAS):
        np.testing.assert_allclose(centroid_mm(lab, a == k), centroid_mm(ref_lab, a_ref == k), atol=1e-6)


def test_anatomy_size_does_not_depend_on_the_voxel_spacing():
    """Same seed, same nominal field of view, finer voxels: the same organs in millimetres."""
    coarse_img, coarse_lab = generate_case(seed=4, shape=(32, 96, 96), spacing=(2.5, 0.8, 0.8))
    fine_img, fine_lab = generate_case(seed=4, shape=(40, 128, 128), spacing=(2.0, 0.6, 0.6))
    assert fine_img.GetSpacing()[0] < coarse_img.GetSpacing()[0]
    a, b = sitk.GetArrayFromImage(coarse_lab), sitk.GetArrayFromImage(fine_lab)
    va, vb = np.prod(coarse_img.GetSpacing()), np.prod(fine_img.GetSpacing())
    for k in (LIVER, KIDNEY, SPLEEN):
        assert (a == k).sum() * va == pytest.approx((b == k).sum() * vb, rel=0.1), k
        np.testing.assert_allclose(centroid_mm(coarse_lab, a == k), centroid_mm(fine_lab, b == k), atol=1.5)


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def test_nnunet_dataset_layout_and_byte_identical_reruns(tmp_path):
    a = generate_dataset(tmp_path / "a" / "Dataset990_Phantom", cases=3, seed=11, shape=TINY)
    b = generate_dataset(tmp_path / "b" / "Dataset990_Phantom", cases=3, seed=11, shape=TINY)
    c = generate_dataset(tmp_path / "c" / "Dataset990_Phantom", cases=3, seed=12, shape=TINY)
    assert a == tmp_path / "a" / "Dataset990_Phantom"
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == ["dataset.json", "imagesTr/phantom_000_0000.nii.gz", "imagesTr/phantom_001_0000.nii.gz",
                     "imagesTr/phantom_002_0000.nii.gz", "labelsTr/phantom_000.nii.gz", "labelsTr/phantom_001.nii.gz",
                     "labelsTr/phantom_002.nii.gz", "phantom_cases.json"]
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    first = "imagesTr/phantom_000_0000.nii.gz"
    assert (a / first).read_bytes() != (c / first).read_bytes()
    meta = json.loads((a / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == FLARE21_DATASET_LABELS == {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert {"name", "description", "licence"} <= set(meta)
    cases = json.loads((a / "phantom_cases.json").read_text())
    for i in range(3):
        img, image = read(a / f"imagesTr/phantom_{i:03d}_0000.nii.gz")
        lab, label = read(a / f"labelsTr/phantom_{i:03d}.nii.gz")
        assert img.dtype == np.int16 and lab.dtype == np.uint8 and img.shape == lab.shape
        assert image.GetDirection() == label.GetDirection() and image.GetOrigin() == label.GetOrigin()
        info = cases[f"phantom_{i:03d}"]
        assert info["seed"] == case_seed(11, i) and list(img.shape) == info["shape"]
        orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
        assert orientation == info["orientation"]
        same, _ = arrays(*generate_case(seed=info["seed"], shape=TINY))
        np.testing.assert_array_equal(img, same)


def test_flare21_layout(tmp_path):
    out = generate_dataset(tmp_path / "flare", cases=2, seed=0, shape=TINY, naming="flare21")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["TrainingImg/train_000_0000.nii.gz", "TrainingImg/train_001_0000.nii.gz",
                     "TrainingMask/train_000.nii.gz", "TrainingMask/train_001.nii.gz", "phantom_cases.json"]
    img, _ = read(out / "TrainingImg/train_001_0000.nii.gz")
    lab, _ = read(out / "TrainingMask/train_001.nii.gz")
    assert img.dtype == np.int16 and lab.dtype == np.uint8 and img.shape == lab.shape
    assert set(np.unique(lab).tolist()) <= {0, 1, 2, 3, 4}


def test_existing_output_and_bad_options_are_refused(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(NnsdmError, match="exists"):
        generate_dataset(out, cases=1, seed=0, shape=TINY)
    assert (out / "keep.txt").read_text() == "mine"
    generate_dataset(out, cases=1, seed=0, shape=TINY, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "dataset.json").is_file()
    for kwargs, message in [({"naming": "msd"}, "naming"), ({"cases": 0}, "cases"), ({"shape": (8, 64, 64)}, "shape"),
                            ({"spacing": (2.5, 0, 0.8)}, "spacing"), ({"seed": -1}, "seed")]:
        options = {"cases": 1, "seed": 0, "shape": TINY, **kwargs}
        with pytest.raises(NnsdmError, match=message):
            generate_dataset(tmp_path / "new", **options)
        assert not (tmp_path / "new").exists()
    with pytest.raises(NnsdmError, match="orientation"):
        generate_case(seed=0, shape=TINY, orientation="XYZ")

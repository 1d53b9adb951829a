"""check_dataset finds each kind of dataset fault and names the file at fault."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers_images import SHAPE, ct, edit_json, make_dataset, mask, write

from nnsdm.datasets import Problem, check_dataset


def check(root: Path) -> list[Problem]:
    return check_dataset(root, progress=False)


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "Dataset001_Tiny")


def img(ds: Path, case: str = "case_001", channel: int = 0, folder: str = "imagesTr") -> Path:
    return ds / folder / f"{case}_{channel:04d}.nii.gz"


def lab(ds: Path, case: str = "case_001") -> Path:
    return ds / "labelsTr" / f"{case}.nii.gz"


# clean datasets ----------------------------------------------------------------------------------------


def test_clean_dataset_has_no_problems(ds):
    assert check(ds) == []


def test_clean_two_channel_uncompressed_dataset_has_no_problems(tmp_path):
    root = make_dataset(tmp_path / "d", channels=2, file_ending=".nii")
    assert check(root) == []


def test_tiny_differences_within_tolerance_are_accepted(ds):
    write(lab(ds), mask(), spacing=(2.5 * (1 + 1e-6), 0.8, 0.8), origin=(1e-6, 0.0, 0.0))
    assert check(ds) == []


def test_problem_str_names_file_then_message():
    assert str(Problem(Path("a/b.nii.gz"), "broken")) == "a/b.nii.gz: broken"


def test_progress_bar_only_when_asked(ds, capsys):
    check_dataset(ds, progress=True)
    assert "3/3" in capsys.readouterr().err  # two training cases and one test case
    check_dataset(ds, progress=False)
    assert capsys.readouterr().err == ""


# unreadable files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["image", "label", "test image"])
def test_truncated_nii_gz_is_found(ds, which):
    path = {"image": img(ds), "label": lab(ds), "test image": img(ds, "case_101", folder="imagesTs")}[which]
    data = path.read_bytes()
    # cut an image in half; a (small, well compressed) label just before its end, to keep its header
    path.write_bytes(data[: len(data) // 2] if which != "label" else data[:-16])
    # SimpleITK itself reads such a file without complaint (the missing part becomes zeros)
    sitk.ReadImage(str(path))
    p = only(check(ds))
    assert p.file == path and "truncated" in p.message


def test_truncated_uncompressed_nii_is_found(tmp_path):
    root = make_dataset(tmp_path / "d", file_ending=".nii")
    path = root / "imagesTr" / "case_002_0000.nii"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    p = only(check(root))
    assert p.file == path and "truncated" in p.message


def test_corrupt_gzip_label_is_found(ds):
    """A gzip trailer that claims the right size passes the cheap check, but reading a label's voxels
    verifies the gzip checksum."""
    shape = (32, 128, 128)  # large enough that reading the header does not reach the end of the stream
    write(img(ds), ct(shape=shape))
    path = write(lab(ds), np.random.default_rng(0).integers(0, 5, shape).astype(np.uint8))
    data = bytearray(path.read_bytes())
    data[-8:-4] = bytes(4)  # a wrong CRC
    path.write_bytes(bytes(data))
    p = only(check(ds))
    assert p.file == path and "unreadable" in p.message and "CRC" in p.message


def test_multi_member_gzip_is_not_mistaken_for_truncation(ds):
    path = img(ds)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).shape == SHAPE
    assert check(ds) == []


def test_multi_member_gzip_cut_short_is_found(ds):
    path = img(ds)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:-200]))
    p = only(check(ds))
    assert p.file == path and "truncated" in p.message


def test_zero_byte_file_is_unreadable(ds):
    img(ds).write_bytes(b"")
    p = only(check(ds))
    assert p.file == img(ds) and "unreadable" in p.message


def test_non_image_file_is_unreadable(ds):
    lab(ds, "case_002").write_text("this is not an image\n")
    p = only(check(ds))
    assert p.file == lab(ds, "case_002") and "unreadable" in p.message


def test_broken_symlink_is_unreadable(ds):
    img(ds).unlink()
    img(ds).symlink_to(ds / "nowhere.nii.gz")
    p = only(check(ds))
    assert p.file == img(ds) and "broken symbolic link" in p.message


# pairing and channels ----------------------------------------------------------------------------------


def test_image_without_label(ds):
    lab(ds, "case_002").unlink()
    p = only(check(ds))
    assert p.file == img(ds, "case_002") and "image without label" in p.message


def test_label_without_image(ds):
    write(lab(ds, "case_003"), mask())
    p = only(check(ds))
    assert p.file == lab(ds, "case_003") and "label without image" in p.message


def test_missing_second_channel(tmp_path):
    root = make_dataset(tmp_path / "d", channels=2)
    img(root, "case_002", 1).unlink()
    p = only(check(root))
    assert p.file == img(root, "case_002", 1)
    assert "missing channel 1" in p.message and "2 channels" in p.message


def test_extra_channel(ds):
    write(img(ds, "case_001", 1), ct(5))
    p = only(check(ds))
    assert p.file == img(ds, "case_001", 1) and "channel 1" in p.message


def test_file_not_named_by_channel(ds):
    bad = ds / "imagesTr" / "case_003.nii.gz"
    write(bad, ct())
    p = only(check(ds))
    assert p.file == bad and "CASE_XXXX" in p.message


def test_file_with_other_ending(ds):
    bad = ds / "imagesTr" / "case_003_0000.nii"
    write(bad, ct())
    p = only(check(ds))
    assert p.file == bad and "file_ending" in p.message


def test_missing_labels_folder(ds):
    for f in (ds / "labelsTr").iterdir():
        f.unlink()
    (ds / "labelsTr").rmdir()
    p = only(check(ds))
    assert p.file == ds / "labelsTr" and "missing" in p.message


def test_missing_dataset_folder(tmp_path):
    p = only(check(tmp_path / "nope"))
    assert p.file == tmp_path / "nope" and "not found" in p.message


# geometry ----------------------------------------------------------------------------------------------


def test_size_mismatch(ds):
    write(lab(ds), mask(shape=(8, 16, 17)))
    p = only(check(ds))
    assert p.file == lab(ds) and "shape (8, 16, 17) differs" in p.message and "case_001_0000" in p.message


def test_spacing_mismatch(ds):
    write(lab(ds), mask(), spacing=(2.5, 0.8, 0.9))
    p = only(check(ds))
    assert p.file == lab(ds) and "spacing (2.5, 0.8, 0.9) differs" in p.message


def _with_pixdim_z(path: Path, value: float) -> None:
    """Rewrite a .nii.gz with pixdim[3] (the z spacing, as the header stores it) set to ``value``."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[88:92] = np.float32(value).tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))


def test_spacing_that_is_not_positive(ds):
    for path in (img(ds), lab(ds)):
        _with_pixdim_z(path, -2.5)
    problems = check(ds)
    assert sorted(p.file for p in problems) == sorted([img(ds), lab(ds)])
    assert all("voxel spacing (-2.5, 0.8, 0.8) (z, y, x, mm) is not finite and positive" in p.message for p in problems)


def test_origin_mismatch(ds):
    write(lab(ds, "case_002"), mask(), origin=(0.0, 5.0, 0.0))
    p = only(check(ds))
    assert p.file == lab(ds, "case_002") and "origin" in p.message


def test_direction_mismatch(ds):
    flipped = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    write(lab(ds), mask(), direction=flipped)
    p = only(check(ds))
    assert p.file == lab(ds) and "direction" in p.message


def test_channel_geometry_mismatch(tmp_path):
    root = make_dataset(tmp_path / "d", channels=2)
    write(img(root, "case_001", 1), ct(3), spacing=(3.0, 0.8, 0.8))
    p = only(check(root))  # channels and label are compared with channel 0: only channel 1 is at fault
    assert p.file == img(root, "case_001", 1) and "spacing" in p.message


@pytest.mark.parametrize("array,kwargs,expected", [
    (np.zeros((16, 16), np.int16), {}, "2D"),
    (np.zeros((2, *SHAPE), np.int16), {}, "4D"),
    (np.zeros((*SHAPE, 3), np.int16), {"vector": True}, "3 components"),
])
def test_images_that_are_not_3d(ds, array, kwargs, expected):
    write(img(ds, "case_002"), array, **kwargs)
    p = only(check(ds))
    assert p.file == img(ds, "case_002") and "not a 3D" in p.message and expected in p.message


def test_label_that_is_not_3d(ds):
    write(lab(ds), np.zeros((16, 16), np.uint8))
    p = only(check(ds))
    assert p.file == lab(ds) and "not a 3D image (2D" in p.message


# voxel values ------------------------------------------------------------------------------------------


def test_label_values_not_in_dataset_json(ds):
    write(lab(ds, "case_002"), mask(values=(1, 7, 3)))
    p = only(check(ds))
    assert p.file == lab(ds, "case_002") and "label values {7} not in dataset.json labels" in p.message


def test_negative_label_values(ds):
    values = mask().astype(np.int16)
    values[0, 0, 0] = -1
    write(lab(ds), values)
    p = only(check(ds))
    assert p.file == lab(ds) and "label values {-1} not in" in p.message


def test_float_labels_with_whole_values_are_fine(ds):
    write(lab(ds), mask().astype(np.float32))
    assert check(ds) == []


def test_non_integer_label_values(ds):
    write(lab(ds), mask().astype(np.float32) * 0.5)
    p = only(check(ds))
    assert p.file == lab(ds) and "{0.5, 1.5}" in p.message


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_intensities(ds, bad_value):
    values = ct().astype(np.float32)
    values[3, 4, 5] = bad_value
    values[3, 4, 6] = bad_value
    write(img(ds, "case_002"), values)
    p = only(check(ds))
    assert p.file == img(ds, "case_002") and "2 voxel(s) are NaN or infinite" in p.message


def test_float_images_without_nan_are_fine(ds):
    write(img(ds), ct().astype(np.float32))
    assert check(ds) == []


# dataset.json ------------------------------------------------------------------------------------------


def test_missing_dataset_json(ds):
    (ds / "dataset.json").unlink()
    p = only(check(ds))
    assert p.file == ds / "dataset.json" and "missing" in p.message


def test_dataset_json_not_json(ds):
    (ds / "dataset.json").write_text("{'labels': oops")
    p = only(check(ds))
    assert p.file == ds / "dataset.json" and "not valid JSON" in p.message


@pytest.mark.parametrize("key", ["channel_names", "labels", "file_ending", "numTraining"])
def test_dataset_json_missing_key(ds, key):
    edit_json(ds, **{key: None})
    p = only(check(ds))
    assert p.file == ds / "dataset.json" and f"missing required key '{key}'" in p.message


def test_labels_without_background(ds):
    edit_json(ds, labels={"liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4})
    p = only(check(ds))
    assert p.file == ds / "dataset.json" and "no 'background'" in p.message


def test_background_not_zero(ds):
    edit_json(ds, labels={"background": 5, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4})
    p = only(check(ds))
    assert p.file == ds / "dataset.json" and "background label must be 0" in p.message


def test_non_consecutive_labels(ds):
    edit_json(ds, labels={"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4, "other": 6})
    p = only(check(ds))
    assert p.file == ds / "dataset.json" and "consecutive" in p.message and "6" in p.message


def test_ignore_label_and_regions_are_accepted(ds):
    edit_json(ds, labels={"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4,
                          "abdomen": [1, 2, 3, 4], "ignore": 5})
    write(lab(ds), mask(values=(1, 5)))
    assert check(ds) == []


def test_num_training_mismatch(ds):
    edit_json(ds, numTraining=3)
    p = only(check(ds))
    assert p.file == ds / "dataset.json" and "numTraining is 3 but imagesTr has 2 cases" in p.message


def test_bad_channel_names_keys(ds):
    edit_json(ds, channel_names={"1": "CT"})
    p = only(check(ds))
    assert p.file == ds / "dataset.json" and "channel_names" in p.message


def test_dataset_entry_lists_files(ds):
    """nnU-Net's optional 'dataset' entry names the files of each case instead of the folders."""
    edit_json(ds, dataset={"a": {"images": ["imagesTr/case_001_0000.nii.gz"], "label": "labelsTr/case_001.nii.gz"},
                           "b": {"images": ["imagesTr/case_002_0000.nii.gz"], "label": "labelsTr/gone.nii.gz"}})
    p = only(check(ds))
    assert p.file == ds / "labelsTr" / "gone.nii.gz" and "missing" in p.message


# several problems --------------------------------------------------------------------------------------


def test_every_problem_is_reported(ds):
    write(lab(ds), mask(values=(9,)), spacing=(2.0, 0.8, 0.8))
    img(ds, "case_002").write_bytes(b"")
    edit_json(ds, numTraining=5)
    problems = check(ds)
    assert len(problems) == 4, problems
    by_file = {}
    for p in problems:
        by_file.setdefault(p.file, []).append(p.message)
    assert any("numTraining" in m for m in by_file[ds / "dataset.json"])
    assert sorted(m.split()[0] for m in by_file[lab(ds)]) == ["label", "spacing"]
    assert "unreadable" in by_file[img(ds, "case_002")][0]
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 5  # nothing was changed

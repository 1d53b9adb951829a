"""Inputs of nnsdm predict without a trained model: reorientation and input discovery (NIfTI naming,
DICOM series)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnsdm.errors import NnsdmError
from nnsdm.inference import find_cases
from nnsdm.inference.io import reorient
from nnsdm.orientation import orientation_code


@pytest.mark.parametrize("code", ["LPS", "RAS", "SAR", "ILP"])
def test_reorientation_is_undone_exactly(code):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(array)
    image.SetDirection((0, 0, 1, -1, 0, 0, 0, 1, 0))
    oriented, how = reorient(image, code)
    assert orientation_code(oriented) == code
    moved = sitk.GetArrayFromImage(oriented)
    np.testing.assert_array_equal(how.undo(moved), array)
    np.testing.assert_array_equal(how.undo(np.stack([moved, moved + 1])), np.stack([array, array + 1]))


def test_find_cases_reads_channel_0_and_plain_names(tmp_path):
    volume = np.zeros((4, 8, 8), np.int16)
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b.nii.gz", "c_0000.nii"):
        sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / name))
    (tmp_path / "notes.txt").write_text("not an image")
    cases = find_cases(tmp_path)
    assert [(c.name, c.path.name, c.kind) for c in cases] == [
        ("a", "a_0000.nii.gz", "nifti"), ("b", "b.nii.gz", "nifti"), ("c", "c_0000.nii", "nifti")]
    assert [c.name for c in find_cases(tmp_path / "a_0000.nii.gz")] == ["a"]
    with pytest.raises(NnsdmError, match="channel 0001 of a case"):
        find_cases(tmp_path / "a_0001.nii.gz")
    with pytest.raises(NnsdmError, match="notes.txt: not a NIfTI file"):
        find_cases(tmp_path / "notes.txt")


def test_two_inputs_for_one_case_are_refused(tmp_path):
    volume = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16))
    sitk.WriteImage(volume, str(tmp_path / "a_0000.nii.gz"))
    sitk.WriteImage(volume, str(tmp_path / "a.nii.gz"))
    with pytest.raises(NnsdmError, match="same case name 'a'"):
        find_cases(tmp_path)


def _write_dicom_series(folder: Path, uid: str, *, slices: int = 3, seed: int = 0) -> None:
    import locale

    saved = locale.setlocale(locale.LC_ALL)  # GDCM's DICOM writer resets the process locale to "C"
    try:
        _write_slices(folder, uid, slices=slices, seed=seed)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(folder: Path, uid: str, *, slices: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.random.default_rng(seed).integers(-1000, 1000, size=(slices, 8, 8)).astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(slices):
        image = sitk.GetImageFromArray(volume[k])
        for tag, value in {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.9", "0020|000e": uid,
                           "0008|0018": f"{uid}.{k + 1}", "0020|0013": str(k + 1), "0020|0032": f"0\\0\\{2.0 * k}",
                           "0020|0037": "1\\0\\0\\0\\1\\0"}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid}.{k}.dcm"))
        writer.Execute(image)


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    mixed = tmp_path / "mixed"
    _write_dicom_series(mixed, "1.2.826.0.1.3680043.2.1", seed=1)
    _write_dicom_series(mixed, "1.2.826.0.1.3680043.2.2", seed=2)
    with pytest.raises(NnsdmError) as err:
        find_cases(mixed)
    message = str(err.value)
    assert str(mixed) in message and "2 DICOM series" in message
    assert "1.2.826.0.1.3680043.2.1" in message and "1.2.826.0.1.3680043.2.2" in message
    _write_dicom_series(tmp_path / "study" / "one", "1.2.826.0.1.3680043.2.3")
    _write_dicom_series(tmp_path / "study" / "two", "1.2.826.0.1.3680043.2.4")
    assert [(c.name, len(c.files)) for c in find_cases(tmp_path / "study")] == [("one", 3), ("two", 3)]



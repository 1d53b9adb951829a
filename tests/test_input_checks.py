"""Inputs that are not what a CT model expects: refused at predict with one line saying which rule they break."""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from nnsdm.cli import main
from nnsdm.errors import NnsdmError
from nnsdm.inference.io import check_case, find_cases, read_case

pydicom = pytest.importorskip("pydicom", reason="pydicom writes the test DICOM series (pip install pydicom)")

from helpers_dicom import SLICE, write_series  # noqa: E402

def refusal(path: Path) -> str:
    """The one-line refusal of the case at ``path`` (checked the way predict checks, then read)."""
    with pytest.raises(NnsdmError) as exc:
        (case,) = find_cases(path)
        check_case(case)
        read_case(case)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_regular_ct_series_passes_and_reads(tmp_path):
    (case,) = find_cases(write_series(tmp_path / "ct"))
    check_case(case)
    image = read_case(case)
    assert image.GetSize() == (SLICE, SLICE, 8)
    assert image.GetSpacing() == pytest.approx((1.5, 1.5, 2.5))


BAD_SERIES = {
    "MR series": (dict(modality="MR"), "Modality is MR, not CT"),
    "no modality": (dict(modality=""), "Modality is missing"),
    "no Hounsfield rescale": (dict(rescale=False), "no Hounsfield rescale"),
    "optical density rescale": (dict(rescale_type="OD"), "not Hounsfield units"),
    "missing slice": (dict(positions=[(0, 0, 2.5 * k) for k in (0, 1, 2, 4, 5, 6, 7)]), "1 slice(s) missing?"),
    "uneven spacing": (dict(positions=[(0, 0, z) for z in (0, 2.5, 5, 7.5, 11, 14.5, 18)]), "uneven slice spacing"),
    "two slices at one position": (dict(positions=[(0, 0, z) for z in (0, 2.5, 2.5, 5, 7.5)]), "two slices at the same position"),
    "gantry tilt": (dict(positions=[(0, 0.5 * k, 2.5 * k) for k in range(8)]), "gantry tilt of 11.3 degrees"),
    "zero pixel spacing": (dict(pixel_spacing=(0, 1.5)), "spacing"),
}


@pytest.mark.parametrize("name", sorted(BAD_SERIES))
def test_series_that_are_not_a_regular_ct_volume_are_refused(tmp_path, name):
    options, expected = BAD_SERIES[name]
    message = refusal(write_series(tmp_path / "series", **options))
    assert message.startswith(str(tmp_path / "series")) and expected in message, message


def test_oblique_but_untilted_series_passes(tmp_path):
    """Oblique slices stepping along their own normal are a regular grid, not a tilt."""
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    normal = np.cross([1, 0, 0], [0, c, s])
    positions = [tuple(2.5 * k * normal) for k in range(8)]
    (case,) = find_cases(write_series(tmp_path / "oblique", positions=positions, orientation=(1, 0, 0, 0, c, s)))
    check_case(case)


def test_real_series_with_one_slice_removed_is_refused(tmp_path, real_ct):
    series = tmp_path / "series"
    shutil.copytree(real_ct / "dicom-series", series)
    (case,) = find_cases(series)
    check_case(case)  # the real series as it is passes
    Path(case.files[10]).unlink()
    assert "1 slice(s) missing?" in refusal(series)


def test_real_series_relabelled_as_mr_is_refused(tmp_path, real_ct):
    series = tmp_path / "series"
    shutil.copytree(real_ct / "dicom-series", series)
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    assert "Modality is MR, not CT" in refusal(series)


# --- NIfTI -------------------------------------------------------------------------------------------

def _nifti(path: Path, array: np.ndarray, pixdim=(1.0, 1.0, 1.0), affine=None) -> Path:
    image = nibabel.Nifti1Image(array, affine if affine is not None else np.diag([*pixdim, 1.0]))
    image.header["pixdim"][1:4] = pixdim
    nibabel.save(image, path)
    return path


def test_nan_voxels_are_refused_though_simpleitk_reads_them_as_zero(tmp_path):
    array = np.full((8, 16, 16), -100, np.float32)
    array[4, 8, 8] = np.nan
    array[5, 8, 8] = np.inf
    path = _nifti(tmp_path / "nan_0000.nii.gz", array)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # the silent substitution
    assert refusal(path).endswith("2 voxel(s) are NaN or infinite (SimpleITK would read NaN as 0)")


@pytest.mark.parametrize("pixdim", [(0.0, 1.0, 1.0), (np.nan, 1.0, 1.0), (1.0, np.inf, 1.0)])
def test_spacing_that_itk_would_replace_by_1mm_is_refused(tmp_path, pixdim):
    path = tmp_path / "case_0000.nii.gz"
    image = nibabel.Nifti1Image(np.zeros((8, 16, 16), np.int16), None)
    image.header["pixdim"][1:4] = pixdim
    image.header.set_qform(None, code=0)
    image.header.set_sform(None, code=0)
    nibabel.save(image, path)
    assert "voxel spacing (NIfTI pixdim)" in refusal(path)


def test_degenerate_direction_is_refused(tmp_path):
    affine = np.eye(4)
    affine[:3, 1] = [1, 0, 0]  # two axes along x
    image = nibabel.Nifti1Image(np.zeros((8, 16, 16), np.int16), None)
    image.header.set_qform(None, code=0)
    image.header.set_sform(affine, code=1)
    nibabel.save(image, tmp_path / "case_0000.nii.gz")
    assert "orthonormal" in refusal(tmp_path / "case_0000.nii.gz")


def test_huge_header_is_refused_before_anything_is_decompressed(tmp_path):
    """A 60 kB file whose header claims 4096^3 voxels (a gzip bomb's shape): refused from the header alone."""
    header = nibabel.Nifti1Header()
    header.set_data_shape((4096, 4096, 4096))
    header.set_data_dtype(np.int16)
    path = tmp_path / "bomb_0000.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + b"\0" * (1 << 20))
    start = time.monotonic()
    assert "more than the 1,073,741,824 a CT volume has" in refusal(path)
    assert time.monotonic() - start < 5


def test_predict_refuses_a_nan_image_in_one_line_and_writes_nothing(trained_model, tmp_path, capsys):
    array = np.full((24, 64, 64), -100, np.float32)
    array[10, 30, 30] = np.nan
    inputs = tmp_path / "in"
    inputs.mkdir()
    _nifti(inputs / "nan_0000.nii.gz", array, pixdim=(5.0, 5.0, 8.0))
    out = tmp_path / "out"
    assert main(["predict", "-i", str(inputs), "-o", str(out), "--model", str(trained_model), "--device", "cpu"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nnsdm:")]  # after the progress bar
    assert len(lines) == 1 and lines[0].startswith(f"nnsdm: error: {inputs / 'nan_0000.nii.gz'}: 1 voxel(s) are NaN")
    assert not list(out.glob("*.nii.gz")) if out.exists() else True


# --- training data (nnsdm check, which nnsdm plan runs first) -------------------------------------

def test_training_data_that_teaches_nothing_is_a_problem(tmp_path, capsys):
    import json

    from helpers_images import make_dataset, mask, write

    background = make_dataset(tmp_path / "background")
    for path in (background / "labelsTr").iterdir():
        write(path, np.zeros_like(mask()))
    nan_labels = make_dataset(tmp_path / "nan")
    labels = mask().astype(np.float32)
    labels[0, 0, 0] = np.nan
    write(sorted((nan_labels / "labelsTr").iterdir())[0], labels)
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "labelsTr").mkdir()
    (empty / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                                                    "numTraining": 0, "file_ending": ".nii.gz"}))
    expected = {background: "labelsTr: every label map is all background (0): nothing to learn",
                nan_labels: "case_001.nii.gz: label values {nan} not in dataset.json labels",
                empty: "imagesTr: no training cases: nothing to train on"}
    for dataset, message in expected.items():
        assert main(["check", str(dataset)]) == 1
        out = capsys.readouterr().out
        assert message in out, out


def test_a_damaged_first_slice_is_not_silently_left_out(tmp_path):
    """GDCM's series scan skips a file it cannot parse; without the first slice the rest is still regular."""
    series = write_series(tmp_path / "series")
    first = sorted(series.iterdir())[0]
    first.write_bytes(first.read_bytes()[:300])
    assert "slice_000.dcm: a DICOM file beside the series that is not part of it" in refusal(series)

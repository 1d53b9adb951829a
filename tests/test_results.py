"""``nnsdm predict`` end to end with DICOM SEG, statistics and previews, using the session's tiny trained model.

A phantom case is written as a DICOM series (instance numbers against the slice positions) and
predicted once with ``--output-format both --statistics --preview``; the SEG must equal the NIfTI label
map slice for slice, and the statistics those of the NIfTI label map.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from helpers_dicom import check_seg_against_labels, write_ct_series
from matplotlib.image import imread

from nnsdm.cli import main
from nnsdm.errors import NnsdmError
from nnsdm.inference import find_cases, predict
from nnsdm.inference.io import read_case
from nnsdm.inference.statistics import organ_statistics
from nnsdm.labels import FLARE21_LABELS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory, phantom_dataset):
    image = sitk.ReadImage(str(sorted((phantom_dataset / "imagesTr").glob("*_0000.nii.gz"))[0]))
    folder = tmp_path_factory.mktemp("dicom") / "series" / "phantom_case"
    write_ct_series(image, folder, reverse_instances=True)
    return folder.parent


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, trained_model, phantom_series):
    out = tmp_path_factory.mktemp("pred") / "out"
    (path,) = predict(input=phantom_series, output=out, model=trained_model, tta=False, device="cpu", progress=False,
                      output_format="both", statistics=True, preview=True)
    assert path == out / "phantom_case.nii.gz"
    return out


def test_seg_equals_the_nifti_label_map(predicted, phantom_series):
    (case,) = find_cases(phantom_series)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(predicted / "phantom_case.nii.gz")))
    assert set(np.unique(labels)) - {0}, "the tiny model predicted no organ: nothing to compare"
    ds = check_seg_against_labels(predicted / "phantom_case_seg.dcm", case.files, labels, FLARE21_LABELS)
    assert ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters == "folds=0"


def test_statistics_and_summary_are_those_of_the_label_map(predicted, phantom_series):
    (case,) = find_cases(phantom_series)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(predicted / "phantom_case.nii.gz")))
    expected = organ_statistics(labels, read_case(case), FLARE21_LABELS, case="phantom_case")
    table = pd.read_csv(predicted / "statistics.csv", dtype={"case": str})
    assert list(table["organ"]) == list(FLARE21_LABELS.values())
    np.testing.assert_array_equal(table["voxels"], expected["voxels"])
    np.testing.assert_allclose(table["volume_ml"], expected["volume_ml"], rtol=1e-5)
    np.testing.assert_allclose(table["hu_mean"], expected["hu_mean"].astype(float), rtol=1e-5)
    summary = json.loads((predicted / "summary.json").read_text())["cases"]["phantom_case"]
    assert summary["organs"]["liver"]["voxels"] == int((labels == 1).sum())
    assert set(summary["outputs"]) >= {"phantom_case.nii.gz", "phantom_case_seg.dcm", "phantom_case_preview.png"}


def test_previews_and_contact_sheet(predicted):
    assert imread(predicted / "phantom_case_preview.png").shape[:2] == (460, 1200)
    assert imread(predicted / "previews.png").shape[:2] == (230, 600)  # one case at 600 pixels wide


def test_dicom_seg_only_and_rerun_skips(tmp_path, trained_model, phantom_series):
    out = tmp_path / "out"
    for _ in range(2):
        assert main(["predict", "-i", str(phantom_series), "-o", str(out), "--model", str(trained_model), "--no-tta",
                     "--device", "cpu", "--output-format", "dicom-seg"]) == 0
        if _ == 0:
            stamp = (out / "phantom_case_seg.dcm").stat().st_mtime_ns
    assert sorted(p.name for p in out.iterdir()) == ["efficiency.csv", "phantom_case_seg.dcm"]
    assert (out / "phantom_case_seg.dcm").stat().st_mtime_ns == stamp  # complete: not predicted again


def test_nifti_input_with_dicom_seg_is_refused_before_any_work(tmp_path, trained_model, phantom_dataset):
    image = sorted((phantom_dataset / "imagesTr").glob("*_0000.nii.gz"))[0]
    with pytest.raises(NnsdmError, match="a NIfTI input; --output-format both needs DICOM series") as err:
        predict(input=image, output=tmp_path / "out", model=trained_model, device="cpu", progress=False,
                output_format="both")
    assert str(err.value).startswith(str(image)) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_series_without_uids_is_refused_before_any_work(tmp_path, trained_model, real_ct):
    with pytest.raises(NnsdmError, match=r"dicom-series/CT\.[0-9.]+: no StudyInstanceUID") as err:
        predict(input=real_ct / "dicom-series", output=tmp_path / "out", model=trained_model, device="cpu",
                progress=False, output_format="dicom-seg")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_nifti_input_statistics_added_to_an_earlier_run(tmp_path, trained_model, phantom_dataset):
    image = sorted((phantom_dataset / "imagesTr").glob("*_0000.nii.gz"))[0]
    out = tmp_path / "out"
    (label,) = predict(input=image, output=out, model=trained_model, tta=False, device="cpu", progress=False)
    assert not (out / "statistics.csv").exists()
    predict(input=image, output=out, model=trained_model, tta=False, device="cpu", progress=False,
            statistics=True, preview=True)  # the case lacks its statistics: predicted again, with them
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    table = pd.read_csv(out / "statistics.csv", dtype={"case": str}).set_index("organ")
    assert (table["case"] == label.name[:-7]).all()
    np.testing.assert_array_equal(table.loc[list(FLARE21_LABELS.values()), "voxels"],
                                  [int((labels == k).sum()) for k in FLARE21_LABELS])
    assert (out / f"{label.name[:-7]}_preview.png").is_file() and (out / "previews.png").is_file()

"""Organ statistics against hand computations on a phantom with known organ volumes and intensities."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnsdm.inference.statistics import COLUMNS, organ_statistics, statistics_summary, update_statistics_csv
from nnsdm.labels import FLARE21_LABELS

NAMES = FLARE21_LABELS  # the model's dataset.json labels in these tests


@pytest.fixture
def phantom():
    """(z, y, x) = (6, 20, 30) at (z, y, x) spacing (4, 2, 0.5) mm = 4 mm^3 per voxel; x axis flipped (RPS)."""
    hu = np.full((6, 20, 30), -100, dtype=np.int16)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[1:5, 2:12, 5:25] = 1  # liver: 4 x 10 x 20 = 800 voxels = 3.2 ml
    hu[1:5, 2:12, 5:25] = np.arange(1, 5, dtype=np.int16)[:, None, None] * 10 + 40  # 50, 60, 70, 80 per slice
    labels[2:4, 15:18, 10:12] = 3  # spleen: 2 x 3 x 2 = 12 voxels = 0.048 ml
    hu[2:4, 15:18, 10:12] = 45
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.5, 2.0, 4.0))
    image.SetOrigin((10.0, -20.0, 100.0))
    image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    return labels, image


def test_statistics_by_hand(phantom):
    labels, image = phantom
    table = organ_statistics(labels, image, NAMES, case="p1").set_index("organ")
    assert list(table.index) == ["liver", "kidney", "spleen", "pancreas"]
    liver = table.loc["liver"]
    assert liver["voxels"] == 800 and liver["volume_ml"] == pytest.approx(3.2)
    assert liver["hu_mean"] == pytest.approx(65.0)  # 200 voxels each of 50, 60, 70, 80
    assert liver["hu_median"] == pytest.approx(65.0)
    assert liver["hu_std"] == pytest.approx(np.sqrt((15**2 + 5**2 + 5**2 + 15**2) / 4))
    assert (liver["hu_min"], liver["hu_max"]) == (50, 80)
    assert [liver[f"bbox_{a}_{e}"] for a in "ijk" for e in ("min", "max")] == [5, 24, 2, 11, 1, 4]
    # x = 10 - 0.5 i (flipped), y = -20 + 2 j, z = 100 + 4 k, at voxel centres
    assert [liver[f"bbox_{a}_{e}_mm"] for a in "xyz" for e in ("min", "max")] == pytest.approx(
        [10 - 0.5 * 24, 10 - 0.5 * 5, -20 + 2 * 2, -20 + 2 * 11, 104, 116])
    spleen = table.loc["spleen"]
    assert spleen["voxels"] == 12 and spleen["volume_ml"] == pytest.approx(0.048)
    assert (spleen["hu_mean"], spleen["hu_median"], spleen["hu_std"]) == (45, 45, 0)
    kidney = table.loc["kidney"]
    assert kidney["voxels"] == 0 and kidney["volume_ml"] == 0
    assert kidney[["hu_mean", "bbox_i_min", "bbox_x_min_mm"]].isna().all()


def test_statistics_csv_and_summary(phantom, tmp_path):
    labels, image = phantom
    path = tmp_path / "statistics.csv"
    update_statistics_csv(path, [organ_statistics(labels, image, NAMES, case="b")])
    update_statistics_csv(path, [organ_statistics(np.zeros_like(labels), image, NAMES, case="a")])
    relabelled = np.where(labels == 3, 0, labels)
    table = update_statistics_csv(path, [organ_statistics(relabelled, image, NAMES, case="b")])  # replaces b
    read = pd.read_csv(path)
    assert list(read.columns) == COLUMNS and len(read) == 8
    assert list(read["case"]) == ["a"] * 4 + ["b"] * 4
    assert read.set_index(["case", "organ"]).loc[("b", "spleen"), "voxels"] == 0
    assert read.set_index(["case", "organ"]).loc[("b", "liver"), "bbox_i_min"] == 5
    summary = statistics_summary(table[table["case"] == "b"])
    json.dumps(summary)
    assert summary["liver"]["volume_ml"] == pytest.approx(3.2) and summary["liver"]["bbox_k_max"] == 4
    assert summary["spleen"] == {"label": 3, "voxels": 0, "volume_ml": 0.0}


def test_statistics_real_ct(real_ct):
    """Real HU inside the pseudo-labelled liver of the real DICOM series: soft tissue, volume from the spacing."""
    from nnsdm.inference.io import find_cases, read_case

    (case,) = find_cases(real_ct / "dicom-series")
    image = read_case(case)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct / "dicom-series-labels" / "tsex_dicom.nii.gz")))
    table = organ_statistics(labels, image, NAMES, case=case.name).set_index("organ")
    liver = table.loc["liver"]
    assert liver["volume_ml"] == pytest.approx(int((labels == 1).sum()) * 0.9765625**2 * 2.0 / 1000)
    assert 40 < liver["hu_median"] < 200  # contrast-enhanced liver parenchyma
    assert table.loc["kidney", "voxels"] == 0

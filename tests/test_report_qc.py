"""The report's quality-control section from a prediction folder's qc.csv: worst first, with a figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsdm.inference.qc import case_qc, update_qc_csv
from nnsdm.report.builder import ReportBuilder
from nnsdm.report.qc import add_quality_control, find_preview, worst_first
from nnsdm.report.render import Figure, Table
from nnsdm.report.tables import Job

ORGANS = {1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"}


def _write(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(image, str(path))
    return path


def _case(tmp_path: Path, name: str, shift: int):
    labels = np.zeros((12, 32, 32), np.uint8)
    for k in range(1, 5):
        labels[3:9, 4 + 6 * (k - 1):9 + 6 * (k - 1), 8:20] = k
    sdm = np.ones((4, *labels.shape), np.float32)
    for k in range(1, 5):
        sdm[k - 1][np.roll(labels == k, shift if k == 4 else 0, axis=2)] = -0.5  # the head moves the pancreas
    gt = _write(labels, tmp_path / "gt" / f"{name}.nii.gz")
    pred = _write(labels, tmp_path / "pred" / f"{name}.nii.gz")
    _write(labels.astype(np.int16) * 40, tmp_path / "images" / f"{name}_0000.nii.gz")
    return case_qc(name, labels, sdm, None, (3.0, 2.0, 2.0), ORGANS), Job((), name, pred, gt)


def test_qc_section_lists_worst_first_and_draws_the_worst_cases(tmp_path):
    for sub in ("gt", "pred", "images", "figures"):
        (tmp_path / sub).mkdir()
    lookup = {}
    for name, shift in (("good", 0), ("bad", 9), ("fair", 3)):
        rows, job = _case(tmp_path, name, shift)
        update_qc_csv(tmp_path / "pred" / "qc.csv", rows)
        lookup[(name,)] = job
    metrics = pd.DataFrame([{"case": c, "organ": o, "dsc": 0.9, "nsd": 0.8} for c in ("good", "bad", "fair") for o in ORGANS.values()])
    report = ReportBuilder(folder=tmp_path / "report", title="t", tolerance_text="1 mm", ct=True)
    report.folder.mkdir()
    add_quality_control(report, tmp_path / "pred", metrics=metrics, lookup=lookup, images=tmp_path / "images")
    table = next(b for b in report.blocks if isinstance(b, Table)).frame
    assert list(table["Case"][:2]) == ["bad", "fair"] and list(table["Organ"][:2]) == ["pancreas", "pancreas"]
    assert table["Flagged"].iloc[0] == "yes" and "True DSC" in table.columns
    report.finish(progress=False)
    figure = next(b for b in report.blocks if isinstance(b, Figure))
    assert (report.folder / figure.path).is_file() and (report.folder / "external_qc.csv").is_file()
    assert "Quality control" in (report.folder / "report.md").read_text()
    # without qc.csv the section is absent
    empty = ReportBuilder(folder=tmp_path, title="t", tolerance_text="1 mm")
    add_quality_control(empty, tmp_path / "gt", metrics=None, lookup={}, images=None)
    assert empty.blocks == []


def test_previews_are_used_when_every_shown_case_has_one(tmp_path):
    pred = tmp_path / "pred"
    (pred / "previews").mkdir(parents=True)
    (pred / "previews" / "a.png").write_bytes(b"png")
    assert find_preview(pred, "a") == pred / "previews" / "a.png"
    assert find_preview(pred, "b") is None
    table = worst_first(pd.DataFrame({"case": ["a", "b"], "organ": ["liver", "liver"], "qc": [0.9, 0.2],
                                      "qc_baseline": [0.5, 0.9], "flagged": [0, 1]}))
    assert list(table["case"]) == ["b", "a"]

"""What ``nnsdm predict`` writes beside (or instead of) the NIfTI label map: DICOM SEG, statistics, previews.

Per case, on the input's grid: ``CASE_seg.dcm`` (:mod:`nnsdm.inference.dicom_seg`, DICOM inputs only),
``CASE_preview.png`` (:mod:`nnsdm.inference.preview`); per output folder: ``statistics.csv`` (one row
per case and organ, :mod:`nnsdm.inference.statistics`), ``summary.json`` (the same statistics per case,
with the case's input and output files) and ``previews.png`` (the contact sheet of all cases' previews).
A case is complete when all its files exist and, with statistics, it has rows in ``statistics.csv``
(written after its files); ``nnsdm predict`` predicts incomplete cases again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsdm.errors import NnsdmError
from nnsdm.fileio import write_text
from nnsdm.inference.io import Case

OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")
SUMMARY_FILE = "summary.json"


def organ_names(dataset_json: Mapping) -> dict[int, str]:
    """Label value -> name of a model's labels (dataset.json ``labels``), without background and regions."""
    return {int(v): str(k) for k, v in dataset_json["labels"].items()
            if not isinstance(v, (list, tuple)) and int(v) != 0}


def check_output_format(output_format: str, cases: Sequence[Case], names: Mapping[int, str]) -> None:
    """Refuse a format the inputs cannot have, before any work: DICOM SEG needs referencable DICOM series."""
    from nnsdm.inference.dicom_seg import check_seg_source

    if output_format not in OUTPUT_FORMATS:
        raise NnsdmError(f"--output-format {output_format}: choose {', '.join(OUTPUT_FORMATS)}")
    if output_format == "nifti":
        return
    for case in cases:
        if case.kind != "dicom":
            raise NnsdmError(f"{case.path}: a NIfTI input; --output-format {output_format} needs DICOM series "
                             "(a DICOM SEG references its source images)")
    for case in cases:
        check_seg_source(case.files, names)


def write_case_extras(case: Case, labels: np.ndarray, image: sitk.Image, *, seg: Path | None, preview: Path | None,
                      names: Mapping[int, str], folds: Sequence[int | str], statistics: bool) -> pd.DataFrame | None:
    """Write the case's SEG and preview (those asked for); return its statistics table when ``statistics``.

    A case without any organ gets no SEG (a DICOM SEG needs at least one segment); a line says so.
    """
    from nnsdm.inference.dicom_seg import write_dicom_seg
    from nnsdm.inference.preview import write_preview
    from nnsdm.inference.statistics import organ_statistics

    if seg is not None and not write_dicom_seg(labels, image, case.files, seg, names, folds=folds):
        from tqdm import tqdm

        tqdm.write(f"{case.name}: no organ found; no DICOM SEG written")
    if preview is not None:
        write_preview(labels, image, preview, names, title=case.name)
    return organ_statistics(labels, image, names, case=case.name) if statistics else None


def record_statistics(output: Path, case: Case, files: Sequence[Path], table: pd.DataFrame) -> None:
    """Add or replace the case's rows in ``output/statistics.csv`` and its entry in ``output/summary.json``."""
    from nnsdm.inference.statistics import STATISTICS_FILE, update_statistics_csv

    update_statistics_csv(Path(output) / STATISTICS_FILE, [table])
    update_summary(Path(output) / SUMMARY_FILE, case, files, table)


def write_contact_sheet(output: Path, previews: Sequence[Path | None]) -> None:
    """The contact sheet ``output/previews.png`` of the cases' previews that exist (none: nothing written)."""
    from nnsdm.inference import preview

    found = [p for p in previews if p is not None and p.is_file()]
    if found:
        preview.write_contact_sheet(found, Path(output) / preview.CONTACT_SHEET)


def update_summary(path: Path, case: Case, files: Sequence[Path], table: pd.DataFrame) -> None:
    """Add or replace the case in ``summary.json``: its input, output files and organ statistics."""
    from nnsdm.inference.statistics import statistics_summary

    path = Path(path)
    summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"cases": {}}
    summary["cases"][case.name] = {"input": str(case.path), "outputs": [p.name for p in files if p.is_file()],
                                   "organs": statistics_summary(table)}
    summary["cases"] = dict(sorted(summary["cases"].items()))
    write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def statistics_done(path: Path, names: Sequence[str]) -> set[str]:
    """The cases among ``names`` that have rows in the statistics CSV ``path``."""
    if not Path(path).is_file():
        return set()
    return set(pd.read_csv(path, usecols=["case"], dtype={"case": str})["case"]) & set(names)

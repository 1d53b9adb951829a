"""Organ statistics per case: volume, CT intensity and extent of each predicted organ.

Per organ (every label of the model, present or not):

* ``voxels``: number of voxels with the label; ``volume_ml``: voxels x voxel volume (product of the
  spacing, mm^3) / 1000;
* ``hu_mean``, ``hu_median``, ``hu_std`` (population standard deviation), ``hu_min``, ``hu_max``: of the
  image's voxel values inside the organ, in Hounsfield units for CT (DICOM series: after the rescale
  slope and intercept; NIfTI: the values as stored);
* bounding box, inclusive, of the organ's voxels: ``bbox_i_min`` .. ``bbox_k_max`` as voxel indices in
  ITK / 3D Slicer IJK order (i: column, j: row, k: slice, as the image is stored; for a DICOM series
  k counts slices in position order along the slice normal), and ``bbox_x_min_mm`` .. ``bbox_z_max_mm``:
  the axis-aligned box around those voxels' centres in patient coordinates (DICOM LPS: x towards the
  patient's left, y posterior, z superior; mm).

An organ the model did not find has 0 voxels and 0 ml; its intensity and bounding box are empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsdm.fileio import write_text

STATISTICS_FILE = "statistics.csv"
INDEX_COLUMNS = [f"bbox_{axis}_{end}" for axis in "ijk" for end in ("min", "max")]
MM_COLUMNS = [f"bbox_{axis}_{end}_mm" for axis in "xyz" for end in ("min", "max")]
COLUMNS = ["case", "label", "organ", "voxels", "volume_ml", "hu_mean", "hu_median", "hu_std", "hu_min", "hu_max",
           *INDEX_COLUMNS, *MM_COLUMNS]


def _bounding_box(mask: np.ndarray, image: sitk.Image) -> dict:
    """Inclusive IJK index box of ``mask`` (a (k, j, i) array) and the LPS box of its corners' voxel centres."""
    k, j, i = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    lo, hi = (i[0], j[0], k[0]), (i[-1], j[-1], k[-1])
    row = {f"bbox_{axis}_{end}": int(v) for end, corner in (("min", lo), ("max", hi)) for axis, v in zip("ijk", corner)}
    corners = np.array([image.TransformIndexToPhysicalPoint([int(c) for c in (a, b, d)])
                        for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for d in (lo[2], hi[2])])
    for n, axis in enumerate("xyz"):
        row[f"bbox_{axis}_min_mm"], row[f"bbox_{axis}_max_mm"] = float(corners[:, n].min()), float(corners[:, n].max())
    return row


def organ_statistics(labels: np.ndarray, image: sitk.Image, label_names: Mapping[int, str], *,
                     case: str = "") -> pd.DataFrame:
    """One row per organ of ``label_names`` (label -> name): see the module docstring for the columns.

    ``labels``: the label array on ``image``'s grid ((z, y, x), as SimpleITK's ``GetArrayFromImage``).
    """
    values = sitk.GetArrayViewFromImage(image)
    if values.shape != labels.shape:
        raise ValueError(f"labels {labels.shape} and image {values.shape} differ in shape")
    voxel_ml = float(np.prod(np.abs(image.GetSpacing()))) / 1000.0
    rows = []
    for label, name in sorted(label_names.items()):
        mask = labels == label
        count = int(mask.sum())
        row = {"case": case, "label": int(label), "organ": name, "voxels": count, "volume_ml": count * voxel_ml}
        if count:
            inside = values[mask].astype(np.float64)
            row.update(hu_mean=float(inside.mean()), hu_median=float(np.median(inside)), hu_std=float(inside.std()),
                       hu_min=float(inside.min()), hu_max=float(inside.max()), **_bounding_box(mask, image))
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({c: "Int64" for c in INDEX_COLUMNS})


def update_statistics_csv(path: Path, tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Add or replace the given cases' rows in ``path`` (rewritten atomically, sorted by case and label)."""
    path = Path(path)
    new = [t for t in tables if len(t)]
    old = pd.read_csv(path, dtype={"case": str}, keep_default_na=False, na_values=[""]) if path.is_file() else None
    if old is not None and new:
        old = old[~old["case"].isin(set(pd.concat(new)["case"]))]
    parts = [t for t in ([old] if old is not None else []) + new if len(t)]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    table = table.reindex(columns=COLUMNS).sort_values(["case", "label"], kind="stable").reset_index(drop=True)
    table = table.astype({c: "Int64" for c in INDEX_COLUMNS})
    write_text(path, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    return table


def statistics_summary(table: pd.DataFrame) -> dict:
    """A case's statistics as a JSON-ready dict: organ -> its columns (empty values left out)."""
    summary = {}
    for row in table.to_dict("records"):
        summary[row["organ"]] = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()
                                 if k not in ("case", "organ") and not pd.isna(v)}
    return summary

"""The ``evaluate`` job: FLARE21 metrics of every case of a prediction folder against its ground truth.

Cases are the ground truth's ``CASE.nii.gz`` / ``.nii`` / ``.mha`` files; a prediction is found by case
name (:func:`find_file`). Each case is checked for a matching grid and scored per organ label with
:mod:`nnsdm.evaluation.metrics` on the union bounding box of the two masks; :func:`map_cases` scores
cases in parallel processes. Results are per-case rows and a per-organ summary (mean and std).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnsdm.errors import NnsdmError
from nnsdm.evaluation.metrics import dice, normalized_surface_dice
from nnsdm.evaluation.metrics import hd95 as _hd95  # evaluate_case's keyword ``hd95`` shadows the function
from nnsdm.labels import FLARE21_LABELS

__all__ = ["IMAGE_SUFFIXES", "case_name", "case_names", "find_file", "map_cases", "evaluate_case", "summarize",
           "evaluate_folder", "format_summary"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha")


def case_name(path: Path) -> str | None:
    """CASE for CASE.nii.gz / CASE.nii / CASE.mha, else None."""
    for suffix in IMAGE_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def case_names(folder: Path) -> list[str]:
    """Sorted case names of the label images (``.nii.gz``, ``.nii``, ``.mha``) in a folder."""
    return sorted(name for p in Path(folder).iterdir() if p.is_file() and (name := case_name(p)) is not None)


def find_file(folder: Path, case: str, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> Path | None:
    """``folder/CASE<suffix>`` for the first suffix that exists, else None."""
    for suffix in suffixes:
        candidate = Path(folder) / f"{case}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def map_cases(function: Callable, items: Sequence, *, workers: int = 1, desc: str = "evaluate",
              progress: bool = True) -> list:
    """``[function(item) for item in items]`` with a progress bar; ``workers`` > 1 runs them in that many
    processes (``function`` and the items must then be picklable)."""
    from tqdm import tqdm

    bar = dict(total=len(items), desc=desc, unit="case", file=sys.stderr, disable=not progress)
    if workers > 1 and len(items) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(tqdm(pool.map(function, items), **bar))
    return [function(item) for item in tqdm(items, **bar)]


def _spacing_zyx(image) -> tuple[float, float, float]:
    return tuple(float(s) for s in reversed(image.GetSpacing()))


def _check_geometry(pred_img, gt_img, pred_path: Path, gt_path: Path) -> None:
    """NnsdmError naming the prediction if its grid differs from the ground truth's."""
    problems = []
    if pred_img.GetSize() != gt_img.GetSize():
        problems.append(f"size {pred_img.GetSize()} != {gt_img.GetSize()}")
    else:
        ps, gs = np.array(pred_img.GetSpacing()), np.array(gt_img.GetSpacing())
        if not np.allclose(ps, gs, rtol=1e-3, atol=0):
            problems.append(f"spacing {tuple(ps)} != {tuple(gs)}")
        po, go = np.array(pred_img.GetOrigin()), np.array(gt_img.GetOrigin())
        if not np.allclose(po, go, rtol=0, atol=1e-3 * float(gs.min())):
            problems.append(f"origin {tuple(po)} != {tuple(go)}")
        if not np.allclose(pred_img.GetDirection(), gt_img.GetDirection(), rtol=0, atol=1e-4):
            problems.append("direction differs")
    if problems:
        raise NnsdmError(f"{pred_path}: geometry does not match ground truth {gt_path.name}: {'; '.join(problems)}")


def _label_array(image, path: Path) -> np.ndarray:
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NnsdmError(f"{path}: not a 3D single-channel label image")
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise NnsdmError(f"{path}: not a label map (non-integer values)")
        arr = arr.astype(np.int32)
    elif arr.dtype.kind not in "iu":
        raise NnsdmError(f"{path}: not a label map (pixel type {arr.dtype})")
    return arr


def _case_metrics(pred: np.ndarray | None, gt: np.ndarray, spacing: tuple[float, float, float], *,
                  tolerance_mm: Mapping[int, float], hd95: bool, labels: Mapping[int, str]) -> list[dict]:
    """Metric rows for every label; each label is scored on the union bounding box of its two masks."""
    max_label = max(labels)
    gt_boxes = ndimage.find_objects(gt, max_label=max_label)
    pred_boxes = ndimage.find_objects(pred, max_label=max_label) if pred is not None else [None] * max_label
    rows = []
    for label, organ in labels.items():
        row = {"label": int(label), "organ": organ}
        boxes = [b for b in (gt_boxes[label - 1], pred_boxes[label - 1]) if b is not None]
        if not boxes:
            row.update(dsc=1.0, nsd=1.0)
            if hd95:
                row["hd95"] = 0.0
        else:
            crop = tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(3))
            g = gt[crop] == label
            p = pred[crop] == label if pred is not None else np.zeros_like(g)
            row.update(dsc=dice(p, g), nsd=normalized_surface_dice(p, g, spacing, tolerance_mm[label]))
            if hd95:
                row["hd95"] = _hd95(p, g, spacing)
        rows.append(row)
    return rows


def _resolve_tolerance(tolerance_mm: Mapping[int, float] | float, labels: Mapping[int, str]) -> dict[int, float]:
    if isinstance(tolerance_mm, Mapping):
        missing = [labels[label] for label in labels if label not in tolerance_mm]
        if missing:
            raise ValueError(f"no NSD tolerance for {', '.join(missing)}")
        return {label: float(tolerance_mm[label]) for label in labels}
    return {label: float(tolerance_mm) for label in labels}


def evaluate_case(pred_path: Path | None, gt_path: Path, *, tolerance_mm: Mapping[int, float] | float = 1.0,
                  hd95: bool = False, labels: Mapping[int, str] = FLARE21_LABELS) -> list[dict]:
    """Score one prediction against its ground truth: one row per label (case, label, organ, dsc, nsd[, hd95]).

    ``pred_path`` None scores an empty prediction. Spacing comes from the ground truth header; a
    prediction on a different grid raises ``NnsdmError`` naming the prediction file.
    """
    from nnsdm.fileio import read_image

    labels = {int(k): v for k, v in labels.items()}
    if not labels or min(labels) < 1:
        raise ValueError(f"labels {labels} must be a non-empty mapping of positive labels to names")
    tolerance = _resolve_tolerance(tolerance_mm, labels)
    gt_path = Path(gt_path)
    gt_img = read_image(gt_path)
    gt = _label_array(gt_img, gt_path)
    pred = None
    if pred_path is not None:
        pred_path = Path(pred_path)
        pred_img = read_image(pred_path)
        _check_geometry(pred_img, gt_img, pred_path, gt_path)
        pred = _label_array(pred_img, pred_path)
    rows = _case_metrics(pred, gt, _spacing_zyx(gt_img), tolerance_mm=tolerance, hd95=hd95, labels=labels)
    case = case_name(gt_path) or gt_path.name
    return [{"case": case, **row} for row in rows]


def _evaluate_one(job: tuple) -> list[dict]:
    pred_path, gt_path, kwargs = job
    return evaluate_case(pred_path, gt_path, **kwargs)


def summarize(metrics) -> "pandas.DataFrame":  # noqa: F821
    """Per organ mean and std of each metric over cases, plus an ``all`` row.

    The ``all`` row averages each case's organ mean: its mean is the mean over organs, its std the spread
    over cases. Standard deviations are population ones (numpy's ``ddof=0``), defined for a single case;
    a metric with an infinite value (HD95 of a missed organ) has an infinite mean and a NaN std.
    """
    import pandas as pd

    columns = [c for c in ("dsc", "nsd", "hd95") if c in metrics.columns]
    organs = list(dict.fromkeys(metrics["organ"]))
    rows = {}
    for organ in organs:
        part = metrics[metrics["organ"] == organ]
        rows[organ] = _stats(part, columns)
    per_case = metrics.groupby("case", sort=False)[columns].mean()
    rows["all"] = _stats(per_case, columns)
    summary = pd.DataFrame.from_dict(rows, orient="index")
    summary.index.name = "organ"
    return summary


def _stats(frame, columns) -> dict:
    out = {"cases": int(frame["case"].nunique()) if "case" in frame.columns else len(frame)}
    for c in columns:
        values = frame[c].to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            out[f"{c}_mean"] = float(np.mean(values))
            out[f"{c}_std"] = float(np.std(values)) if np.all(np.isfinite(values)) else math.nan
    return out


def evaluate_folder(*, pred: Path, gt: Path, out: Path, tolerance_mm: Mapping[int, float] | float = 1.0,
                    hd95: bool = False, labels: Mapping[int, str] = FLARE21_LABELS, progress: bool = True,
                    workers: int = 1) -> "pandas.DataFrame":  # noqa: F821
    """Score every ground-truth case; write out/metrics.csv (case,label,organ,dsc,nsd[,hd95]) and out/summary.csv
    (per organ mean and std of each metric, plus an 'all' row); return the summary frame.

    Ground-truth cases are the ``CASE.nii.gz`` / ``.nii`` / ``.mha`` files in ``gt``; the prediction is
    ``pred/CASE`` with any of these suffixes. A missing prediction is scored as empty (0 where the organ
    exists) and logged as a one-line warning. ``workers`` > 1 scores cases in that many processes.
    """
    import pandas as pd

    from nnsdm.fileio import atomic_path

    pred, gt, out = Path(pred), Path(gt), Path(out)
    if not gt.is_dir():
        raise NnsdmError(f"{gt}: ground-truth folder not found")
    if not pred.is_dir():
        raise NnsdmError(f"{pred}: prediction folder not found")
    cases = case_names(gt)
    if not cases:
        raise NnsdmError(f"{gt}: no ground-truth images ({', '.join(IMAGE_SUFFIXES)})")
    labels = {int(k): v for k, v in labels.items()}
    kwargs = {"tolerance_mm": _resolve_tolerance(tolerance_mm, labels), "hd95": hd95, "labels": labels}
    jobs = []
    for name in cases:
        pred_path = find_file(pred, name)
        if pred_path is None:
            log.warning("%s: prediction missing, scored as empty", pred / f"{name}.nii.gz")
        jobs.append((pred_path, find_file(gt, name), kwargs))
    results = map_cases(_evaluate_one, jobs, workers=workers, progress=progress)

    columns = ["case", "label", "organ", "dsc", "nsd"] + (["hd95"] if hd95 else [])
    metrics = pd.DataFrame([row for rows in results for row in rows], columns=columns)
    summary = summarize(metrics)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.csv") as tmp:
        metrics.to_csv(tmp, index=False)
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp)
    return summary


def format_summary(summary) -> str:
    """The summary as a printable table: one line per organ with mean +- std of each metric."""
    metrics = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    header = ["organ", "cases"] + [m.upper() for m in metrics]
    lines = [header]
    for organ, row in summary.iterrows():
        lines.append([str(organ), str(int(row["cases"]))]
                     + [f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_std']:.4f}" for m in metrics])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    )

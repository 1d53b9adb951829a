"""The report's numbers: trained models, per-case metrics, fold tables, the ablation test and efficiency.

Everything here returns pandas frames; :mod:`nnsdm.report` writes them as CSV and renders them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nnsdm.checkpoints import FINAL_CHECKPOINT
from nnsdm.errors import NnsdmError
from nnsdm.evaluation import IMAGE_SUFFIXES, case_names, evaluate_case, find_file, map_cases, summarize
from nnsdm.labels import FLARE21_LABELS
from nnsdm.model_folder import LATEST_CHECKPOINT, ModelFolder

log = logging.getLogger(__name__)

METRICS = ("dsc", "nsd")
PAPER_PARAMETERS = 41_268_192
PAPER_FLOPS = 590_861_472_000
PAPER_PATCH = (80, 192, 160)


# ----------------------------------------------------------------------------------------------------------
# Trained models


@dataclass(frozen=True)
class Model:
    """One trained model folder in the report and its SDM loss weight (None: unknown)."""

    folder: ModelFolder
    sdm_weight: float | None

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def trainer(self) -> str:
        return self.folder.trainer

    @property
    def label(self) -> str:
        """Short human name: the trainer, with its SDM weight where known."""
        if self.sdm_weight is None:
            return self.trainer
        return f"{self.trainer} (SDM weight {self.sdm_weight:g})"

    def folds(self) -> list[int | str]:
        """Folds holding a final (else latest) checkpoint, 0..4 before ``all``."""
        return self.folder.folds(holding=(FINAL_CHECKPOINT, LATEST_CHECKPOINT))


def find_models(results: Path) -> list[Model]:
    """Trained models under one dataset's results folder: folders with a ``fold_*/checkpoint_final.pth``."""
    results = Path(results)
    if not results.is_dir():
        return []
    models = []
    for path in sorted(results.iterdir()):
        folder = ModelFolder(path)
        if path.is_dir() and "__" in path.name and folder.folds():
            models.append(Model(folder, folder.sdm_weight()))
    return models


# ----------------------------------------------------------------------------------------------------------
# Per-case metrics


def _split_val_cases(preprocessed: Path, fold: int) -> list[str] | None:
    path = preprocessed / "splits_final.json"
    if not path.is_file():
        return None
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
        return [str(c) for c in splits[fold]["val"]] if fold < len(splits) else None
    except (ValueError, KeyError, TypeError, IndexError):
        raise NnsdmError(f"{path}: not an nnU-Net splits file") from None


@dataclass(frozen=True)
class Job:
    """One case to score: where its prediction and ground truth are, and what it belongs to."""

    keys: tuple  # e.g. (model name, fold) or () for the external set
    case: str
    pred: Path | None
    gt: Path


def cv_jobs(models: Sequence[Model], *, preprocessed: Path) -> tuple[list[Job], list[str]]:
    """Jobs for every final-validation case of every fold of every model, plus notes on missing predictions.

    A fold's cases are its ``val`` cases in ``splits_final.json`` (else the predictions present); a case
    without a prediction is scored as empty (0 where the organ exists), as FLARE21 does.
    """
    gt_dir = preprocessed / "gt_segmentations"
    jobs, notes = [], []
    for model in models:
        for fold in model.folds():
            pred_dir = model.folder.fold_folder(fold) / "validation"
            if not isinstance(fold, int) or not pred_dir.is_dir():
                continue
            cases = _split_val_cases(preprocessed, fold) or case_names(pred_dir)
            missing = []
            for case in cases:
                gt = find_file(gt_dir, case)
                if gt is None:
                    raise NnsdmError(f"{gt_dir / (case + '.nii.gz')}: ground truth of cross-validation case missing")
                pred = find_file(pred_dir, case)
                if pred is None:
                    missing.append(case)
                jobs.append(Job((model.name, fold), case, pred, gt))
            if missing:
                log.warning("%s: %d validation prediction(s) missing, scored as empty", pred_dir, len(missing))
                notes.append(f"{model.name} fold {fold}: no prediction for {', '.join(missing)} (scored as empty).")
    return jobs, notes


def external_jobs(pred: Path, gt: Path) -> tuple[list[Job], list[str]]:
    """Jobs for every ground-truth case in ``gt`` with its prediction in ``pred`` (missing: scored as empty)."""
    pred, gt = Path(pred), Path(gt)
    for folder, what in ((pred, "prediction"), (gt, "ground-truth")):
        if not folder.is_dir():
            raise NnsdmError(f"{folder}: {what} folder not found")
    cases = case_names(gt)
    if not cases:
        raise NnsdmError(f"{gt}: no ground-truth images ({', '.join(IMAGE_SUFFIXES)})")
    jobs, missing = [], []
    for case in cases:
        p = find_file(pred, case)
        if p is None:
            missing.append(case)
        jobs.append(Job((), case, p, find_file(gt, case)))
    notes = []
    if missing:
        log.warning("%s: %d prediction(s) missing, scored as empty", pred, len(missing))
        notes.append(f"No prediction for {', '.join(missing)} (scored as empty).")
    return jobs, notes


def _score(job_and_kwargs) -> list[dict]:
    job, kwargs = job_and_kwargs
    return evaluate_case(job.pred, job.gt, **kwargs)


def score(jobs: Sequence[Job], key_names: Sequence[str], *, tolerance_mm: Mapping[int, float] | float = 1.0,
          progress: bool = True, workers: int = 1, desc: str = "report: evaluate") -> pd.DataFrame:
    """Score the jobs with nnsdm.evaluation (FLARE21 rules): one row per job and organ.

    Columns: the key names, ``case``, ``label``, ``organ``, ``dsc``, ``nsd``.
    """
    items = [(job, {"tolerance_mm": tolerance_mm}) for job in jobs]
    results = map_cases(_score, items, workers=workers, desc=desc, progress=progress)
    rows = [{**dict(zip(key_names, job.keys)), **row, "case": job.case}
            for job, case_rows in zip(jobs, results) for row in case_rows]
    columns = [*key_names, "case", "label", "organ", *METRICS]
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------------------------------
# Tables


def summary_row(metrics: pd.DataFrame) -> dict:
    """Cases and per organ (and over organs: ``all``) mean and std of DSC and NSD, as one flat row.

    Uses :func:`nnsdm.evaluation.summarize`: population standard deviations over cases; ``all`` averages
    each case's organ mean.
    """
    summary = summarize(metrics[["case", "organ", *METRICS]])
    row: dict = {"cases": int(summary.loc["all", "cases"])}
    for organ in summary.index:
        for m in METRICS:
            row[f"{organ}_{m}_mean"] = float(summary.loc[organ, f"{m}_mean"])
            row[f"{organ}_{m}_std"] = float(summary.loc[organ, f"{m}_std"])
    return row


def cv_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The paper's cross-validation table: per model, one row per fold and an ``average`` row over all its cases."""
    rows = []
    for model, part in metrics.groupby("model", sort=False):
        for fold, fold_part in part.groupby("fold", sort=True):
            rows.append({"model": model, "fold": str(fold), **summary_row(fold_part)})
        rows.append({"model": model, "fold": "average", **summary_row(part)})
    return pd.DataFrame(rows)


def external_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The external-set table: one row of per-organ mean and std over all cases."""
    return pd.DataFrame([{"set": "external", **summary_row(metrics)}])


def display_table(table: pd.DataFrame, first: Mapping[str, str]) -> pd.DataFrame:
    """A table of strings for the report: the ``first`` columns (renamed), cases, then 'mean ± std' per organ."""
    organs = [o for o in [*FLARE21_LABELS.values(), "all"] if f"{o}_dsc_mean" in table.columns]
    out = pd.DataFrame({title: table[col].astype(str) for col, title in first.items()})
    out["Cases"] = table["cases"].astype(str)
    for organ in organs:
        for m in METRICS:
            name = f"{'Mean' if organ == 'all' else organ.capitalize()} {m.upper()}"
            out[name] = [f"{mu:.4f} ± {sd:.4f}" for mu, sd in zip(table[f"{organ}_{m}_mean"], table[f"{organ}_{m}_std"])]
    return out


def case_means(metrics: pd.DataFrame) -> pd.Series:
    """Mean DSC over organs per case (index: the case's key columns and case), for picking examples."""
    keys = [c for c in metrics.columns if c not in ("label", "organ", *METRICS, "hd95")]
    return metrics.groupby(keys, sort=False)["dsc"].mean()


# ----------------------------------------------------------------------------------------------------------
# Ablation


def ablation(sdm: pd.DataFrame, baseline: pd.DataFrame, *, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per organ and metric: mean difference SDM - baseline over the paired cases, with a Wilcoxon test.

    ``sdm`` and ``baseline`` are per-case metric frames (columns ``case``, ``organ`` and the metrics, plus
    ``fold`` when both have it); cases are paired on (fold,) case and organ. The ``all`` organ pairs each
    case's organ mean. The test is scipy's two-sided paired Wilcoxon signed-rank test (zero differences
    dropped). With fewer than two pairs, or all differences zero, the p-value is NaN and ``note`` says why.
    Columns: organ, metric, n, sdm_mean, baseline_mean, mean_difference, wilcoxon_statistic, p_value, note.
    """
    from scipy.stats import wilcoxon

    keys = [k for k in ("fold", "case") if k in sdm.columns and k in baseline.columns]
    if "case" not in keys:
        raise ValueError("ablation needs a 'case' column in both frames")
    cols = [*keys, "organ", *metrics]
    pairs = sdm[cols].merge(baseline[cols], on=[*keys, "organ"], suffixes=("_sdm", "_baseline"), validate="one_to_one")
    organs = list(dict.fromkeys(pairs["organ"]))
    groups = [(organ, pairs[pairs["organ"] == organ]) for organ in organs]
    if organs:
        groups.append(("all", pairs.groupby(keys, sort=False)[[f"{m}_{s}" for m in metrics for s in ("sdm", "baseline")]].mean()))
    rows = []
    for organ, part in groups:
        for m in metrics:
            a = part[f"{m}_sdm"].to_numpy(dtype=np.float64)
            b = part[f"{m}_baseline"].to_numpy(dtype=np.float64)
            diff = a - b
            row = {"organ": organ, "metric": m, "n": len(diff), "sdm_mean": float(np.mean(a)) if len(a) else math.nan,
                   "baseline_mean": float(np.mean(b)) if len(b) else math.nan,
                   "mean_difference": float(np.mean(diff)) if len(diff) else math.nan,
                   "wilcoxon_statistic": math.nan, "p_value": math.nan, "note": ""}
            if len(diff) < 2:
                row["note"] = f"{len(diff)} paired case(s): too few for a test"
            elif not np.any(diff != 0):
                row["note"] = "all differences are zero: no test"
            else:
                result = wilcoxon(a, b)
                row["wilcoxon_statistic"], row["p_value"] = float(result.statistic), float(result.pvalue)
            rows.append(row)
    columns = ["organ", "metric", "n", "sdm_mean", "baseline_mean", "mean_difference", "wilcoxon_statistic", "p_value", "note"]
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------------------------------
# Efficiency


def efficiency_summary(path: Path) -> pd.DataFrame:
    """Summary of ``nnsdm predict``'s ``efficiency.csv``: count, mean, median and max of time and of each memory column.

    Rows: ``seconds`` (running time per case) and every ``*_mib`` column with a value (peak memory per
    case in MiB); the ``max`` of a memory row is the peak over all cases.
    """
    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise NnsdmError(f"{path}: unreadable efficiency table ({type(exc).__name__})") from None
    if "seconds" not in frame.columns:
        raise NnsdmError(f"{path}: no 'seconds' column (expected nnsdm predict's efficiency.csv)")
    rows = []
    for col in ["seconds", *[c for c in frame.columns if c.endswith("_mib")]]:
        values = pd.to_numeric(frame[col], errors="coerce").dropna()
        if values.empty:
            continue
        rows.append({"quantity": col, "cases": len(values), "mean": float(values.mean()),
                     "median": float(values.median()), "max": float(values.max())})
    return pd.DataFrame(rows, columns=["quantity", "cases", "mean", "median", "max"])

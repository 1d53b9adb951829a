"""``nnsdm report``: the paper's tables and figures from a workspace (and optionally an external test set).

For every trained model folder of the dataset (``<Trainer>__<Plans>__<configuration>``) the report holds
the cross-validation table (per fold mean ± std of DSC and NSD per organ over the fold's final-validation
predictions, then the average over all cross-validation cases), violin plots, worst/median/best examples,
nnU-Net's training curves and the model's parameters and FLOPs next to the paper's. With an ``sdm_weight``
0 model beside an SDM model, the ablation compares them case by case with a paired Wilcoxon test. With
``pred``/``gt`` the same table, plots and examples are made for an external set, plus the running-time
and memory summary of ``nnsdm predict``'s ``efficiency.csv``.

Output folder (default ``WORKSPACE/report``), replaced as a whole when written again:
``report.md``, ``report.html`` (self-contained), ``figures/*.png``, ``cv_metrics.csv``, ``cv_table.csv``,
``ablation.csv`` (with a baseline), ``model_statistics.csv``, ``external_metrics.csv``,
``external_table.csv`` and ``external_efficiency.csv`` (with an external set).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.style

from nnsdm.errors import NnsdmError
from nnsdm.fileio import atomic_dir
from nnsdm.report import builder
from nnsdm.report.builder import ReportBuilder
from nnsdm.report.tables import Model, ablation, cv_jobs, external_jobs, find_models, score
from nnsdm.workspace import Workspace

__all__ = ["write_report", "ablation", "find_models", "Model"]


def write_report(
    *,
    workspace: Workspace,
    out: Path | None = None,
    dataset: str | None = None,
    pred: Path | None = None,
    gt: Path | None = None,
    images: Path | None = None,
    tolerance_mm: Mapping[int, float] | float = 1.0,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write the report folder (default ``WORKSPACE/report``) and return it.

    ``pred``/``gt``: an external set (predictions and ground truth, ``CASE.nii.gz``), with optional
    ``images`` (``CASE_0000.nii.gz``) for the example figure. ``tolerance_mm``: NSD tolerance (FLARE21:
    1 mm). ``workers`` > 1 scores cases in that many processes. The folder is built beside its final
    place and swapped in when complete; an existing folder is replaced only if it holds a report.
    """
    _check_external(pred, gt, images)
    name = _dataset_name(workspace, dataset, external=pred is not None)
    results = workspace.results / name if name else workspace.results
    models = find_models(results) if name else []
    if not models and pred is None:
        raise NnsdmError(f"{results}: no trained model (no <trainer>__<plans>__<configuration>/fold_*/checkpoint_final.pth); "
                         "run `nnsdm train` first")
    out = Path(out) if out is not None else workspace.root / "report"
    _check_out(out, [Path(p) for p in (pred, gt, images) if p is not None] + [workspace.root])
    preprocessed = workspace.preprocessed / name if name else None
    scoring = dict(tolerance_mm=tolerance_mm, progress=progress, workers=workers)
    notes: list[str] = []
    cv = cv_lookup = ext = ext_lookup = None
    if models:
        jobs, cv_notes = cv_jobs(models, preprocessed=preprocessed)
        notes += cv_notes
        cv_lookup = {(*job.keys, job.case): job for job in jobs}
        cv = score(jobs, ["model", "fold"], desc="report: cross-validation", **scoring)
    if pred is not None:
        jobs, ext_notes = external_jobs(Path(pred), Path(gt))
        notes += ext_notes
        ext_lookup = {(job.case,): job for job in jobs}
        ext = score(jobs, [], desc="report: external set", **scoring)

    # matplotlib's default style: nnU-Net's training plots change the global one (seaborn, font scale 2.5)
    with atomic_dir(out, overwrite=True) as tmp, matplotlib.style.context("default"):
        report = ReportBuilder(tmp, f"nnsdm report{': ' + name if name else ''}", builder.tolerance_text(tolerance_mm),
                               ct=builder.is_ct(preprocessed / "dataset.json") if preprocessed else False, notes=notes)
        builder.add_introduction(report, workspace.root)
        if models:
            builder.add_models(report, models, cv)
            builder.add_cross_validation(report, models, cv, cv_lookup, workspace.raw / name / "imagesTr")
            builder.add_ablation(report, models, cv)
        if ext is not None:
            builder.add_external(report, ext, ext_lookup, pred=Path(pred), gt=Path(gt), images=images)
        if models:
            builder.add_training_curves(report, models)
            builder.add_model_statistics(report, models)
        report.finish(progress=progress)
    return out


def _check_external(pred: Path | None, gt: Path | None, images: Path | None) -> None:
    if (pred is None) != (gt is None):
        given, other = ("--pred", "--gt") if pred is not None else ("--gt", "--pred")
        raise NnsdmError(f"{given}: an external set needs both --pred and --gt ({other} missing)")
    if images is not None and pred is None:
        raise NnsdmError("--images: only used with an external set (--pred and --gt)")
    if images is not None and not Path(images).is_dir():
        raise NnsdmError(f"{images}: image folder not found")


def _dataset_name(workspace: Workspace, dataset: str | None, *, external: bool) -> str | None:
    """The workspace's dataset; ``None`` for a report of an external set alone in a workspace without one."""
    try:
        return workspace.dataset_name(dataset)
    except NnsdmError:
        if not external or dataset is not None:
            raise
        return None


def _check_out(out: Path, inputs: list[Path]) -> None:
    """Refuse an output folder that is a file, holds something other than a report, or holds an input."""
    if out.exists() and not out.is_dir():
        raise NnsdmError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.md").is_file():
        raise NnsdmError(f"{out}: folder exists and is not an nnsdm report (choose another --out or remove it)")
    resolved = out.resolve()
    for path in inputs:
        p = path.resolve()
        if p == resolved or resolved in p.parents:
            raise NnsdmError(f"{path}: input lies inside the report folder {out}, which is replaced as a whole")

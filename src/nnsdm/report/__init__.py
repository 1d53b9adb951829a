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

import datetime
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import matplotlib.style
import pandas as pd

from nnsdm import __version__
from nnsdm.errors import NnsdmError
from nnsdm.labels import FLARE21_LABELS
from nnsdm.fileio import atomic_dir
from nnsdm.report import figures
from nnsdm.report.render import Figure, Heading, Paragraph, Table, to_html, to_markdown
from nnsdm.report.tables import (
    PAPER_FLOPS,
    PAPER_PARAMETERS,
    PAPER_PATCH,
    Model,
    ablation,
    case_means,
    cv_jobs,
    cv_table,
    display_table,
    efficiency_summary,
    external_jobs,
    external_table,
    find_file,
    find_models,
    score,
)
from nnsdm.workspace import Workspace

__all__ = ["write_report", "ablation", "find_models", "Model"]

EFFICIENCY_FILE = "efficiency.csv"  # written by nnsdm predict
_EFFICIENCY_NAMES = {
    "seconds": "Time per case (s)",
    "peak_rss_mib": "Peak resident memory (MiB)",
    "torch_peak_mib": "Peak torch GPU allocation (MiB)",
    "gpu_memory_flare21_mib": "GPU memory, FLARE21 statistic (MiB)",
    "gpu_memory_max_mib": "GPU memory, maximum (MiB)",
}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _tolerance_text(tolerance_mm: Mapping[int, float] | float) -> str:
    if not isinstance(tolerance_mm, Mapping):
        return f"{float(tolerance_mm):g} mm"
    values = {float(tolerance_mm[label]) for label in FLARE21_LABELS}
    if len(values) == 1:
        return f"{values.pop():g} mm"
    return ", ".join(f"{FLARE21_LABELS[label]} {float(tolerance_mm[label]):g} mm" for label in FLARE21_LABELS)


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


def _pick_examples(means: pd.Series) -> list[tuple[str, tuple, float]]:
    """Worst, median (lower) and best case by mean DSC; tags merge where a case plays several roles."""
    order = means.sort_values(kind="stable")
    n = len(order)
    if n == 0:
        return []
    picks: dict = {}
    for tag, i in (("worst", 0), ("median", (n - 1) // 2), ("best", n - 1)):
        key = order.index[i]
        picks.setdefault(key, []).append(tag)
    return [(" / ".join(tags), key if isinstance(key, tuple) else (key,), float(order[key])) for key, tags in picks.items()]


def _listing(examples: list) -> str:
    return "; ".join(f"{ex.tag}: {ex.case}, {ex.score:.4f}" for ex in examples)


def _is_ct(dataset_json: Path) -> bool:
    try:
        channels = json.loads(dataset_json.read_text(encoding="utf-8")).get("channel_names", {})
        return str(next(iter(channels.values()), "")).upper() == "CT"
    except (OSError, ValueError, AttributeError):
        return False


def _organ_names(model: Model) -> list[str]:
    """Foreground label names of the model's dataset.json in label order (pseudo Dice order)."""
    try:
        labels = json.loads((model.folder / "dataset.json").read_text(encoding="utf-8"))["labels"]
        return [name for name, value in sorted(labels.items(), key=lambda kv: int(kv[1])) if int(value) != 0]
    except (OSError, ValueError, KeyError, TypeError):
        return list(FLARE21_LABELS.values())


def _load_log(fold_dir: Path) -> tuple[dict | None, str]:
    """nnU-Net's ``logging`` dict of the fold's final (else latest) checkpoint, and the checkpoint's name."""
    import torch

    for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
        path = fold_dir / name
        if path.is_file():
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # truncated zip, pickle errors, ...
                raise NnsdmError(f"{path}: corrupt checkpoint ({type(exc).__name__})") from None
            logging_ = checkpoint.get("logging") if isinstance(checkpoint, dict) else None
            return (logging_ if isinstance(logging_, dict) else None), name
    return None, ""


def _fmt_int(value) -> str:
    return f"{int(value):,}" if pd.notna(value) else "—"


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
    if (pred is None) != (gt is None):
        given, other = ("--pred", "--gt") if pred is not None else ("--gt", "--pred")
        raise NnsdmError(f"{given}: an external set needs both --pred and --gt ({other} missing)")
    if images is not None and pred is None:
        raise NnsdmError("--images: only used with an external set (--pred and --gt)")
    if images is not None and not Path(images).is_dir():
        raise NnsdmError(f"{images}: image folder not found")
    name = None
    try:
        name = workspace.dataset_name(dataset)
    except NnsdmError:
        if pred is None or dataset is not None:
            raise
    results = workspace.results / name if name else workspace.results
    models = find_models(results) if name else []
    if not models and pred is None:
        raise NnsdmError(f"{results}: no trained model (no <trainer>__<plans>__<configuration>/fold_*/checkpoint_final.pth); "
                         "run `nnsdm train` first")
    out = Path(out) if out is not None else workspace.root / "report"
    _check_out(out, [Path(p) for p in (pred, gt, images) if p is not None] + [workspace.root])

    tolerance_text = _tolerance_text(tolerance_mm)
    preprocessed = workspace.preprocessed / name if name else None
    ct = _is_ct(preprocessed / "dataset.json") if preprocessed else False
    notes: list[str] = []

    # ---- numbers ------------------------------------------------------------------------------------
    cv = None
    if models:
        jobs, cv_notes = cv_jobs(models, preprocessed=preprocessed)
        notes += cv_notes
        cv_lookup = {(*job.keys, job.case): job for job in jobs}
        cv = score(jobs, ["model", "fold"], tolerance_mm=tolerance_mm, progress=progress, workers=workers,
                   desc="report: cross-validation")
    ext = ext_lookup = None
    if pred is not None:
        jobs, ext_notes = external_jobs(Path(pred), Path(gt))
        notes += ext_notes
        ext_lookup = {(job.case,): job for job in jobs}
        ext = score(jobs, [], tolerance_mm=tolerance_mm, progress=progress, workers=workers, desc="report: external set")

    # matplotlib's default style: nnU-Net's training plots change the global one (seaborn, font scale 2.5)
    with atomic_dir(out, overwrite=True) as tmp, matplotlib.style.context("default"):
        (tmp / "figures").mkdir()
        tasks: list = []  # (description, callable) for the figure progress bar
        blocks: list = [Heading(f"nnsdm report{': ' + name if name else ''}", 1)]
        blocks.append(Paragraph(
            f"Generated by nnsdm {__version__} on {datetime.datetime.now().isoformat(timespec='seconds')} from "
            f"workspace `{workspace.root}`. Metrics follow the FLARE21 rules (nnsdm.evaluation): Dice similarity "
            f"coefficient (DSC) and normalized surface Dice (NSD) at a tolerance of {tolerance_text}, per organ, "
            "with the ground truth's voxel spacing; an organ absent from both masks scores 1, from one of them 0. "
            "Tables give mean ± standard deviation over cases (population std)."))

        # ---- cross-validation ---------------------------------------------------------------------
        if models:
            blocks.append(Heading("Trained models"))
            rows = []
            for m in models:
                folds = [p.name for p in m.folds()]
                evaluated = sorted(cv.loc[cv["model"] == m.name, "fold"].unique()) if cv is not None else []
                rows.append({"Model folder": m.name, "Trainer": m.trainer,
                             "SDM weight": "unknown" if m.sdm_weight is None else f"{m.sdm_weight:g}",
                             "Trained folds": ", ".join(f[5:] for f in folds),
                             "Cross-validation folds": ", ".join(str(f) for f in evaluated) or "none",
                             "Cases": str(cv.loc[cv["model"] == m.name, "case"].nunique()) if cv is not None else "0"})
            blocks.append(Table(pd.DataFrame(rows)))

            blocks.append(Heading("Cross-validation"))
            blocks.append(Paragraph(
                "Each fold's final-validation predictions (`fold_K/validation/`) scored against nnU-Net's "
                "`gt_segmentations`. Per fold: mean ± std over the fold's cases; *average*: mean ± std over all "
                "cross-validation cases of the model. *Mean* columns average each case's four organ scores."))
            cv_metrics_cols = ["model", "fold", "case", "label", "organ", "dsc", "nsd"]
            cv[cv_metrics_cols].to_csv(tmp / "cv_metrics.csv", index=False)
            table = cv_table(cv) if len(cv) else pd.DataFrame(columns=["model", "fold", "cases"])
            table.to_csv(tmp / "cv_table.csv", index=False)
            for m in models:
                part = cv[cv["model"] == m.name]
                blocks.append(Heading(m.label, 3))
                if part.empty:
                    blocks.append(Paragraph("No fold of this model has final-validation predictions "
                                            "(train with validation, e.g. without `--no-validation`)."))
                    continue
                shown = display_table(table[table["model"] == m.name], {"fold": "Fold"})
                blocks.append(Table(shown, f"Cross-validation of {m.name}"))
                violin = Path("figures") / f"cv_violin_{_safe(m.name)}.png"
                tasks.append((violin, lambda p=part, v=violin, m=m: figures.violin_figure(
                    p, tmp / v, title=f"Cross-validation: {m.label}", nsd_label=tolerance_text)))
                blocks.append(Figure(violin, f"DSC and NSD per organ over the cross-validation cases of {m.name}."))
                examples = []
                for tag, key, value in _pick_examples(case_means(part)):
                    job = cv_lookup[key]
                    image = find_file(workspace.raw / name / "imagesTr", f"{job.case}_0000")
                    examples.append(figures.Example(f"{tag} (fold {key[1]})", job.case, value, job.gt, job.pred, image))
                qual = Path("figures") / f"cv_examples_{_safe(m.name)}.png"
                tasks.append((qual, lambda e=examples, q=qual, m=m: figures.qualitative_figure(
                    e, tmp / q, title=f"Cross-validation examples: {m.label}", ct=ct)))
                blocks.append(Figure(qual, f"Cross-validation cases of {m.name} by mean DSC over organs ({_listing(examples)}): "
                                           "image, ground truth and prediction on the axial slice with most organ voxels."))

            # ---- ablation -------------------------------------------------------------------------
            baselines = [m for m in models if m.sdm_weight == 0 and (cv["model"] == m.name).any()]
            sdms = [m for m in models if m.sdm_weight and (cv["model"] == m.name).any()]
            if baselines and sdms:
                blocks.append(Heading("Ablation: SDM loss vs baseline"))
                blocks.append(Paragraph(
                    "Per organ, the mean difference SDM − baseline of DSC and NSD over the cross-validation cases "
                    "both models predicted (paired by fold and case), with scipy's two-sided paired Wilcoxon "
                    "signed-rank test (zero differences dropped). *all* pairs each case's organ mean. With fewer "
                    "than two pairs or only zero differences the p-value is not defined (—)."))
                frames = []
                for base in baselines:
                    for sdm in sdms:
                        result = ablation(cv[cv["model"] == sdm.name], cv[cv["model"] == base.name])
                        result.insert(0, "baseline_model", base.name)
                        result.insert(0, "sdm_model", sdm.name)
                        frames.append(result)
                        shown = pd.DataFrame({
                            "Organ": result["organ"], "Metric": result["metric"].str.upper(), "Pairs": result["n"].astype(str),
                            "SDM mean": result["sdm_mean"].map("{:.4f}".format),
                            "Baseline mean": result["baseline_mean"].map("{:.4f}".format),
                            "Difference (SDM − baseline)": result["mean_difference"].map("{:+.4f}".format),
                            "Wilcoxon p": result["p_value"].map(lambda p: "—" if pd.isna(p) else f"{p:.4g}"),
                            "Note": result["note"]})
                        blocks.append(Table(shown, f"{sdm.label} vs {base.label}"))
                pd.concat(frames, ignore_index=True).to_csv(tmp / "ablation.csv", index=False)
            elif len(models) > 1 or baselines:
                blocks.append(Heading("Ablation: SDM loss vs baseline"))
                blocks.append(Paragraph("The ablation needs an SDM model and a baseline (`--sdm-weight 0`, "
                                        "`nnsdmTrainer_sdm0`) with cross-validation predictions; this workspace "
                                        "does not hold both."))

        # ---- external set -------------------------------------------------------------------------
        if ext is not None:
            blocks.append(Heading("External set"))
            blocks.append(Paragraph(f"Predictions `{pred}` scored against ground truth `{gt}`: mean ± std over cases."))
            ext.to_csv(tmp / "external_metrics.csv", index=False)
            table = external_table(ext)
            table.to_csv(tmp / "external_table.csv", index=False)
            blocks.append(Table(display_table(table, {"set": "Set"}), "External set"))
            efficiency = Path(pred) / EFFICIENCY_FILE
            if efficiency.is_file():
                summary = efficiency_summary(efficiency)
                summary.to_csv(tmp / "external_efficiency.csv", index=False)
                devices = sorted(set(pd.read_csv(efficiency).get("device", pd.Series(dtype=str)).dropna().astype(str)))
                blocks.append(Heading("Efficiency", 3))
                blocks.append(Paragraph(
                    f"From `{efficiency}` (written by `nnsdm predict`; device: {', '.join(devices) or 'not recorded'}): "
                    "wall time of each case's whole run, and peak memory per case sampled every 0.1 s; the *max* of a "
                    "memory row is the peak over all cases."))
                blocks.append(Table(pd.DataFrame({
                    "Quantity": [_EFFICIENCY_NAMES.get(q, q) for q in summary["quantity"]],
                    "Cases": summary["cases"].astype(str),
                    **{c.capitalize(): summary[c].map("{:.2f}".format) for c in ("mean", "median", "max")}})))
            violin = Path("figures") / "external_violin.png"
            tasks.append((violin, lambda v=violin: figures.violin_figure(ext, tmp / v, title="External set",
                                                                         nsd_label=tolerance_text)))
            blocks.append(Figure(violin, "DSC and NSD per organ over the external cases."))
            examples = []
            for tag, key, value in _pick_examples(case_means(ext)):
                job = ext_lookup[key]
                image = find_file(Path(images), f"{job.case}_0000") if images is not None else None
                examples.append(figures.Example(tag, job.case, value, job.gt, job.pred, image))
            qual = Path("figures") / "external_examples.png"
            tasks.append((qual, lambda e=examples, q=qual: figures.qualitative_figure(
                e, tmp / q, title="External set examples", ct=ct if images is not None else False)))
            blocks.append(Figure(qual, f"External cases by mean DSC over organs ({_listing(examples)}) on the axial slice "
                                       "with most organ voxels" + ("." if images is not None else " (no images given).")))

        # ---- training curves and model statistics -------------------------------------------------
        if models:
            blocks.append(Heading("Training curves"))
            blocks.append(Paragraph("nnU-Net's per-epoch log from each fold's final (else latest) checkpoint: total "
                                    "train and validation loss, pseudo Dice on validation patches and, for SDM "
                                    "models, the segmentation (Dice + CE) and SDM (MSE) parts of the loss."))
            for m in models:
                for fold_dir in m.folds():
                    log_, checkpoint = _load_log(fold_dir)
                    if not log_ or not log_.get("train_losses"):
                        notes.append(f"{m.name} {fold_dir.name}: no training log in the checkpoint.")
                        continue
                    curve = Path("figures") / f"curves_{_safe(m.name)}_{fold_dir.name}.png"
                    title = f"{m.label}, {fold_dir.name.replace('_', ' ')} ({checkpoint})"
                    tasks.append((curve, lambda lg=log_, c=curve, t=title, m=m: figures.curves_figure(
                        lg, tmp / c, title=t, organs=_organ_names(m))))
                    blocks.append(Figure(curve, f"Training curves of {m.name}, {fold_dir.name}."))

            blocks.append(Heading("Model size and cost"))
            blocks.append(Paragraph(
                "Parameters and floating-point operations of one forward pass at the planned patch (batch 1), "
                "without and with the SDM head (the head is used in training only), next to the FLARE21 paper's "
                "nnU-Net v1 network (patch 80x192x160)."))
            stats_rows = []
            for m in models:
                from nnsdm.export import model_statistics

                try:
                    s = model_statistics(m.folder)
                except NnsdmError as exc:
                    notes.append(f"{m.name}: no model statistics ({exc}).")
                    continue
                stats_rows.append({"model": m.name, "network": s["network"], "patch_size": "x".join(map(str, s["patch_size"])),
                                   "parameters": s["parameters"], "parameters_with_sdm_head": s["parameters_with_sdm_head"],
                                   "flops": s["flops"], "flops_with_sdm_head": s["flops_with_sdm_head"]})
            stats_rows.append({"model": "FLARE21 paper", "network": "3D U-Net (nnU-Net v1)",
                               "patch_size": "x".join(map(str, PAPER_PATCH)), "parameters": PAPER_PARAMETERS,
                               "parameters_with_sdm_head": None, "flops": PAPER_FLOPS, "flops_with_sdm_head": None})
            stats = pd.DataFrame(stats_rows)
            stats.to_csv(tmp / "model_statistics.csv", index=False)
            blocks.append(Table(pd.DataFrame({
                "Model": stats["model"], "Network": stats["network"], "Patch": stats["patch_size"],
                "Parameters": stats["parameters"].map(_fmt_int),
                "Parameters with SDM head": stats["parameters_with_sdm_head"].map(_fmt_int),
                "FLOPs": stats["flops"].map(_fmt_int),
                "FLOPs with SDM head": stats["flops_with_sdm_head"].map(_fmt_int)})))

        if notes:
            blocks.append(Heading("Notes"))
            blocks += [Paragraph(f"- {note}") for note in notes]

        from tqdm import tqdm

        for path, make in tqdm(tasks, desc="report: figures", unit="figure", file=sys.stderr, disable=not progress):
            make()
        title = f"nnsdm report{': ' + name if name else ''}"
        (tmp / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
        (tmp / "report.html").write_text(to_html(blocks, root=tmp, title=title), encoding="utf-8")
    return out

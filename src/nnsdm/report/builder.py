"""The report builder: each section of the report is one function that appends blocks and figure tasks.

A :class:`ReportBuilder` collects the report's blocks (:mod:`nnsdm.report.render`), the figures still to
draw and notes, inside the temporary report folder; :meth:`ReportBuilder.finish` draws the figures and
writes both renderings. Sections (:func:`add_models`, :func:`add_cross_validation`, :func:`add_ablation`,
:func:`add_external`, :func:`add_training_curves`, :func:`add_model_statistics`) take the scored
frames from :mod:`nnsdm.report.tables` and write their CSV files beside the report.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nnsdm import __version__
from nnsdm.errors import NnsdmError
from nnsdm.evaluation import find_file
from nnsdm.inference.efficiency import EFFICIENCY_FILE
from nnsdm.labels import FLARE21_LABELS
from nnsdm.report import figures
from nnsdm.report.render import Block, Figure, Heading, Paragraph, Table, to_html, to_markdown
from nnsdm.report.tables import (
    PAPER_FLOPS,
    PAPER_PARAMETERS,
    PAPER_PATCH,
    Job,
    Model,
    ablation,
    case_means,
    cv_table,
    display_table,
    efficiency_summary,
    external_table,
)

_EFFICIENCY_NAMES = {
    "seconds": "Time per case (s)",
    "peak_rss_mib": "Peak resident memory (MiB)",
    "torch_peak_mib": "Peak torch GPU allocation (MiB)",
    "gpu_memory_flare21_mib": "GPU memory, FLARE21 statistic (MiB)",
    "gpu_memory_max_mib": "GPU memory, maximum (MiB)",
}


@dataclass
class ReportBuilder:
    """The report being written into ``folder`` (the temporary report folder)."""

    folder: Path
    title: str
    tolerance_text: str
    ct: bool = False
    blocks: list[Block] = field(default_factory=list)
    tasks: list[tuple[Path, Callable[[], object]]] = field(default_factory=list)  # figures to draw
    notes: list[str] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def figure(self, name: str, caption: str, draw: Callable[[Path], object]) -> None:
        """A figure block for ``figures/<name>.png``; ``draw(path)`` makes the file when the report finishes."""
        relative = Path("figures") / f"{_safe(name)}.png"
        self.tasks.append((relative, lambda: draw(self.folder / relative)))
        self.add(Figure(relative, caption))

    def csv(self, frame: pd.DataFrame, name: str, *, index: bool = False) -> None:
        frame.to_csv(self.folder / name, index=index)

    def finish(self, *, progress: bool) -> None:
        """Notes, then every figure drawn, then ``report.md`` and ``report.html`` written."""
        from tqdm import tqdm

        if self.notes:
            self.add(Heading("Notes"), *(Paragraph(f"- {note}") for note in self.notes))
        (self.folder / "figures").mkdir(exist_ok=True)
        for _, draw in tqdm(self.tasks, desc="report: figures", unit="figure", file=sys.stderr, disable=not progress):
            draw()
        (self.folder / "report.md").write_text(to_markdown(self.blocks), encoding="utf-8")
        (self.folder / "report.html").write_text(to_html(self.blocks, root=self.folder, title=self.title), encoding="utf-8")


# --- small helpers -------------------------------------------------------------------------------------

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def tolerance_text(tolerance_mm: Mapping[int, float] | float) -> str:
    """The NSD tolerance as the report states it (one value, or one per organ)."""
    if not isinstance(tolerance_mm, Mapping):
        return f"{float(tolerance_mm):g} mm"
    values = {float(tolerance_mm[label]) for label in FLARE21_LABELS}
    if len(values) == 1:
        return f"{values.pop():g} mm"
    return ", ".join(f"{FLARE21_LABELS[label]} {float(tolerance_mm[label]):g} mm" for label in FLARE21_LABELS)


def is_ct(dataset_json: Path) -> bool:
    """Whether a dataset.json names CT as its first channel (the example figure then uses a CT window)."""
    try:
        channels = json.loads(dataset_json.read_text(encoding="utf-8")).get("channel_names", {})
        return str(next(iter(channels.values()), "")).upper() == "CT"
    except (OSError, ValueError, AttributeError):
        return False


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


def _examples(metrics: pd.DataFrame, lookup: Mapping[tuple, Job], images: Path | None,
              tag: Callable[[str, tuple], str]) -> list:
    """The worst/median/best cases of ``metrics`` as figure examples (image ``CASE_0000`` from ``images``)."""
    examples = []
    for name, key, value in _pick_examples(case_means(metrics)):
        job = lookup[key]
        image = find_file(images, f"{job.case}_0000") if images is not None else None
        examples.append(figures.Example(tag(name, key), job.case, value, job.gt, job.pred, image))
    return examples


def _listing(examples: list) -> str:
    return "; ".join(f"{ex.tag}: {ex.case}, {ex.score:.4f}" for ex in examples)


def _organ_names(model: Model) -> list[str]:
    """Foreground label names of the model's dataset.json in label order (pseudo Dice order)."""
    try:
        labels = model.folder.dataset_json()["labels"]
        return [name for name, value in sorted(labels.items(), key=lambda kv: int(kv[1])) if int(value) != 0]
    except (NnsdmError, KeyError, TypeError, ValueError):
        return list(FLARE21_LABELS.values())


def _fmt_int(value) -> str:
    return f"{int(value):,}" if pd.notna(value) else "—"


# --- sections ------------------------------------------------------------------------------------------

def add_introduction(report: ReportBuilder, workspace_root: Path) -> None:
    report.add(Heading(report.title, 1), Paragraph(
        f"Generated by nnsdm {__version__} on {datetime.datetime.now().isoformat(timespec='seconds')} from "
        f"workspace `{workspace_root}`. Metrics follow the FLARE21 rules (nnsdm.evaluation): Dice similarity "
        f"coefficient (DSC) and normalized surface Dice (NSD) at a tolerance of {report.tolerance_text}, per organ, "
        "with the ground truth's voxel spacing; an organ absent from both masks scores 1, from one of them 0. "
        "Tables give mean ± standard deviation over cases (population std)."))


def add_models(report: ReportBuilder, models: Sequence[Model], cv: pd.DataFrame) -> None:
    """The table of trained models: trainer, SDM weight, trained and cross-validated folds."""
    rows = []
    for m in models:
        part = cv[cv["model"] == m.name]
        rows.append({"Model folder": m.name, "Trainer": m.trainer,
                     "SDM weight": "unknown" if m.sdm_weight is None else f"{m.sdm_weight:g}",
                     "Trained folds": ", ".join(str(f) for f in m.folds()),
                     "Cross-validation folds": ", ".join(str(f) for f in sorted(part["fold"].unique())) or "none",
                     "Cases": str(part["case"].nunique())})
    report.add(Heading("Trained models"), Table(pd.DataFrame(rows)))


def add_cross_validation(report: ReportBuilder, models: Sequence[Model], cv: pd.DataFrame,
                         lookup: Mapping[tuple, Job], images: Path) -> None:
    """Per model: the fold table, violin plot and worst/median/best examples; ``cv_*.csv``."""
    report.add(Heading("Cross-validation"), Paragraph(
        "Each fold's final-validation predictions (`fold_K/validation/`) scored against nnU-Net's "
        "`gt_segmentations`. Per fold: mean ± std over the fold's cases; *average*: mean ± std over all "
        "cross-validation cases of the model. *Mean* columns average each case's four organ scores."))
    report.csv(cv[["model", "fold", "case", "label", "organ", "dsc", "nsd"]], "cv_metrics.csv")
    table = cv_table(cv) if len(cv) else pd.DataFrame(columns=["model", "fold", "cases"])
    report.csv(table, "cv_table.csv")
    for m in models:
        part = cv[cv["model"] == m.name]
        report.add(Heading(m.label, 3))
        if part.empty:
            report.add(Paragraph("No fold of this model has final-validation predictions "
                                 "(train with validation, e.g. without `--no-validation`)."))
            continue
        report.add(Table(display_table(table[table["model"] == m.name], {"fold": "Fold"}), f"Cross-validation of {m.name}"))
        report.figure(f"cv_violin_{m.name}", f"DSC and NSD per organ over the cross-validation cases of {m.name}.",
                      lambda path, p=part, m=m: figures.violin_figure(
                          p, path, title=f"Cross-validation: {m.label}", nsd_label=report.tolerance_text))
        examples = _examples(part, lookup, images, lambda tag, key: f"{tag} (fold {key[1]})")
        report.figure(f"cv_examples_{m.name}",
                      f"Cross-validation cases of {m.name} by mean DSC over organs ({_listing(examples)}): "
                      "image, ground truth and prediction on the axial slice with most organ voxels.",
                      lambda path, e=examples, m=m: figures.qualitative_figure(
                          e, path, title=f"Cross-validation examples: {m.label}", ct=report.ct))


def add_ablation(report: ReportBuilder, models: Sequence[Model], cv: pd.DataFrame) -> None:
    """SDM model(s) vs ``sdm_weight 0`` baseline(s), paired by fold and case; ``ablation.csv``."""
    baselines = [m for m in models if m.sdm_weight == 0 and (cv["model"] == m.name).any()]
    sdms = [m for m in models if m.sdm_weight and (cv["model"] == m.name).any()]
    if not (baselines and sdms):
        if len(models) > 1 or baselines:
            report.add(Heading("Ablation: SDM loss vs baseline"), Paragraph(
                "The ablation needs an SDM model and a baseline (`--sdm-weight 0`, `nnsdmTrainer_sdm0`) with "
                "cross-validation predictions; this workspace does not hold both."))
        return
    report.add(Heading("Ablation: SDM loss vs baseline"), Paragraph(
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
            report.add(Table(_ablation_display(result), f"{sdm.label} vs {base.label}"))
    report.csv(pd.concat(frames, ignore_index=True), "ablation.csv")


def _ablation_display(result: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Organ": result["organ"], "Metric": result["metric"].str.upper(), "Pairs": result["n"].astype(str),
        "SDM mean": result["sdm_mean"].map("{:.4f}".format),
        "Baseline mean": result["baseline_mean"].map("{:.4f}".format),
        "Difference (SDM − baseline)": result["mean_difference"].map("{:+.4f}".format),
        "Wilcoxon p": result["p_value"].map(lambda p: "—" if pd.isna(p) else f"{p:.4g}"),
        "Note": result["note"]})


def add_external(report: ReportBuilder, ext: pd.DataFrame, lookup: Mapping[tuple, Job], *, pred: Path, gt: Path,
                 images: Path | None) -> None:
    """The external set: table, efficiency of ``nnsdm predict``, violin plot and examples; ``external_*.csv``."""
    report.add(Heading("External set"),
               Paragraph(f"Predictions `{pred}` scored against ground truth `{gt}`: mean ± std over cases."))
    report.csv(ext, "external_metrics.csv")
    table = external_table(ext)
    report.csv(table, "external_table.csv")
    report.add(Table(display_table(table, {"set": "Set"}), "External set"))
    if (Path(pred) / EFFICIENCY_FILE).is_file():
        _add_efficiency(report, Path(pred) / EFFICIENCY_FILE)
    report.figure("external_violin", "DSC and NSD per organ over the external cases.",
                  lambda path: figures.violin_figure(ext, path, title="External set", nsd_label=report.tolerance_text))
    examples = _examples(ext, lookup, images, lambda tag, key: tag)
    report.figure("external_examples", f"External cases by mean DSC over organs ({_listing(examples)}) on the axial "
                  "slice with most organ voxels" + ("." if images is not None else " (no images given)."),
                  lambda path: figures.qualitative_figure(examples, path, title="External set examples",
                                                          ct=report.ct if images is not None else False))


def _add_efficiency(report: ReportBuilder, efficiency: Path) -> None:
    summary = efficiency_summary(efficiency)
    report.csv(summary, "external_efficiency.csv")
    devices = sorted(set(pd.read_csv(efficiency).get("device", pd.Series(dtype=str)).dropna().astype(str)))
    report.add(Heading("Efficiency", 3), Paragraph(
        f"From `{efficiency}` (written by `nnsdm predict`; device: {', '.join(devices) or 'not recorded'}): "
        "wall time of each case's whole run, and peak memory per case sampled every 0.1 s; the *max* of a "
        "memory row is the peak over all cases."))
    report.add(Table(pd.DataFrame({
        "Quantity": [_EFFICIENCY_NAMES.get(q, q) for q in summary["quantity"]],
        "Cases": summary["cases"].astype(str),
        **{c.capitalize(): summary[c].map("{:.2f}".format) for c in ("mean", "median", "max")}})))


def add_training_curves(report: ReportBuilder, models: Sequence[Model]) -> None:
    """nnU-Net's per-epoch log of every trained fold, from its final (else latest) checkpoint."""
    report.add(Heading("Training curves"), Paragraph(
        "nnU-Net's per-epoch log from each fold's final (else latest) checkpoint: total "
        "train and validation loss, pseudo Dice on validation patches and, for SDM "
        "models, the segmentation (Dice + CE) and SDM (MSE) parts of the loss."))
    for m in models:
        for fold in m.folds():
            log, checkpoint = m.folder.training_log(fold)
            if not log or not log.get("train_losses"):
                report.notes.append(f"{m.name} fold_{fold}: no training log in the checkpoint.")
                continue
            report.figure(f"curves_{m.name}_fold_{fold}", f"Training curves of {m.name}, fold_{fold}.",
                          lambda path, lg=log, t=f"{m.label}, fold {fold} ({checkpoint})", m=m: figures.curves_figure(
                              lg, path, title=t, organs=_organ_names(m)))


def add_model_statistics(report: ReportBuilder, models: Sequence[Model]) -> None:
    """Parameters and FLOPs of each model with and without the SDM head, beside the paper's; ``model_statistics.csv``."""
    from nnsdm.export import model_statistics

    report.add(Heading("Model size and cost"), Paragraph(
        "Parameters and floating-point operations of one forward pass at the planned patch (batch 1), "
        "without and with the SDM head (the head is used in training only), next to the FLARE21 paper's "
        "nnU-Net v1 network (patch 80x192x160)."))
    rows = []
    for m in models:
        try:
            s = model_statistics(m.folder.path)
        except NnsdmError as exc:
            report.notes.append(f"{m.name}: no model statistics ({exc}).")
            continue
        rows.append({"model": m.name, "network": s["network"], "patch_size": "x".join(map(str, s["patch_size"])),
                     **{k: s[k] for k in ("parameters", "parameters_with_sdm_head", "flops", "flops_with_sdm_head")}})
    rows.append({"model": "FLARE21 paper", "network": "3D U-Net (nnU-Net v1)",
                 "patch_size": "x".join(map(str, PAPER_PATCH)), "parameters": PAPER_PARAMETERS,
                 "parameters_with_sdm_head": None, "flops": PAPER_FLOPS, "flops_with_sdm_head": None})
    stats = pd.DataFrame(rows)
    report.csv(stats, "model_statistics.csv")
    report.add(Table(pd.DataFrame({
        "Model": stats["model"], "Network": stats["network"], "Patch": stats["patch_size"],
        "Parameters": stats["parameters"].map(_fmt_int),
        "Parameters with SDM head": stats["parameters_with_sdm_head"].map(_fmt_int),
        "FLOPs": stats["flops"].map(_fmt_int),
        "FLOPs with SDM head": stats["flops_with_sdm_head"].map(_fmt_int)})))

"""The report's figures (matplotlib's object API with the Agg canvas: no pyplot state, no display needed).

Organs have the same colour in every figure (:data:`ORGAN_COLOURS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nnsdm.errors import NnsdmError
from nnsdm.labels import FLARE21_LABELS

ORGAN_COLOURS: dict[str, str] = {"liver": "#e6550d", "kidney": "#3b9ee6", "spleen": "#b53fd1", "pancreas": "#3fbf4a"}
METRIC_LABELS = {"dsc": "Dice similarity coefficient (DSC)", "nsd": "Normalized surface Dice (NSD)"}
CT_WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window: level 40, width 400 HU
DPI = 100


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _organ_legend(fig, organs: Sequence[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=ORGAN_COLOURS.get(o, "grey"), edgecolor="black", label=o.capitalize()) for o in organs]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)


# ----------------------------------------------------------------------------------------------------------
# Violin plots


def violin_figure(metrics: pd.DataFrame, path: Path, *, title: str, nsd_label: str = "NSD") -> Path:
    """Violins (with every case as a dot and the median as a bar) of DSC and NSD per organ."""
    organs = [o for o in FLARE21_LABELS.values() if o in set(metrics["organ"])]
    fig = _figure(10, 4.4)
    axes = fig.subplots(1, 2)
    rng = np.random.default_rng(0)
    pos = np.arange(1, len(organs) + 1)
    for ax, m in zip(axes, ("dsc", "nsd")):
        data = [metrics.loc[metrics["organ"] == o, m].to_numpy(dtype=float) for o in organs]
        spread = [i for i, d in enumerate(data) if len(d) >= 2 and np.ptp(d) > 0]  # a KDE needs two distinct values
        if spread:
            parts = ax.violinplot([data[i] for i in spread], positions=pos[spread], widths=0.8, showextrema=False)
            for body, i in zip(parts["bodies"], spread):
                body.set_facecolor(ORGAN_COLOURS.get(organs[i], "grey"))
                body.set_edgecolor("black")
                body.set_alpha(0.45)
        for i, (organ, d) in enumerate(zip(organs, data)):
            jitter = rng.uniform(-0.09, 0.09, len(d)) if len(d) > 1 else np.zeros(len(d))
            ax.scatter(pos[i] + jitter, d, s=16, color=ORGAN_COLOURS.get(organ, "grey"), edgecolor="black",
                       linewidth=0.5, zorder=3)
            if len(d):
                ax.hlines(np.median(d), pos[i] - 0.25, pos[i] + 0.25, color="black", linewidth=2, zorder=4)
        ax.set_xticks(pos, [o.capitalize() for o in organs])
        ax.set_xlim(0.4, len(organs) + 0.6)
        ax.set_ylim(-0.03, 1.03)
        short = m == "dsc" or len(nsd_label) > 12  # per-organ tolerances do not fit an axis label
        ax.set_ylabel(METRIC_LABELS[m] if short else f"{METRIC_LABELS[m][:-1]}, {nsd_label})")
        ax.set_xlabel("organ")
        ax.grid(axis="y", alpha=0.3)
    n = metrics["case"].nunique() if "fold" not in metrics.columns else len(metrics.groupby(["fold", "case"]))
    fig.suptitle(f"{title} ({n} case{'s' if n != 1 else ''}; bar: median)")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------------
# Qualitative examples


@dataclass(frozen=True)
class Example:
    """One case to show: its tag (worst, median, best), mean DSC, and its image, ground truth and prediction."""

    tag: str
    case: str
    score: float
    gt: Path
    pred: Path | None
    image: Path | None = None


def _oriented(path: Path):
    """Array (z, y, x) and spacing (z, y, x) in LPS orientation: axial slices show anterior up, patient right left."""
    import SimpleITK as sitk

    from nnsdm.fileio import read_image

    image = read_image(path)
    if image.GetDimension() == 3:
        image = sitk.DICOMOrient(image, "LPS")
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in reversed(image.GetSpacing()))


def _overlay(labels: np.ndarray, alpha: float) -> np.ndarray:
    from matplotlib.colors import to_rgba

    rgba = np.zeros(labels.shape + (4,))
    for label, organ in FLARE21_LABELS.items():
        colour = to_rgba(ORGAN_COLOURS[organ], alpha)
        rgba[labels == label] = colour
    return rgba


def _slice_index(gt: np.ndarray, pred: np.ndarray | None) -> int:
    """The axial slice with the most ground-truth organ voxels (else prediction voxels, else the middle)."""
    for labels in (gt, pred):
        if labels is not None:
            counts = np.count_nonzero(np.isin(labels, list(FLARE21_LABELS)), axis=(1, 2))
            if counts.max() > 0:
                return int(np.argmax(counts))
    return gt.shape[0] // 2


def _window(image: np.ndarray, ct: bool) -> tuple[float, float]:
    """Display range: the abdominal window for CT (told, or recognised by air at about -1000 HU), else percentiles."""
    if ct or image.min() <= -500:
        return CT_WINDOW
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def qualitative_figure(examples: Sequence[Example], path: Path, *, title: str, ct: bool = True) -> Path:
    """Rows: the examples; columns: image, ground truth and prediction overlays on the axial slice with most organ.

    Pixels are drawn with the voxel spacing's aspect ratio. Without an image the labels are drawn on black.
    """
    loaded = []
    for ex in examples:
        gt, spacing = _oriented(ex.gt)
        pred = _oriented(ex.pred)[0] if ex.pred is not None else np.zeros_like(gt)
        image = _oriented(ex.image)[0] if ex.image is not None else None
        if image is not None and image.shape != gt.shape:
            raise NnsdmError(f"{ex.image}: image size {image.shape[::-1]} differs from its ground truth's {gt.shape[::-1]}")
        z = _slice_index(gt, pred if ex.pred is not None else None)
        loaded.append((ex, spacing, image[z] if image is not None else None, gt[z], pred[z], z))
    with_image = any(item[2] is not None for item in loaded)
    columns = (["Image"] if with_image else []) + ["Ground truth", "Prediction"]
    panel_w = 3.3
    heights = [panel_w * (gt.shape[0] * sp[1]) / (gt.shape[1] * sp[2]) for _, sp, _, gt, _, _ in loaded]
    fig = _figure(panel_w * len(columns) + 0.8, sum(heights) + 1.1)
    axes = np.atleast_2d(fig.subplots(len(loaded), len(columns), squeeze=False, gridspec_kw={"height_ratios": heights}))
    for row, (ex, spacing, image, gt, pred, z) in enumerate(loaded):
        aspect = spacing[1] / spacing[2]
        for col, name in enumerate(columns):
            ax = axes[row, col]
            if image is not None:
                lo, hi = _window(image, ct)
                ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            else:
                ax.imshow(np.zeros(gt.shape), cmap="gray", vmin=0, vmax=1, aspect=aspect)
            if name != "Image":
                ax.imshow(_overlay(gt if name == "Ground truth" else pred, 0.5 if image is not None else 0.9),
                          aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
            if col == 0:
                ax.set_ylabel(f"{ex.tag}: {ex.case}\nmean DSC {ex.score:.3f}\naxial slice {z}", fontsize=9)
    _organ_legend(fig, list(FLARE21_LABELS.values()))
    fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------------
# Training curves


def _series(log: Mapping, key: str) -> np.ndarray:
    values = log.get(key) or []
    return np.asarray([float(v) for v in values], dtype=float)


def _plot(ax, log: Mapping, key: str, label: str, **style) -> None:
    y = _series(log, key)
    if y.size:
        x = np.arange(1, y.size + 1)
        marker = "o" if y.size <= 20 else None
        ax.plot(x, y, label=label, marker=marker, markersize=3, **style)


def curves_figure(log: Mapping, path: Path, *, title: str, organs: Sequence[str] | None = None) -> Path:
    """nnU-Net's training log as curves: total loss, pseudo Dice (mean, EMA, per organ) and, for SDM models,
    the segmentation (Dice + CE) and SDM (MSE) loss parts."""
    sdm = all(len(log.get(k) or []) for k in ("train_sdm_losses", "val_sdm_losses"))
    fig = _figure(11, 7.2 if sdm else 3.8)
    axes = fig.subplots(2 if sdm else 1, 2, squeeze=False).ravel()
    ax = axes[0]
    _plot(ax, log, "train_losses", "train", color="tab:blue")
    _plot(ax, log, "val_losses", "validation", color="tab:red")
    ax.set(title="Total loss" + (" (Dice + CE + SDM)" if sdm else " (Dice + CE)"), xlabel="epoch", ylabel="loss")
    ax = axes[1]
    per_class = log.get("dice_per_class_or_region") or []
    if per_class and organs and len(per_class[0]) == len(organs):
        values = np.asarray(per_class, dtype=float)
        for i, organ in enumerate(organs):
            ax.plot(np.arange(1, len(values) + 1), values[:, i], color=ORGAN_COLOURS.get(organ, "grey"), linewidth=1,
                    alpha=0.8, label=organ.capitalize())
    _plot(ax, log, "mean_fg_dice", "mean", color="grey", linewidth=0.8, alpha=0.6)
    _plot(ax, log, "ema_fg_dice", "mean (EMA)", color="black", linewidth=2)
    ax.set(title="Pseudo Dice (validation patches)", xlabel="epoch", ylabel="Dice", ylim=(-0.02, 1.02))
    if sdm:
        _plot(axes[2], log, "train_seg_losses", "train", color="tab:blue")
        _plot(axes[2], log, "val_seg_losses", "validation", color="tab:red")
        axes[2].set(title="Segmentation loss part (Dice + CE)", xlabel="epoch", ylabel="loss")
        _plot(axes[3], log, "train_sdm_losses", "train", color="tab:blue")
        _plot(axes[3], log, "val_sdm_losses", "validation", color="tab:red")
        axes[3].set(title="SDM loss part (MSE)", xlabel="epoch", ylabel="mean squared error")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.has_data():
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)

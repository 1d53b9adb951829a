"""Does the SDM quality score find failed segmentations? Validation on held-out, degraded synthetic CT.

Held-out phantoms (seeds the demo never trains on): each case clean and once per degradation of
``nnsdm.phantom.DEGRADATIONS`` (noise, low dose, non-contrast and arterial phase, metal, motion,
truncated field of view, thick slices) at a random severity in [0.3, 1]. The model predicts them with
``nnsdm predict --qc`` (SDM head and softmax in one pass); the true DSC and NSD (1 mm, FLARE21) come from
the ground truth. Printed per organ and pooled, side by side for ``qc`` (SDM head vs segmentation) and
``qc_baseline`` (softmax entropy):

* Spearman correlation of the score with the true DSC and with the true NSD;
* AUROC for detecting failures (DSC < 0.85): the chance that a failed organ scores below a good one;
* at the flag threshold ``nnsdm.inference.qc.QC_THRESHOLD``: failures flagged (sensitivity) and good
  organs left alone (specificity), and the threshold that maximises sensitivity + specificity.

Also printed, to show which reading of the head carries the signal: the score's two parts (overlap
only: Dice of ``sdm < 0`` with the segmentation; boundary only: their NSD at 2 mm).

It asserts nothing about which score wins. Writes ``OUT/qc_validation.csv`` (one row per case and organ)
and ``OUT/qc_validation.png`` (scores against true DSC).

    python benchmarks/qc.py --model MODEL_FOLDER      # a trained SDM model (e.g. summary.json's "model")
    python benchmarks/qc.py                           # uses ./nnsdm_demo, running `nnsdm demo` first if needed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np

FAILURE_DSC = 0.85
SCORES = ("qc", "qc_baseline", "qc_overlap", "qc_boundary")


def _cpu() -> str:
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = re.search(r"model name\s*:\s*(.*)", text)
        avx = sorted(set(re.findall(r"\b(avx2|avx512f|avx512_bf16)\b", text)))
        flags = f"{name.group(1) if name else platform.processor()}, {' '.join(avx) or 'no AVX2'}"
    except OSError:
        flags = platform.processor()
    return f"{flags}, {os.cpu_count()} cores"


def _model(args) -> Path:
    if args.model:
        return Path(args.model)
    summary = Path("nnsdm_demo") / "summary.json"
    if not summary.is_file():
        from nnsdm.demo import run_demo

        print("no --model: running `nnsdm demo` into ./nnsdm_demo first (about 10-20 min on 2 cores)")
        run_demo(out=Path("nnsdm_demo"), overwrite=True)
    return Path(json.loads(summary.read_text())["model"])


def make_cases(out: Path, *, cases: int, seed: int) -> tuple[Path, Path, dict]:
    """Clean and degraded held-out phantoms in out/imagesTs, out/labelsTs; returns (images, labels, case info)."""
    import SimpleITK as sitk

    from nnsdm.demo import DEFAULTS
    from nnsdm.phantom import DEGRADATIONS, case_seed, generate_case

    images, labels = out / "imagesTs", out / "labelsTs"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    info = {}
    for i in range(cases):
        for kind in (None, *DEGRADATIONS):
            severity = float(rng.uniform(0.3, 1.0))
            name = f"qc_{i:03d}_{kind or 'clean'}"
            info[name] = {"degradation": kind or "clean", "severity": 0.0 if kind is None else round(severity, 3)}
            if (labels / f"{name}.nii.gz").is_file():
                continue
            image, label = generate_case(seed=case_seed(seed, i), shape=DEFAULTS["shape"], spacing=DEFAULTS["spacing"],
                                         degradation=kind, severity=severity)
            sitk.WriteImage(image, str(images / f"{name}_0000.nii.gz"), useCompression=True)
            sitk.WriteImage(label, str(labels / f"{name}.nii.gz"), useCompression=True)
    return images, labels, info


def parts(pred: Path, cases: list[str]) -> dict:
    """The two parts of the SDM score per (case, organ), from the label maps and CASE_sdm.nii.gz."""
    import SimpleITK as sitk

    from nnsdm.evaluation import dice, normalized_surface_dice
    from nnsdm.inference.qc import TOLERANCE_MM
    from nnsdm.labels import FLARE21_LABELS

    out = {}
    for case in cases:
        image = sitk.ReadImage(str(pred / f"{case}.nii.gz"))
        seg = sitk.GetArrayFromImage(image)
        sdm = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{case}_sdm.nii.gz")))
        spacing = tuple(reversed(image.GetSpacing()))
        for channel, (label, organ) in enumerate(sorted(FLARE21_LABELS.items())):
            mask, head = seg == label, sdm[channel] < 0
            out[case, organ] = (dice(head, mask), normalized_surface_dice(head, mask, spacing, TOLERANCE_MM))
    return out


def auroc(scores: np.ndarray, failed: np.ndarray) -> float:
    """P(a failed organ scores lower than a good one), ties half; NaN without both kinds."""
    from scipy.stats import mannwhitneyu

    good, bad = scores[~failed], scores[failed]
    if len(good) == 0 or len(bad) == 0:
        return float("nan")
    return float(mannwhitneyu(good, bad).statistic / (len(good) * len(bad)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def summary_table(table):
    """Per organ and pooled: Spearman with DSC and NSD, AUROC, for each score."""
    import pandas as pd

    rows = []
    for organ, part in [*table.groupby("organ", sort=False), ("all", table)]:
        failed = part["dsc"].to_numpy() < FAILURE_DSC
        row = {"organ": organ, "n": len(part), "failures": int(failed.sum())}
        for score in SCORES:
            values = part[score].to_numpy(dtype=float)
            row[f"{score}_rho_dsc"] = spearman(values, part["dsc"].to_numpy())
            row[f"{score}_rho_nsd"] = spearman(values, part["nsd"].to_numpy())
            row[f"{score}_auroc"] = auroc(values, failed)
        rows.append(row)
    return pd.DataFrame(rows)


def threshold_lines(table) -> list[str]:
    """Sensitivity/specificity at the shipped threshold and at the best one, per score (pooled)."""
    from nnsdm.inference.qc import QC_THRESHOLD

    failed = table["dsc"].to_numpy() < FAILURE_DSC
    lines = []
    for score in ("qc", "qc_baseline"):
        values = table[score].to_numpy(dtype=float)

        def rates(t: float) -> tuple[float, float]:
            flagged = values < t
            sens = flagged[failed].mean() if failed.any() else float("nan")
            spec = (~flagged[~failed]).mean() if (~failed).any() else float("nan")
            return float(sens), float(spec)

        candidates = np.unique(np.concatenate([values, values + 1e-4]))
        best = max(candidates, key=lambda t: sum(rates(t)))
        s0, p0 = rates(QC_THRESHOLD)
        s1, p1 = rates(best)
        lines.append(f"{score:12s} at {QC_THRESHOLD:.2f}: flags {s0:.0%} of failures, leaves {p0:.0%} of good organs; "
                     f"best threshold {best:.3f}: {s1:.0%} / {p1:.0%}")
    return lines


def figure(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, score, title in zip(axes, ("qc", "qc_baseline"), ("SDM head vs segmentation (qc)", "softmax entropy (qc_baseline)")):
        for organ, part in table.groupby("organ", sort=False):
            ax.scatter(part[score], part["dsc"], s=14, label=organ, alpha=0.8)
        ax.axhline(FAILURE_DSC, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(score)
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("true DSC")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _format(summary) -> str:
    lines = [f"{'organ':9s} {'n':>3s} {'fail':>4s} | {'Spearman with DSC':^23s} | {'Spearman with NSD':^23s} | "
             f"{'AUROC (DSC<0.85)':^23s} | overlap/boundary only: rho DSC, AUROC",
             f"{'':9s} {'':>3s} {'':>4s} | {'qc':>10s} {'baseline':>12s} | {'qc':>10s} {'baseline':>12s} | "
             f"{'qc':>10s} {'baseline':>12s} |"]
    for _, r in summary.iterrows():
        lines.append(f"{r['organ']:9s} {r['n']:3d} {r['failures']:4d} | {r['qc_rho_dsc']:10.3f} {r['qc_baseline_rho_dsc']:12.3f} | "
                     f"{r['qc_rho_nsd']:10.3f} {r['qc_baseline_rho_nsd']:12.3f} | {r['qc_auroc']:10.3f} "
                     f"{r['qc_baseline_auroc']:12.3f} | {r['qc_overlap_rho_dsc']:.3f} {r['qc_overlap_auroc']:.3f} / "
                     f"{r['qc_boundary_rho_dsc']:.3f} {r['qc_boundary_auroc']:.3f}")
    return "\n".join(lines)


def main() -> int:
    import pandas as pd

    from nnsdm.evaluation import evaluate_folder
    from nnsdm.inference.predict import predict

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="trained SDM model folder (default: ./nnsdm_demo's, trained if missing)")
    parser.add_argument("--out", type=Path, default=Path("qc_validation"), help="work folder (default ./qc_validation)")
    parser.add_argument("--cases", type=int, default=4, help="held-out patients, each clean + 8 degradations (default 4)")
    parser.add_argument("--seed", type=int, default=5000, help="seed of the held-out patients (demo trains on 0, tests on 1000)")
    args = parser.parse_args()
    model = _model(args)
    start = time.perf_counter()
    images, labels, info = make_cases(args.out / "data", cases=args.cases, seed=args.seed)
    pred = args.out / "predictions"
    predict(input=images, output=pred, model=model, tta=False, save_sdm=True, qc=True)
    evaluate_folder(pred=pred, gt=labels, out=args.out / "evaluation", progress=False)
    metrics = pd.read_csv(args.out / "evaluation" / "metrics.csv")
    qc = pd.read_csv(pred / "qc.csv")
    table = metrics.merge(qc, on=["case", "organ"], how="inner")
    table = table[table["case"].isin(info)].reset_index(drop=True)  # the folder may hold other cases
    split = parts(pred, sorted(info))
    table["qc_overlap"] = [split[c, o][0] for c, o in zip(table["case"], table["organ"])]
    table["qc_boundary"] = [split[c, o][1] for c, o in zip(table["case"], table["organ"])]
    table["degradation"] = [info[c]["degradation"] for c in table["case"]]
    table["severity"] = [info[c]["severity"] for c in table["case"]]
    table.to_csv(args.out / "qc_validation.csv", index=False)
    figure(table, args.out / "qc_validation.png")
    summary = summary_table(table)
    print(f"QC validation: {len(info)} held-out cases ({args.cases} patients x clean + 8 degradations), model {model}")
    print(f"CPU: {_cpu()}; {time.perf_counter() - start:.0f} s")
    print(_format(summary))
    for line in threshold_lines(table):
        print(line)
    per_kind = table.groupby("degradation", sort=False)[["dsc", "nsd", "qc", "qc_baseline"]].mean()
    print("mean per degradation:\n" + per_kind.round(3).to_string())
    print(f"table: {args.out / 'qc_validation.csv'}, figure: {args.out / 'qc_validation.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

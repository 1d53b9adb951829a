"""nnsdm report: the ablation test, the efficiency summary, and a full report of the tiny trained model.

The full report is built once per module on a copy of the session's workspace, with a baseline model
(a copy of the SDM model folder named ``nnsdmTrainer_sdm0``, one validation prediction replaced by its
ground truth) and an external set (the SDM model's validation predictions with an ``efficiency.csv``).
Every number checked is recomputed here with nnsdm.evaluation.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from nnsdm.errors import NnsdmError
from nnsdm.evaluation import evaluate_case
from nnsdm.labels import FLARE21_LABELS
from nnsdm.report import write_report
from nnsdm.report.tables import PAPER_FLOPS, PAPER_PARAMETERS, ablation, efficiency_summary
from nnsdm.workspace import Workspace

CHROMIUM = Path("/usr/bin/chromium")
SDM = "nnsdmTrainer__nnUNetPlans__3d_fullres"
BASE = "nnsdmTrainer_sdm0__nnUNetPlans__3d_fullres"


# ----------------------------------------------------------------------------------------------------------
# Ablation (pure function)


def _frame(values: dict[str, list[float]], *, cases: list[str], fold: int = 0) -> pd.DataFrame:
    rows = [{"fold": fold, "case": case, "organ": organ, "dsc": v, "nsd": v / 2}
            for organ, vs in values.items() for case, v in zip(cases, vs)]
    return pd.DataFrame(rows)


def test_ablation_hand_computed_wilcoxon():
    cases = [f"c{i}" for i in range(7)]
    k = np.array([1, -2, 3, 4, 5, 6, 7])
    sdm = _frame({"liver": list(0.5 + k / 64), "kidney": [0.25] * 7}, cases=cases)
    # the baseline has one more case that the SDM model lacks: it must not be paired
    base = _frame({"liver": [0.5] * 8, "kidney": [0.25] * 8}, cases=cases + ["extra"])
    result = ablation(sdm, base).set_index(["organ", "metric"])

    liver = result.loc[("liver", "dsc")]
    assert liver["n"] == 7
    assert liver["mean_difference"] == pytest.approx(24 / 7 / 64)
    assert liver["sdm_mean"] == pytest.approx(0.5 + 24 / 7 / 64) and liver["baseline_mean"] == 0.5
    # ranks of |d| are 1..7; W- = 2 (the rank of -2). Exact two-sided p: subsets of {1..7} with rank sum
    # <= 2 are {}, {1}, {2}: p = 2 * 3 / 2**7.
    assert liver["wilcoxon_statistic"] == 2.0
    assert liver["p_value"] == pytest.approx(6 / 128)
    assert liver["note"] == ""
    # NSD is DSC / 2 here: the same ranks, the same test
    assert result.loc[("liver", "nsd"), "p_value"] == pytest.approx(6 / 128)

    kidney = result.loc[("kidney", "dsc")]
    assert kidney["mean_difference"] == 0 and np.isnan(kidney["p_value"]) and np.isnan(kidney["wilcoxon_statistic"])
    assert "zero" in kidney["note"]

    # 'all' pairs each case's organ mean: differences k/128, same ranks
    everything = result.loc[("all", "dsc")]
    assert everything["n"] == 7
    assert everything["mean_difference"] == pytest.approx(24 / 7 / 128)
    assert everything["p_value"] == pytest.approx(6 / 128)


def test_ablation_too_few_pairs_and_fold_pairing():
    sdm = _frame({"liver": [0.9]}, cases=["a"], fold=1)
    base = pd.concat([_frame({"liver": [0.8]}, cases=["a"], fold=1), _frame({"liver": [0.1]}, cases=["a"], fold=2)])
    result = ablation(sdm, base).set_index(["organ", "metric"])
    row = result.loc[("liver", "dsc")]
    assert row["n"] == 1  # fold 2's case "a" is a different case
    assert row["mean_difference"] == pytest.approx(0.1)
    assert np.isnan(row["p_value"]) and "too few" in row["note"]

    empty = ablation(sdm, _frame({"liver": [0.8]}, cases=["b"]))
    assert empty.empty


# ----------------------------------------------------------------------------------------------------------
# Efficiency summary


def test_efficiency_summary(tmp_path):
    path = tmp_path / "efficiency.csv"
    pd.DataFrame({"case": ["a", "b", "c", "d"], "seconds": [1.0, 2.0, 4.0, 9.0], "device": "cpu",
                  "peak_rss_mib": [100.0, 300.0, 200.0, 250.0], "gpu_memory_max_mib": [np.nan] * 4,
                  "samples": [3, 4, 5, 6]}).to_csv(path, index=False)
    summary = efficiency_summary(path).set_index("quantity")
    assert list(summary.index) == ["seconds", "peak_rss_mib"]  # an empty memory column is left out
    assert summary.loc["seconds", ["cases", "mean", "median", "max"]].tolist() == [4, 4.0, 3.0, 9.0]
    assert summary.loc["peak_rss_mib", "max"] == 300.0

    (tmp_path / "bad.csv").write_text("case,time\na,1\n")
    with pytest.raises(NnsdmError, match="bad.csv: no 'seconds' column"):
        efficiency_summary(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------------------------------------
# Input errors (no report written)


def test_external_set_needs_pred_and_gt(tmp_path):
    with pytest.raises(NnsdmError, match="--pred: an external set needs both"):
        write_report(workspace=Workspace(tmp_path / "ws"), pred=tmp_path, progress=False)
    with pytest.raises(NnsdmError, match="--gt: an external set needs both"):
        write_report(workspace=Workspace(tmp_path / "ws"), gt=tmp_path, progress=False)
    assert not (tmp_path / "ws").exists()


def test_workspace_without_trained_model(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    with pytest.raises(NnsdmError, match="no planned dataset"):
        write_report(workspace=workspace, progress=False)
    (workspace.preprocessed / "Dataset001_Empty").mkdir(parents=True)
    (workspace.results / "Dataset001_Empty" / f"{SDM}" / "fold_0").mkdir(parents=True)  # no checkpoint
    with pytest.raises(NnsdmError, match=r"Dataset001_Empty: no trained model .*nnsdm train"):
        write_report(workspace=workspace, progress=False)
    assert not (workspace.root / "report").exists()


# ----------------------------------------------------------------------------------------------------------
# Full report of the tiny trained model


def _validation_cases(model: Path) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (model / "fold_0" / "validation").glob("*.nii.gz"))


@pytest.fixture(scope="module")
def report(tmp_path_factory, planned_workspace, trained_model):
    """(workspace copy, report folder, external folders) of one full report."""
    source, _ = planned_workspace
    root = tmp_path_factory.mktemp("report") / "ws"
    shutil.copytree(source.root, root, ignore=shutil.ignore_patterns("report"))
    workspace = Workspace(root)
    name = trained_model.parent.name
    results = workspace.results / name
    gt_dir = workspace.preprocessed / name / "gt_segmentations"
    for extra in results.iterdir():  # only the two models this test sets up
        if extra.name != SDM:
            shutil.rmtree(extra)

    # baseline: the SDM model's folder as sdm_weight 0, its first validation case predicted perfectly
    shutil.copytree(results / SDM, results / BASE)
    meta = json.loads((results / BASE / "nnsdm.json").read_text())
    (results / BASE / "nnsdm.json").write_text(json.dumps({**meta, "sdm_weight": 0.0}))
    cases = _validation_cases(results / SDM)
    shutil.copyfile(gt_dir / f"{cases[0]}.nii.gz", results / BASE / "fold_0" / "validation" / f"{cases[0]}.nii.gz")

    # external set: the SDM predictions with their ground truth, images and an efficiency table
    ext_pred, ext_gt = root.parent / "ext_pred", root.parent / "ext_gt"
    ext_gt.mkdir()
    shutil.copytree(results / SDM / "fold_0" / "validation", ext_pred)
    for case in cases:
        shutil.copyfile(gt_dir / f"{case}.nii.gz", ext_gt / f"{case}.nii.gz")
    pd.DataFrame({"case": cases, "seconds": [2.0 + i for i in range(len(cases))], "device": "cpu",
                  "peak_rss_mib": [500.0 + 10 * i for i in range(len(cases))]}).to_csv(ext_pred / "efficiency.csv", index=False)

    out = write_report(workspace=workspace, dataset=name, pred=ext_pred, gt=ext_gt, images=workspace.raw / name / "imagesTr",
                       progress=False)
    return workspace, out, ext_pred, ext_gt, cases, name


def _recomputed(pred_dir: Path, gt_dir: Path, cases: list[str]) -> pd.DataFrame:
    rows = [row for case in cases for row in evaluate_case(pred_dir / f"{case}.nii.gz", gt_dir / f"{case}.nii.gz")]
    return pd.DataFrame(rows)


def test_report_files(report):
    workspace, out, *_ = report
    assert out == workspace.root / "report"
    for name in ("report.md", "report.html", "cv_metrics.csv", "cv_table.csv", "ablation.csv", "model_statistics.csv",
                 "external_metrics.csv", "external_table.csv", "external_efficiency.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    figures = {p.name for p in (out / "figures").glob("*.png")}
    for model in (SDM, BASE):
        for kind in ("cv_violin", "cv_examples"):
            assert f"{kind}_{model}.png" in figures
        assert f"curves_{model}_fold_0.png" in figures
    assert {"external_violin.png", "external_examples.png"} <= figures
    import matplotlib.image

    for name in figures:
        pixels = matplotlib.image.imread(out / "figures" / name)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400 and pixels[..., :3].std() > 0.05, name
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".report")]  # no temporary left


def test_cv_metrics_and_table(report):
    workspace, out, _, _, cases, name = report
    gt_dir = workspace.preprocessed / name / "gt_segmentations"
    metrics = pd.read_csv(out / "cv_metrics.csv")
    assert list(metrics.columns) == ["model", "fold", "case", "label", "organ", "dsc", "nsd"]
    assert len(metrics) == 2 * len(cases) * len(FLARE21_LABELS)

    expected = _recomputed(workspace.results / name / SDM / "fold_0" / "validation", gt_dir, cases)
    got = metrics[metrics["model"] == SDM].sort_values(["case", "label"]).reset_index(drop=True)
    np.testing.assert_allclose(got[["dsc", "nsd"]], expected.sort_values(["case", "label"])[["dsc", "nsd"]], rtol=1e-12)

    table = pd.read_csv(out / "cv_table.csv", dtype={"fold": str}).set_index(["model", "fold"])
    assert set(table.index) == {(SDM, "0"), (SDM, "average"), (BASE, "0"), (BASE, "average")}
    fold0 = table.loc[(SDM, "0")]
    assert fold0["cases"] == len(cases)
    for organ in FLARE21_LABELS.values():
        values = expected.loc[expected["organ"] == organ, "dsc"]
        assert fold0[f"{organ}_dsc_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert fold0[f"{organ}_dsc_std"] == pytest.approx(np.std(values), abs=1e-12)
        assert fold0[f"{organ}_nsd_mean"] == pytest.approx(expected.loc[expected["organ"] == organ, "nsd"].mean(), abs=1e-12)
    case_means = expected.groupby("case")["dsc"].mean()
    assert fold0["all_dsc_mean"] == pytest.approx(case_means.mean(), abs=1e-12)
    # one fold: the average row over all cross-validation cases equals it
    pd.testing.assert_series_equal(table.loc[(SDM, "average")], fold0, check_names=False)
    # the baseline's first case is its ground truth
    base_first = metrics[(metrics["model"] == BASE) & (metrics["case"] == cases[0])]
    assert (base_first["dsc"] == 1).all() and (base_first["nsd"] == 1).all()

    md = (out / "report.md").read_text()
    assert "| Fold | Cases | Liver DSC | Liver NSD |" in md
    assert f"| 0 | {len(cases)} | {fold0['liver_dsc_mean']:.4f} ± {fold0['liver_dsc_std']:.4f} |" in md
    worst = case_means.idxmin()
    assert f"worst (fold 0): {worst}, {case_means.min():.4f}" in md or f"worst / median (fold 0): {worst}" in md


def test_ablation_in_report(report):
    workspace, out, _, _, cases, name = report
    gt_dir = workspace.preprocessed / name / "gt_segmentations"
    sdm = _recomputed(workspace.results / name / SDM / "fold_0" / "validation", gt_dir, cases).set_index(["case", "organ"])
    table = pd.read_csv(out / "ablation.csv", keep_default_na=False, na_values=[""])
    assert (table["sdm_model"] == SDM).all() and (table["baseline_model"] == BASE).all()
    table = table.set_index(["organ", "metric"])
    for organ in FLARE21_LABELS.values():
        for m in ("dsc", "nsd"):
            a = np.array([sdm.loc[(case, organ), m] for case in cases])
            b = np.array([1.0] + [sdm.loc[(case, organ), m] for case in cases[1:]])  # baseline: case 0 perfect
            row = table.loc[(organ, m)]
            assert row["n"] == len(cases)
            assert row["mean_difference"] == pytest.approx(np.mean(a - b), abs=1e-12)
            assert row["mean_difference"] < 0
            assert row["p_value"] == pytest.approx(wilcoxon(a, b).pvalue)
    md = (out / "report.md").read_text()
    assert "## Ablation: SDM loss vs baseline" in md
    assert "| Organ | Metric | Pairs | SDM mean | Baseline mean | Difference (SDM − baseline) | Wilcoxon p | Note |" in md


def test_external_set_and_efficiency(report):
    workspace, out, ext_pred, ext_gt, cases, _ = report
    expected = _recomputed(ext_pred, ext_gt, cases)
    metrics = pd.read_csv(out / "external_metrics.csv")
    assert list(metrics.columns) == ["case", "label", "organ", "dsc", "nsd"]
    np.testing.assert_allclose(metrics.sort_values(["case", "label"])[["dsc", "nsd"]],
                               expected.sort_values(["case", "label"])[["dsc", "nsd"]], rtol=1e-12)
    table = pd.read_csv(out / "external_table.csv").iloc[0]
    assert table["set"] == "external" and table["cases"] == len(cases)
    for organ in FLARE21_LABELS.values():
        assert table[f"{organ}_nsd_mean"] == pytest.approx(expected.loc[expected["organ"] == organ, "nsd"].mean(), abs=1e-12)
    efficiency = pd.read_csv(out / "external_efficiency.csv").set_index("quantity")
    seconds = [2.0 + i for i in range(len(cases))]
    assert efficiency.loc["seconds", "mean"] == pytest.approx(np.mean(seconds))
    assert efficiency.loc["seconds", "max"] == max(seconds)
    assert efficiency.loc["peak_rss_mib", "max"] == 500.0 + 10 * (len(cases) - 1)
    assert "Time per case (s)" in (out / "report.md").read_text()


def test_model_statistics_table(report):
    from nnsdm.export import model_statistics

    workspace, out, *_ = report
    stats = pd.read_csv(out / "model_statistics.csv").set_index("model")
    folder = workspace.results / report[-1] / SDM
    expected = model_statistics(folder)
    assert stats.loc[SDM, "parameters"] == expected["parameters"]
    assert stats.loc[SDM, "flops_with_sdm_head"] == expected["flops_with_sdm_head"]
    assert stats.loc["FLARE21 paper", "parameters"] == PAPER_PARAMETERS == 41_268_192
    assert stats.loc["FLARE21 paper", "flops"] == PAPER_FLOPS == 590_861_472_000
    assert "41,268,192" in (out / "report.md").read_text()


def test_html_is_self_contained(report):
    _, out, *_ = report
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    figures = sorted((out / "figures").glob("*.png"))
    assert len(sources) == len(figures)
    embedded = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert sorted(embedded) == sorted(p.read_bytes() for p in figures)
    # every figure the Markdown links exists
    for link in re.findall(r"\]\((figures/[^)]+)\)", (out / "report.md").read_text()):
        assert (out / link).is_file()


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_html_opens_in_headless_browser(report, tmp_path):
    _, out, *_ = report
    # the page itself has no script: a copy gets one that records, once loaded, whether every image decoded
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             "document.body.dataset.images = imgs.length;"
             "document.body.dataset.decoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length; });</script>")
    page = tmp_path / "page.html"
    page.write_text((out / "report.html").read_text().replace("</body>", probe + "</body>"))
    result = _chromium(["--virtual-time-budget=10000", "--dump-dom", page.as_uri()], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    n_figures = len(list((out / "figures").glob("*.png")))
    assert f'data-images="{n_figures}"' in dom and f'data-decoded="{n_figures}"' in dom
    assert dom.count("<table") >= 6 and "Liver DSC" in dom and "Ablation: SDM loss vs baseline" in dom

    shot = tmp_path / "shot.png"
    result = _chromium(["--window-size=1400,3000", f"--screenshot={shot}", (out / "report.html").as_uri()], tmp_path)
    assert result.returncode == 0 and shot.is_file()
    import matplotlib.image

    assert matplotlib.image.imread(shot)[..., :3].std() > 0.05  # not a blank page


def test_report_is_replaced_and_foreign_folder_refused(report, tmp_path):
    workspace, _, ext_pred, ext_gt, _, name = report
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(NnsdmError, match="mine: folder exists and is not an nnsdm report"):
        write_report(workspace=workspace, dataset=name, out=mine, progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"

    old = tmp_path / "old"
    shutil.copytree(ext_pred, old / "pred")
    (old / "report.md").write_text("# an old report\n")
    with pytest.raises(NnsdmError, match="pred: input lies inside the report folder"):
        write_report(workspace=workspace, dataset=name, out=old, pred=old / "pred", gt=ext_gt, progress=False)
    assert (old / "pred" / "efficiency.csv").is_file()

    shutil.rmtree(old / "pred")
    (old / "stale.csv").write_text("x\n")
    assert write_report(workspace=workspace, dataset=name, out=old, progress=False) == old
    assert not (old / "stale.csv").exists() and not (old / "external_table.csv").exists()
    assert (old / "cv_table.csv").is_file() and (old / "report.md").read_text().startswith("# nnsdm report")


def test_figures_use_matplotlibs_default_style_after_nnunet_changed_it(report, tmp_path, monkeypatch):
    """nnU-Net's training plot sets seaborn with font scale 2.5 for the whole process (as in `nnsdm demo`)."""
    import matplotlib
    from matplotlib.figure import Figure

    workspace, *_, name = report
    seen = []
    original = Figure.savefig

    def recording_savefig(self, *args, **kwargs):
        seen.append(matplotlib.rcParams["font.size"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    with matplotlib.rc_context({"font.size": 30.0}):
        write_report(workspace=workspace, dataset=name, out=tmp_path / "styled", progress=False)
        assert matplotlib.rcParams["font.size"] == 30.0  # the caller's style is left alone
    assert seen and set(seen) == {matplotlib.rcParamsDefault["font.size"]}

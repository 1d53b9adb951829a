"""``nnsdm demo`` end to end on a tiny budget, through the command line as ``make demo`` runs it.

One real run (tiny phantoms, one epoch of two iterations per model, with the ablation) feeds most tests:
summary.json, the model folder that ``nnsdm predict`` accepts, the report, the held-out comparison and
the progress lines. The refusals need no pipeline run.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnsdm.cli import main

ORGANS = ["liver", "kidney", "spleen", "pancreas"]
TINY = ["--train-cases", "4", "--test-cases", "3", "--shape", "24x64x64", "--spacing", "8x5x5", "--epochs", "1",
        "--iterations", "2", "--seed", "3", "--workers", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo with the ablation on a tiny budget: (output folder, summary.json, stdout, wall seconds)."""
    out = tmp_path_factory.mktemp("demo") / "nnsdm_demo"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        t0 = time.perf_counter()
        code = main(["demo", "--out", str(out), "--ablation", *TINY])
        seconds = time.perf_counter() - t0
    assert code == 0, stdout.getvalue()[-2000:]
    return out, json.loads((out / "summary.json").read_text()), stdout.getvalue(), seconds


def test_summary_holds_held_out_scores_per_organ(demo_run):
    out, summary, _, seconds = demo_run
    for key in ("dsc", "nsd"):
        assert sorted(summary[key]) == sorted(ORGANS)
        assert all(0.0 <= v <= 1.0 for v in summary[key].values())
    # every held-out case has all four organs, so the mean over cases of organ means is the mean over organs
    assert summary["mean_dsc"] == pytest.approx(np.mean(list(summary["dsc"].values())))
    assert summary["mean_nsd"] == pytest.approx(np.mean(list(summary["nsd"].values())))
    assert 0 < summary["seconds"] <= seconds + 0.05  # summary.json rounds to 0.1 s
    metrics = pd.read_csv(out / "evaluation" / "metrics.csv")
    assert sorted(metrics["case"].unique()) == ["test_000", "test_001", "test_002"]
    for organ in ORGANS:
        assert summary["dsc"][organ] == pytest.approx(metrics.loc[metrics["organ"] == organ, "dsc"].mean())
    assert summary["config"]["fold"] == "all" and summary["config"]["epochs"] == 1
    assert summary["config"]["resample"] == "probabilities"
    from nnsdm.device import cpu_bf16_supported

    assert summary["config"]["cpu_precision"] == ("bf16" if cpu_bf16_supported() else "fp32")  # what the trainer used
    assert set(summary["stages"]) >= {"data", "plan", "train SDM model", "predict SDM model", "report"}


def test_held_out_set_is_separate_from_the_training_set(demo_run):
    out, _, _, _ = demo_run
    train = sorted(p.name for p in (out / "data" / "phantom_train" / "imagesTr").iterdir())
    test = sorted(p.name for p in (out / "data" / "test" / "imagesTs").iterdir())
    assert train == [f"phantom_{i:03d}_0000.nii.gz" for i in range(4)]
    assert test == [f"test_{i:03d}_0000.nii.gz" for i in range(3)]
    seeds_train = {v["seed"] for v in json.loads((out / "data" / "phantom_train" / "phantom_cases.json").read_text()).values()}
    seeds_test = {v["seed"] for v in json.loads((out / "data" / "test" / "phantom_cases.json").read_text()).values()}
    assert seeds_train.isdisjoint(seeds_test)


def test_model_path_is_accepted_by_predict(demo_run, tmp_path):
    import SimpleITK as sitk

    from nnsdm.inference import predict

    out, summary, _, _ = demo_run
    model = Path(summary["model"])
    assert model.is_absolute() and model.name == "nnsdmTrainer__nnUNetPlans__3d_fullres"
    image = out / "data" / "test" / "imagesTs" / "test_001_0000.nii.gz"
    written = predict(input=image, output=tmp_path / "pred", model=model, tta=False, device="cpu",
                      resample=summary["config"]["resample"], progress=False)
    assert [p.name for p in written] == ["test_001.nii.gz"]
    pred, ref = sitk.ReadImage(str(written[0])), sitk.ReadImage(str(image))
    assert pred.GetSize() == ref.GetSize() and pred.GetDirection() == ref.GetDirection()
    # the demo's own prediction of that case came from the same model and settings
    demo_pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions" / "test_001.nii.gz")))
    assert np.array_equal(sitk.GetArrayFromImage(pred), demo_pred)


def test_report_has_the_held_out_set_as_external_set(demo_run):
    out, summary, stdout, _ = demo_run
    report = out / "report"
    assert summary["report"] == str(report / "report.html")
    for name in ("report.html", "report.md", "external_metrics.csv", "external_table.csv", "model_statistics.csv"):
        assert (report / name).is_file(), name
    assert "External set" in (report / "report.md").read_text()
    assert any(p.name.startswith("curves_nnsdmTrainer__") for p in (report / "figures").iterdir())
    assert stdout.strip().splitlines()[-1] == f"report: {report / 'report.html'}"


def test_ablation_compares_both_models_on_the_same_cases(demo_run):
    out, summary, _, _ = demo_run
    baseline = Path(summary["baseline"]["model"])
    assert baseline.name == "nnsdmTrainer_sdm0__nnUNetPlans__3d_fullres" and (baseline / "fold_all").is_dir()
    assert sorted(summary["baseline"]["dsc"]) == sorted(ORGANS)
    table = pd.read_csv(out / "ablation.csv")
    assert list(table["organ"].unique()) == [*ORGANS, "all"] and set(table["metric"]) == {"dsc", "nsd"}
    assert (table["n"] == 3).all()
    row = table[(table["organ"] == "liver") & (table["metric"] == "dsc")].iloc[0]
    assert row["sdm_mean"] == pytest.approx(summary["dsc"]["liver"])
    assert row["baseline_mean"] == pytest.approx(summary["baseline"]["dsc"]["liver"])
    assert row["mean_difference"] == pytest.approx(row["sdm_mean"] - row["baseline_mean"])
    assert len(summary["ablation"]) == len(table)


def test_progress_shows_each_stage_with_its_time(demo_run):
    _, _, stdout, _ = demo_run
    lines = stdout.splitlines()
    starts = [line for line in lines if line.startswith("[")]
    assert [line.split("]")[0] + "]" for line in starts] == [f"[{i}/10]" for i in range(1, 11)]
    assert sum(" done in " in line for line in lines) == 10
    assert any(line.strip().startswith("epoch 1/1") and "pseudo Dice liver" in line for line in lines)


def test_existing_folder_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out), *TINY]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"nnsdm: error: {out}: folder exists and is not empty (use --overwrite to replace a previous "
                           "demo, or choose another --out)")
    # --overwrite replaces only a previous demo's folder, never someone else's
    assert main(["demo", "--out", str(out), "--overwrite", *TINY]) == 1
    assert capsys.readouterr().err.strip() == f"nnsdm: error: {out}: not an nnsdm demo folder (no .nnsdm-demo); refusing to replace it"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_bad_budget_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "0"]) == 1
    assert capsys.readouterr().err.strip() == "nnsdm: error: --epochs 0: must be a positive whole number"
    assert not out.exists()

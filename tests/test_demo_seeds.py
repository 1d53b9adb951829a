"""``nnsdm demo --ablation --seeds K`` on a tiny budget: both models per seed, mean +- sd over seeds, paired test."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest

from nnsdm.cli import main

ORGANS = ["liver", "kidney", "spleen", "pancreas"]
TINY = ["--train-cases", "4", "--test-cases", "2", "--shape", "24x64x64", "--spacing", "8x5x5", "--epochs", "1",
        "--iterations", "2", "--seed", "3", "--workers", "1", "--device", "cpu"]


@pytest.mark.slow
def test_two_seeds_give_mean_and_sd_over_seeds_and_a_test_over_cases_and_seeds(tmp_path):
    out = tmp_path / "demo"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--out", str(out), "--ablation", "--seeds", "2", *TINY])
    assert code == 0, stdout.getvalue()[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["seeds"] == 2
    starts = [line.split("]")[0] + "]" for line in stdout.getvalue().splitlines() if line.startswith("[")]
    assert starts == [f"[{i}/16]" for i in range(1, 17)]
    # the extra seed's predictions and metrics, on the same held-out cases
    for name in ("evaluation", "evaluation_baseline"):
        first = pd.read_csv(out / name / "metrics.csv")
        second = pd.read_csv(out / "seeds" / "seed_4" / name / "metrics.csv")
        assert list(first["case"]) == list(second["case"]) == ["test_000"] * 4 + ["test_001"] * 4
    seeds = pd.read_csv(out / "ablation_seeds.csv")
    assert list(seeds["organ"].unique()) == [*ORGANS, "all"] and (seeds["seeds"] == 2).all()
    row = seeds[(seeds["organ"] == "liver") & (seeds["metric"] == "dsc")].iloc[0]
    per_seed = [pd.read_csv(f / "evaluation" / "metrics.csv").query("organ == 'liver'")["dsc"].mean()
                for f in (out, out / "seeds" / "seed_4")]
    assert [float(v) for v in row["sdm_per_seed"].split(";")] == pytest.approx(per_seed, abs=1e-4)
    assert row["sdm_mean"] == pytest.approx(sum(per_seed) / 2)
    assert len(summary["ablation_seeds"]) == len(seeds)
    paired = pd.read_csv(out / "ablation.csv")
    assert (paired["n"] == 4).all()  # 2 cases x 2 seeds
    # the SDM model's predictions carry quality scores
    qc = pd.read_csv(out / "predictions" / "qc.csv")
    assert len(qc) == 8 and set(qc["organ"]) == set(ORGANS)


def test_seeds_without_ablation_is_refused(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--seeds", "2", *TINY]) == 1
    assert capsys.readouterr().err.strip() == "nnsdm: error: --seeds 2: repeats the ablation; use it with --ablation"
    assert not (tmp_path / "d").exists()

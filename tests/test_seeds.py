"""The multi-seed ablation's tables on constructed metrics: mean +- sd over seeds and the paired test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnsdm.report.seeds import paired_over_seeds, seed_summary

ORGANS = ["liver", "pancreas"]


def _metrics(seed: int, shift: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"case": f"c{i}", "label": k + 1, "organ": o, "dsc": 0.8 + 0.01 * i + shift + 0.005 * rng.standard_normal(),
             "nsd": 0.6 + 0.02 * i + shift} for i in range(5) for k, o in enumerate(ORGANS)]
    return pd.DataFrame(rows)


def test_seed_summary_mean_and_sd_over_seeds():
    sdm = [_metrics(s, 0.02 * s) for s in range(3)]
    base = [_metrics(10 + s, 0.0) for s in range(3)]
    table = seed_summary(sdm, base)
    assert list(table["organ"].unique()) == [*ORGANS, "all"]
    row = table[(table["organ"] == "pancreas") & (table["metric"] == "nsd")].iloc[0]
    per_seed = [0.6 + 0.04 + 0.02 * s for s in range(3)]  # the mean over cases of 0.6 + 0.02 i is 0.64
    assert row["seeds"] == 3
    assert row["sdm_mean"] == pytest.approx(np.mean(per_seed))
    assert row["sdm_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    assert row["baseline_sd"] == pytest.approx(0.0, abs=1e-12)
    assert row["difference_mean"] == pytest.approx(0.02)
    assert [float(v) for v in row["sdm_per_seed"].split(";")] == pytest.approx(per_seed, abs=1e-4)
    one = seed_summary(sdm[:1], base[:1])
    assert one["sdm_sd"].isna().all()


def test_paired_test_pairs_cases_within_each_seed():
    sdm = [_metrics(s, 0.03) for s in range(3)]
    base = [_metrics(s, 0.0) for s in range(3)]
    table = paired_over_seeds(sdm, base)
    row = table[(table["organ"] == "liver") & (table["metric"] == "dsc")].iloc[0]
    assert row["n"] == 15  # 3 seeds x 5 cases
    assert row["mean_difference"] == pytest.approx(0.03)
    assert row["p_value"] < 0.001  # every pair favours the SDM model
    with pytest.raises(ValueError):
        seed_summary(sdm, base[:2])

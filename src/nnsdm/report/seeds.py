"""The ablation over several training seeds: SDM model vs baseline, per organ mean +- sd over seeds, paired test.

One training run per model says little when runs differ by up to 0.04 DSC per organ: ``nnsdm demo
--ablation --seeds K`` trains both models K times (same data, same budget, training seeds 0..K-1) and
scores each on the same held-out cases. Here:

* :func:`seed_summary`: per organ (and ``all``, each case's organ mean) and metric, the mean over cases
  for each seed, then their mean and sample standard deviation over seeds, for both models;
* :func:`paired_over_seeds`: the paired Wilcoxon test of :func:`nnsdm.report.tables.ablation` over all
  (seed, case) pairs, each case scored by both models trained with the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from nnsdm.report.tables import METRICS, ablation

__all__ = ["seed_summary", "paired_over_seeds", "stack_seeds"]


def stack_seeds(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per-seed metric frames (case, organ, metrics) as one frame with a ``fold`` column holding the seed index."""
    if not frames:
        raise ValueError("no seeds")
    return pd.concat([frame.assign(fold=i) for i, frame in enumerate(frames)], ignore_index=True)


def _per_seed_means(stacked: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Rows (seed, organ) with the mean over cases of each metric; organ ``all`` from each case's organ mean."""
    organs = stacked.groupby(["fold", "organ"], sort=False)[list(metrics)].mean().reset_index()
    cases = stacked.groupby(["fold", "case"], sort=False)[list(metrics)].mean().reset_index()
    overall = cases.groupby("fold", sort=False)[list(metrics)].mean().reset_index().assign(organ="all")
    return pd.concat([organs, overall], ignore_index=True)


def seed_summary(sdm: Sequence[pd.DataFrame], baseline: Sequence[pd.DataFrame], *,
                 metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per organ and metric: mean and sd over seeds of each model's held-out mean, and the per-seed values.

    ``sdm[i]`` and ``baseline[i]``: metrics.csv frames of the two models trained with seed ``i``. The sd is
    the sample standard deviation (ddof 1; NaN for one seed). Columns: organ, metric, seeds, sdm_mean,
    sdm_sd, baseline_mean, baseline_sd, difference_mean, difference_sd, sdm_per_seed, baseline_per_seed
    (values joined with ``;``).
    """
    if len(sdm) != len(baseline):
        raise ValueError(f"{len(sdm)} SDM runs but {len(baseline)} baseline runs")
    a = _per_seed_means(stack_seeds(sdm), metrics)
    b = _per_seed_means(stack_seeds(baseline), metrics)
    both = a.merge(b, on=["fold", "organ"], suffixes=("_sdm", "_baseline"), validate="one_to_one")
    rows = []
    for organ in dict.fromkeys(both["organ"]):
        part = both[both["organ"] == organ].sort_values("fold")
        for m in metrics:
            x, y = part[f"{m}_sdm"].to_numpy(float), part[f"{m}_baseline"].to_numpy(float)
            sd = (lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan)
            rows.append({"organ": organ, "metric": m, "seeds": len(x), "sdm_mean": float(x.mean()), "sdm_sd": sd(x),
                         "baseline_mean": float(y.mean()), "baseline_sd": sd(y),
                         "difference_mean": float((x - y).mean()), "difference_sd": sd(x - y),
                         "sdm_per_seed": ";".join(f"{v:.4f}" for v in x),
                         "baseline_per_seed": ";".join(f"{v:.4f}" for v in y)})
    return pd.DataFrame(rows)


def paired_over_seeds(sdm: Sequence[pd.DataFrame], baseline: Sequence[pd.DataFrame], *,
                      metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """:func:`nnsdm.report.tables.ablation` over all (seed, case) pairs: each seed's two models on the same case."""
    return ablation(stack_seeds(sdm), stack_seeds(baseline), metrics=metrics)

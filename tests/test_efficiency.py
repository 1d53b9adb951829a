"""Efficiency records of nnsdm predict: the FLARE21 GPU-memory statistic, efficiency.csv, the case monitor."""

from __future__ import annotations

import csv

import numpy as np

from nnsdm.inference import flare21_memory
from nnsdm.inference.efficiency import COLUMNS, CaseEfficiency, update_efficiency_csv


def test_flare21_memory_ignores_values_seen_in_at_most_2_percent_of_samples():
    samples = [1000] * 60 + [3000] * 35 + [9000] * 2 + [9500] * 3  # 100 samples
    # 9500 is seen in 3% of the samples, 9000 in exactly 2% (not more): the answer is 9500
    assert flare21_memory(samples) == 9500
    assert flare21_memory(samples[:-3] + [1000] * 3) == 3000  # without it the 2% spike is ignored
    assert flare21_memory([]) is None
    assert flare21_memory(list(range(100))) is None  # nothing repeats: no plateau to report


def test_efficiency_csv_adds_and_refreshes_rows(tmp_path):
    path = tmp_path / "efficiency.csv"
    update_efficiency_csv(path, [CaseEfficiency("b", 2.0, "cpu", 10.0), CaseEfficiency("a", 1.0, "cpu", 20.0)])
    update_efficiency_csv(path, [CaseEfficiency("b", 5.0, "cuda:0", 11.0, 7.0, 300, 310, 12)])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert [r["case"] for r in rows] == ["a", "b"]
    assert rows[1]["seconds"] == "5.0" and rows[1]["gpu_memory_flare21_mib"] == "300"
    assert rows[0]["torch_peak_mib"] == ""
    assert not [p for p in tmp_path.iterdir() if p.name != "efficiency.csv"]  # no temporary left


def test_case_monitor_sees_the_peak_resident_memory_of_the_case():
    import time

    import torch

    from nnsdm.inference.efficiency import CaseMonitor

    with CaseMonitor("idle", torch.device("cpu")) as idle:
        time.sleep(0.25)
    with CaseMonitor("busy", torch.device("cpu")) as busy:
        block = np.ones(64 * 2**20, np.uint16)  # 128 MiB, touched
        time.sleep(0.25)
        del block
        time.sleep(0.15)  # freed again before the case ends: only the sampling thread saw it
    assert busy.result.case == "busy" and busy.result.device == "cpu" and busy.result.seconds >= 0.4
    assert busy.result.samples >= 3
    assert busy.result.peak_rss_mib - idle.result.peak_rss_mib > 100
    assert busy.result.torch_peak_mib is None and busy.result.gpu_memory_flare21_mib is None

"""Fuzzing: damaged NIfTI, DICOM, checkpoint, plans.json and dataset.json end in a result or one line, never a traceback or hang."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SEEDS = 8  # per damaged file; fixed, so every run tries the same damage


def test_damaged_files_end_in_a_result_or_one_line(trained_model, phantom_dataset, tmp_path):
    pytest.importorskip("pydicom", reason="pydicom writes the DICOM series that is damaged (pip install pydicom)")
    from helpers_dicom import write_series

    series = write_series(tmp_path / "phantom_series")
    work = tmp_path / "work"
    work.mkdir()
    driver = Path(__file__).with_name("helpers_fuzz.py")
    result = subprocess.run([sys.executable, str(driver), str(trained_model), str(phantom_dataset / "imagesTr" / "phantom_000_0000.nii.gz"),
                             str(series), str(work), str(SEEDS)], capture_output=True, text=True, timeout=1200)
    runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0 and len(runs) == 6 * SEEDS, (result.returncode, result.stderr[-3000:], runs[-1:] if runs else None)
    bad = [r for r in runs if r["outcome"] not in ("ok", "refused")]
    assert not bad, json.dumps(bad, indent=1)[:5000]
    counts = Counter((r["target"], r["outcome"]) for r in runs)
    print("fuzz outcomes:", dict(counts))

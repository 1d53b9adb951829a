"""What keeps CPU training fast on any 2-core CPU: precision by instruction set, thread split, demo budget."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nnsdm.budget import choose_epochs, measure_step_seconds
from nnsdm.device import cpu_training_threads
from nnsdm.training import build_trainer


@pytest.mark.parametrize("cap", [{"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}])
def test_auto_precision_is_fp32_under_an_instruction_set_cap(cap):
    """Under PyTorch's or oneDNN's AVX2 cap bf16 would be emulated, as on an AVX2-only CPU: auto must pick fp32."""
    code = "from nnsdm.device import resolve_cpu_precision as r; print(r('auto'), r('bf16'))"
    env = {**os.environ, **cap}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["fp32", "bf16"]  # an explicit choice is still honoured


def test_training_threads_are_the_cores_the_workers_leave(monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    assert cpu_training_threads(2) == 1 and cpu_training_threads(8) == 7
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    assert cpu_training_threads(2) == 2
    monkeypatch.setenv("nnUNet_n_proc_DA", "4")
    assert cpu_training_threads(2) == 1


def test_budget_takes_the_epochs_that_fit_between_floor_and_full_budget():
    fast = choose_epochs(0.25, iterations=100, val_iterations=3, time_limit_s=600, min_epochs=12, max_epochs=18)
    assert fast.epochs == 18 and fast.estimated_epoch_seconds == pytest.approx(100 * 0.25 + 0.25 + 2.0)
    middle = choose_epochs(0.4, iterations=100, val_iterations=3, time_limit_s=600, min_epochs=12, max_epochs=18)
    assert middle.epochs == 600 // (40 + 0.4 + 2) == 14
    slow = choose_epochs(2.0, iterations=100, val_iterations=3, time_limit_s=600, min_epochs=12, max_epochs=18)
    assert slow.epochs == 12 and slow.estimated_training_seconds > 600  # never below the floor
    assert set(slow.as_dict()) >= {"epochs", "step_seconds", "time_limit_seconds", "min_epochs", "max_epochs"}


def test_step_is_measured_on_the_real_trainer_with_its_threads(planned_workspace, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    threads = torch.get_num_threads()
    trainer = build_trainer(workspace=planned_workspace[0], fold=0, epochs=1, iterations_per_epoch=1, device="cpu")
    trainer.initialize()
    try:
        assert torch.get_num_threads() == cpu_training_threads()
        seconds = measure_step_seconds(trainer, repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert 0 < seconds < 60
    assert trainer.optimizer.state  # a real optimiser step ran


def test_demo_without_epochs_times_the_step_and_records_its_choice(planned_workspace, tmp_path, monkeypatch):
    from nnsdm import demo

    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    workspace = planned_workspace[0]
    logs = set(workspace.results.rglob("training_log_*"))
    settings = demo._settings(out=tmp_path, ablation=False, train_cases=4, test_cases=1, seed=0, shape=(24, 64, 64),
                              spacing=(8.0, 5.0, 5.0), epochs=None, seeds=1, iterations=2, learning_rate=3e-3, tta=False,
                              device="cpu", workers=1, processes=None, progress=False)
    chosen, budget = demo._choose_budget(settings, demo._Stages(1, False), workspace)
    assert chosen.epochs == budget["epochs"] == demo.DEFAULTS["epochs"]  # two iterations per epoch fit easily
    assert budget["min_epochs"] == demo.MIN_EPOCHS and budget["estimated_training_seconds"] > 0
    assert budget["step_seconds"] > 0 and budget["time_limit_seconds"] == demo.TRAIN_TIME_LIMIT_S
    assert set(workspace.results.rglob("training_log_*")) == logs  # the measurement leaves no training log behind
    given, none = demo._choose_budget(demo._settings(**{**settings.__dict__, "epochs": 3}), demo._Stages(1, False), workspace)
    assert given.epochs == 3 and none is None

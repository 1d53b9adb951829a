"""What keeps CPU training fast on any 2-core CPU: precision by instruction set, threads beside the workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from nnsdm.device import WORKER_NICENESS, cpu_training_threads, worker_processes
from nnsdm.training import build_trainer


@pytest.mark.parametrize("cap", [{"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}])
def test_auto_precision_is_fp32_under_an_instruction_set_cap(cap):
    """Under PyTorch's or oneDNN's AVX2 cap bf16 would be emulated, as on an AVX2-only CPU: auto must pick fp32."""
    code = "from nnsdm.device import resolve_cpu_precision as r; print(r('auto'), r('bf16'))"
    env = {**os.environ, **cap}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["fp32", "bf16"]  # an explicit choice is still honoured


def test_training_threads_every_core_for_fp32_with_passive_waits_else_the_cores_the_workers_leave(monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    assert cpu_training_threads(2, bf16=False, passive_wait=True) == 2
    assert cpu_training_threads(8, bf16=False, passive_wait=True) == 8
    assert cpu_training_threads(2, bf16=True, passive_wait=True) == 1  # a short step: the worker keeps its core
    assert cpu_training_threads(2, bf16=False, passive_wait=False) == 1  # spinning threads would take the worker's core
    assert cpu_training_threads(8, bf16=True, passive_wait=False) == 7
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    assert cpu_training_threads(2, bf16=True, passive_wait=False) == 2
    monkeypatch.setenv("nnUNet_n_proc_DA", "4")
    assert cpu_training_threads(2, bf16=True, passive_wait=False) == 1


def test_importing_nnsdm_before_torch_makes_openmp_wait_passively_unless_the_user_chose():
    code = "import os, nnsdm, torch; print(os.environ['OMP_WAIT_POLICY'], nnsdm.OMP_PASSIVE_WAIT)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = lambda env, code=code: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                                check=True).stdout.split()
    assert run(env) == ["PASSIVE", "True"]
    assert run({**env, "OMP_WAIT_POLICY": "active"}) == ["active", "False"]
    assert run(env, "import os, torch, nnsdm; print(os.environ.get('OMP_WAIT_POLICY'), nnsdm.OMP_PASSIVE_WAIT)") == ["None", "False"]


def test_trainer_on_a_cpu_trains_with_the_training_threads(planned_workspace, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    threads = torch.get_num_threads()
    trainer = build_trainer(workspace=planned_workspace[0], fold=0, epochs=1, iterations_per_epoch=1, device="cpu")
    try:
        torch.set_num_threads(3)
        trainer.initialize()
        assert torch.get_num_threads() == cpu_training_threads(bf16=trainer.cpu_precision_used == "bf16")
        assert trainer._threads_before == 3  # given back when training ends
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_training_threads_count_the_cores_this_process_may_use_not_the_machines():
    """A SLURM job or taskset gets some of a node's cores: more threads than those would only compete."""
    code = "from nnsdm.device import cpu_training_threads as t; print(t(bf16=False, passive_wait=True))"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1"]


def test_cpu_training_runs_its_augmentation_workers_at_the_lowest_priority(planned_workspace, monkeypatch):
    """The step's threads keep their cores; the workers fill the gaps (benchmarks/train_step.py)."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    trainer = build_trainer(workspace=planned_workspace[0], fold=0, epochs=1, iterations_per_epoch=1, device="cpu")
    threads = torch.get_num_threads()
    try:
        trainer.on_train_start()
        workers = [p for loader in (trainer.dataloader_train, trainer.dataloader_val) for p in worker_processes(loader)]
        assert len(workers) == 2 and all(p.is_alive() for p in workers)
        assert [os.getpriority(os.PRIO_PROCESS, p.pid) for p in workers] == [WORKER_NICENESS] * 2 == [19] * 2
        if hasattr(os, "sched_getscheduler"):
            assert {os.sched_getscheduler(p.pid) for p in workers} == {os.SCHED_IDLE}
            assert os.sched_getscheduler(0) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, 0) < 19  # the training process itself keeps its priority
        batch = next(trainer.dataloader_train)  # the idle-class worker still delivers
        assert len(batch["target"]) > 0
    finally:
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            loader._finish()
        torch.set_num_threads(threads)

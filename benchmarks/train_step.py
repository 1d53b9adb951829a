"""Seconds per training iteration: nnsdm's SDM trainer vs the same trainer without SDM and vs nnU-Net's.

Three trainers run side by side in one process on the same planned phantom dataset, each with nnU-Net's
augmentation workers (the SDM targets are computed there): nnU-Net's own ``nnUNetTrainer``, nnsdm's
trainer with ``sdm_weight 0`` (nnU-Net's network and loss, with nnsdm's CPU fast path) and nnsdm's SDM
trainer. SDM vs ``sdm_weight 0`` is the cost of the SDM (head, targets, loss); SDM vs nnU-Net is what a
user sees. The trainers take turns (after an untimed one, 8 turns of 12 timed iterations each by
default), so a machine whose speed drifts while it runs (other jobs, a shared host) slows them alike.
Per iteration the wait for the next batch (data loading) and the train step (forward, loss, backward,
optimiser) are timed separately.

    python benchmarks/train_step.py                      # cpu-small preset on this machine
    python benchmarks/train_step.py --device cuda --preset flare21 --shape 96x256x256 --workers 12

Goal, asserted: the SDM costs at most 10% more per iteration than the same trainer without it.

On a CPU the nnsdm trainers run as ``nnsdm train`` and the demo run them, with the torch threads of
:func:`nnsdm.device.cpu_training_threads` (on 2 cores with the default one worker: two passive threads for an
fp32 step, one thread for a bf16 step, whose worker then has the other core for the SDM targets) and
their workers at the lowest CPU priority (:func:`nnsdm.device.lower_worker_priority`). Run it
under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` to see a CPU without AVX512. Besides wall
seconds, the CPU seconds per iteration of the training process and of its workers are printed: they
change little when other jobs share the machine, wall seconds do.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import nnsdm  # noqa: F401  (before torch: sets OpenMP's wait policy, as `nnsdm train` runs)


def _parse_shape(text: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in text.lower().split("x"))  # type: ignore[return-value]


def _worker_cpu_seconds(loader) -> float:
    """CPU seconds used so far by a multi-process augmenter's worker processes (0 without workers)."""
    from nnsdm.device import worker_processes

    total = 0.0
    for process in worker_processes(loader):
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def time_trainers(trainers: dict, *, rounds: int, iterations: int, warmup: int) -> dict:
    """Per trainer: mean seconds per iteration (total, data wait, step) and CPU seconds per iteration.

    The trainers take turns, ``rounds`` times ``iterations`` timed iterations each after ``warmup``
    untimed ones (the queue of the worker that was paused refills), so a change in the machine's speed
    while the benchmark runs (other jobs, a shared host) falls on every trainer alike. One untimed turn
    each comes first: a trainer's first iterations also fill torch's allocator and the caches.
    """
    import torch

    for trainer in trainers.values():
        trainer.on_train_start()
        trainer.on_train_epoch_start()
        if getattr(trainer, "progress_bar", None) is not None:
            trainer.progress_bar.disable = True
    threads = torch.get_num_threads()
    times = {label: {"waits": [], "steps": [], "cpu_main": 0.0, "cpu_workers": 0.0} for label in trainers}
    try:
        for turn in range(rounds + 1):  # turn 0 is untimed
            for label, trainer in trainers.items():
                record = times[label]
                untimed, timed = (warmup, iterations) if turn else (warmup + iterations, 0)
                for i in range(untimed + timed):
                    if i == untimed:
                        cpu_main, cpu_workers = time.process_time(), _worker_cpu_seconds(trainer.dataloader_train)
                    t0 = time.perf_counter()
                    batch = next(trainer.dataloader_train)
                    t1 = time.perf_counter()
                    trainer.train_step(batch)
                    if trainer.device.type == "cuda":
                        torch.cuda.synchronize()
                    t2 = time.perf_counter()
                    if i >= untimed:
                        record["waits"].append(t1 - t0)
                        record["steps"].append(t2 - t1)
                if turn:
                    record["cpu_main"] += time.process_time() - cpu_main
                    record["cpu_workers"] += _worker_cpu_seconds(trainer.dataloader_train) - cpu_workers
    finally:
        for trainer in trainers.values():
            for loader in (trainer.dataloader_train, trainer.dataloader_val):
                if hasattr(loader, "_finish"):
                    loader._finish()
    results = {}
    for label, record in times.items():
        waits, steps = np.array(record["waits"]), np.array(record["steps"])
        total, n = waits + steps, len(waits)
        results[label] = {"seconds_per_iteration": float(total.mean()), "data_wait": float(waits.mean()),
                          "step": float(steps.mean()), "data_share": float(waits.sum() / total.sum()),
                          "cpu_main": record["cpu_main"] / n, "cpu_workers": record["cpu_workers"] / n,
                          "torch_threads": threads}
    return results


def synthetic_batch(trainer) -> dict:
    """A batch shaped like the trainer's (image, then one segmentation and one SDM target per output scale)."""
    import torch

    patch = list(trainer.configuration_manager.patch_size)
    data = torch.randn(trainer.batch_size, trainer.num_input_channels, *patch)
    with torch.no_grad():
        outputs = trainer.network(data)
    seg = [torch.zeros(o.shape[0], 1, *o.shape[2:]) for o in outputs]
    weights = getattr(trainer.loss, "ds_weights", None)
    sdm = [torch.zeros(s.shape) if w else torch.zeros(0) for s, w in zip(getattr(outputs, "sdm", []), weights or [])]
    return {"data": data, "target": seg + sdm}


def interleaved_step_cpu(trainers: dict, rounds: int = 6) -> dict:
    """Median CPU seconds of one train step per trainer on a synthetic batch, the trainers taking turns.

    Taking turns in one process, measured in the thread's CPU time, keeps other jobs on the machine from
    favouring one trainer: the step's share of the SDM (head and MSE terms) without the workers.
    """
    batches = {label: synthetic_batch(t) for label, t in trainers.items()}
    times: dict = {label: [] for label in trainers}
    for r in range(rounds + 1):
        for label, trainer in trainers.items():
            t0 = time.thread_time()
            trainer.train_step(batches[label])
            if r:  # the first round warms up
                times[label].append(time.thread_time() - t0)
    return {label: float(np.median(v)) for label, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=_parse_shape, default=(64, 160, 160), help="phantom shape z x y x x")
    parser.add_argument("--rounds", type=int, default=8, help="timed turns each trainer takes (after one untimed)")
    parser.add_argument("--iterations", type=int, default=12, help="timed iterations per turn")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations at the start of each turn")
    parser.add_argument("--workers", type=int, default=max(1, min((os.cpu_count() or 1) - 1, 4)),
                        help="augmentation worker processes (nnUNet_n_proc_DA; default as nnsdm demo: CPU cores - 1)")
    parser.add_argument("--workspace", type=Path, help="reuse a folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ["nnUNet_n_proc_DA"] = str(args.workers)

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnsdm.phantom import generate_dataset
    from nnsdm.planning import CONFIGURATION, plan
    from nnsdm.training import build_trainer
    from nnsdm.workspace import Workspace

    root = args.workspace or Path(tempfile.mkdtemp(prefix="nnsdm-bench-"))
    workspace = Workspace(root / "ws")
    dataset = root / "phantom"
    if not dataset.exists():
        generate_dataset(dataset, cases=args.cases, seed=0, shape=args.shape)
    if not workspace.datasets():
        plan(dataset, workspace=workspace, preset=args.preset)
    plans = workspace.load_plans()
    config = plans["configurations"][CONFIGURATION]

    torch.manual_seed(0)
    sdm = build_trainer(workspace=workspace, fold=0, epochs=1000, iterations_per_epoch=250, device=args.device)
    torch.manual_seed(0)
    sdm0 = build_trainer(workspace=workspace, fold=0, sdm_weight=0, epochs=1000, iterations_per_epoch=250, device=args.device)
    plans["continue_training"] = False
    dataset_json = json.loads((workspace.preprocessed / workspace.dataset_name() / "dataset.json").read_text(encoding="utf-8"))
    plain = nnUNetTrainer(plans, CONFIGURATION, 0, dataset_json, torch.device(args.device))

    results = time_trainers({"plain nnU-Net": plain, "nnsdm sdm 0": sdm0, "nnsdm SDM": sdm},
                            rounds=args.rounds, iterations=args.iterations, warmup=args.warmup)

    base, without, ours = results["plain nnU-Net"], results["nnsdm sdm 0"], results["nnsdm SDM"]
    from nnsdm.device import cpu_bf16_supported

    load = os.getloadavg()[0]
    print(f"\npreset {args.preset}, patch {'x'.join(map(str, config['patch_size']))}, batch {config['batch_size']}, "
          f"device {args.device}, {args.workers} augmentation workers, {args.rounds} turns of {args.iterations} timed iterations, "
          f"{os.cpu_count()} CPU cores ({torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_bf16_supported()}), "
          f"load average {load:.1f}")
    print(f"{'trainer':<16}{'threads':>8}{'s/iteration':>12}{'data wait':>12}{'step':>10}{'data share':>12}"
          f"{'CPU s/it main':>15}{'workers':>9}")
    for label, r in results.items():
        print(f"{label:<16}{r['torch_threads']:>8}{r['seconds_per_iteration']:>12.3f}{r['data_wait']:>12.3f}{r['step']:>10.3f}"
              f"{100 * r['data_share']:>11.1f}%{r['cpu_main']:>15.3f}{r['cpu_workers']:>9.3f}")
    precision = sdm.cpu_precision_used or "CUDA: nnU-Net's fp16 autocast"
    print(f"(nnsdm trainers: CPU precision {precision})")
    ratio = ours["seconds_per_iteration"] / without["seconds_per_iteration"]
    print(f"ratio SDM / sdm 0: {ratio:.3f} (SDM overhead {100 * (ratio - 1):+.1f}%, goal <= +10%)")
    cpu_ratio = ours["cpu_main"] / without["cpu_main"]
    print(f"CPU seconds of the training process, SDM / sdm 0: {cpu_ratio:.3f}; of the workers: "
          f"{ours['cpu_workers']:.3f} vs {without['cpu_workers']:.3f} s per iteration")
    overall = ours["seconds_per_iteration"] / base["seconds_per_iteration"]
    print(f"ratio SDM / nnU-Net's trainer: {overall:.3f}")
    if args.device == "cpu":
        steps = interleaved_step_cpu({"sdm 0": sdm0, "SDM": sdm})
        print(f"train step alone, turns in one process, CPU s: sdm 0 {steps['sdm 0']:.3f}, SDM {steps['SDM']:.3f}, "
              f"ratio {steps['SDM'] / steps['sdm 0']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "ratio": ratio, "ratio_vs_nnunet": overall}, indent=2))
    assert ratio <= 1.10, f"SDM iteration costs {100 * (ratio - 1):+.1f}% over sdm 0 (goal <= +10%)"


if __name__ == "__main__":
    main()

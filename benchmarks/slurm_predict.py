"""Cohort prediction on SLURM: 1 shard vs 2 shards on the local cluster, and the cost of a job.

Needs a running cluster (``scripts/slurm-cluster.sh start``; ``make bench`` starts one where it can) and
submitit; without a cluster that answers it prints why and skips. Each job gets one CPU and
runs one torch thread (``--slurm-cpus-per-job 1``). Prints the wall time from submission until every
shard has ended for 1 and 2 shards side by side with their ratio, and the submission overhead per job:
``sbatch`` time, and the time from submission until a job's Python process reports ``running``
(queueing, start-up, imports). Goal: 2 shards at least 1.3x faster than 1 on 2 cores.

Usage: ``python benchmarks/slurm_predict.py [--model MODEL] [--cases 48]`` (without ``--model`` a
tiny model is planned and trained first, about 2 minutes). The cohort is large enough that the cases,
not a job's start-up (about 4 s of imports and model loading, paid once per shard), take most of the
time, as in the cohorts of thousands of scans sharding is for; with 16 cases start-up alone held 2
shards to 1.27x.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

GOAL = 1.3


def cpu_name() -> str:
    flags = sorted(set(re.findall(r"avx512[a-z_0-9]*", Path("/proc/cpuinfo").read_text())))
    avx2 = "avx2" in Path("/proc/cpuinfo").read_text()
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{cores} cores, {'AVX512 (' + ', '.join(flags) + ')' if flags else 'AVX2' if avx2 else 'no AVX2'}"


def cluster_problem() -> str | None:
    """Why no SLURM job could run here (None when ``srun`` runs one on the cluster)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm-cluster.sh"
    try:
        subprocess.run(["bash", str(script), "status"], capture_output=True, timeout=60, check=True)
    except FileNotFoundError:
        return "bash is not available"
    except subprocess.TimeoutExpired:
        return "`srun hostname` did not finish within 60 s"
    except subprocess.CalledProcessError:
        return "no SLURM cluster answers (start one with `scripts/slurm-cluster.sh start`, as root)"
    return None


def tiny_model(root: Path) -> Path:
    from nnsdm.phantom import generate_dataset
    from nnsdm.planning import plan
    from nnsdm.training import train
    from nnsdm.workspace import Workspace

    data = generate_dataset(root / "train", cases=6, seed=3, shape=(32, 96, 96), spacing=(5.0, 2.5, 2.5))
    workspace = Workspace(root / "ws")
    plan(data, workspace=workspace, preset="cpu-small", num_processes=2)
    return train(workspace=workspace, fold="all", epochs=1, iterations_per_epoch=2, val_iterations=1,
                 device="cpu", validate=False)


def run(model: Path, cohort: Path, out: Path, shards: int) -> dict:
    from nnsdm.scaleout.records import load_record
    from nnsdm.scaleout.slurm import SlurmOptions, submit_slurm
    from nnsdm.scaleout.study import prediction_records

    options = dict(folds=None, tta=False, step_size=0.5, device="cpu", postprocess="none", save_sdm=False,
                   save_probabilities=False, cpu_precision="auto")
    records = prediction_records(input=cohort, output=out, model=model, shards=shards, options=options)
    t0 = time.perf_counter()
    submit_slurm(records, SlurmOptions(time_min=60, cpus_per_job=1, gpus_per_job=0))
    submitted = time.perf_counter() - t0
    started: dict[str, float] = {}
    while True:
        current = [load_record(r.job_file) for r in records]
        for r in current:
            if r.state.state != "pending" and r.key not in started:
                started[r.key] = time.perf_counter() - t0
        if all(r.state.state in ("done", "failed") for r in current):
            break
        time.sleep(0.1)
    assert all(r.state.state == "done" and not r.state.failed_cases for r in current), [r.state for r in current]
    return {"wall": time.perf_counter() - t0, "sbatch_per_job": submitted / shards,
            "start_latency": sum(started.values()) / len(started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained model folder (default: train a tiny one)")
    parser.add_argument("--cases", type=int, default=48, help="cohort size (default 48)")
    args = parser.parse_args()
    problem = cluster_problem()
    if problem:
        print(f"skipped: {problem}; nothing measured ({cpu_name()})")
        return
    from nnsdm.phantom import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or tiny_model(tmp)
        cohort = generate_dataset(tmp / "cohort", cases=args.cases, seed=5)  # 64x160x160 at 2.5x0.8x0.8 mm
        images = cohort / "imagesTr"
        one = run(model, images, tmp / "one", 1)
        two = run(model, images, tmp / "two", 2)
    speedup = one["wall"] / two["wall"]
    print(f"cohort prediction on the local SLURM cluster, {args.cases} phantom cases of about 64x160x160, one torch thread per job "
          f"({cpu_name()})")
    print(f"  1 shard : {one['wall']:6.1f} s   2 shards: {two['wall']:6.1f} s   ratio {speedup:.2f}x "
          f"(goal >= {GOAL}x: {'met' if speedup >= GOAL else 'NOT MET'})")
    print(f"  per job: sbatch {1000 * (one['sbatch_per_job'] + two['sbatch_per_job']) / 2:.0f} ms; "
          f"submission to running {(one['start_latency'] + two['start_latency']) / 2:.1f} s (queue, start-up, imports)")
    assert speedup >= GOAL, f"2 shards only {speedup:.2f}x faster than 1"


if __name__ == "__main__":
    main()

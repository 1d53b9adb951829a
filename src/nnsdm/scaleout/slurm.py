"""The SLURM launcher, through submitit (the optional extra ``nnsdm[slurm]``).

All jobs of one command go into one job array (``scancel ID`` cancels them all); the study's final
step is a separate job that starts when the array has ended (``--dependency=afterany``) and checks
itself that every fold finished. SLURM sends ``SIGUSR2`` ``signal_delay_s`` seconds before a job's time
limit (and submitit handles preemption the same way): a training job finishes its epoch, writes its
checkpoint and is requeued by submitit, then resumes from that checkpoint (see
:mod:`nnsdm.scaleout.jobs`).
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from nnsdm.errors import NnsdmError
from nnsdm.scaleout.records import JobRecord

try:
    import submitit
except ImportError:  # pragma: no cover - depends on the installation
    submitit = None


@dataclass
class SlurmOptions:
    """What ``--slurm-*`` options ask of every job."""

    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    mem: str | None = None
    signal_delay_s: int = 300
    max_requeues: int = 100
    extra: dict[str, str] = field(default_factory=dict)


def parse_time(text: str) -> int:
    """SLURM's time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) -> minutes (>= 1)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise NnsdmError(f"--slurm-time {text}: not a SLURM time (e.g. 90, 4:00:00 or 2-00:00:00)")
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is not None:
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:
        seconds = a * 3600 + b * 60 + c
    elif b is not None:
        seconds = a * 60 + b
    else:
        seconds = a * 60
    return max(1, -(-seconds // 60))


def parse_extra(items: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` pass-through sbatch options (``--slurm-option account=lab qos=high``)."""
    extra = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NnsdmError(f"--slurm-option {item}: expected KEY=VALUE (an sbatch option without its dashes)")
        extra[key.strip().lstrip("-")] = value.strip()
    return extra


class SlurmTask(submitit.helpers.Checkpointable if submitit else object):
    """The callable submitit runs on a node: one job of :mod:`nnsdm.scaleout.jobs`.

    Being checkpointable, submitit requeues it on preemption and time-out; its state is on disk (job
    records, checkpoints, outputs), so the resubmitted callable is itself.
    """

    def __call__(self, job_file: str) -> str:
        from nnsdm.scaleout.jobs import run_job

        submitit_handler = signal.getsignal(signal.SIGUSR2)
        return run_job(Path(job_file), requeue=lambda: submitit_handler(signal.SIGUSR2, None))


def _executor(folder: Path, options: SlurmOptions, name: str):
    if submitit is None:
        raise NnsdmError("--launcher slurm: submitit is not installed (pip install 'nnsdm[slurm]')")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=options.max_requeues)
    params = dict(timeout_min=options.time_min, slurm_signal_delay_s=options.signal_delay_s, name=name,
                  slurm_additional_parameters=dict(options.extra))
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.gpus_per_job:
        params["gpus_per_node"] = options.gpus_per_job
    if options.cpus_per_job:
        params["cpus_per_task"] = options.cpus_per_job
    if options.mem:
        params["slurm_mem"] = options.mem
    executor.update_parameters(**params)
    return executor


def submit_slurm(records: list[JobRecord], options: SlurmOptions, *, name: str = "nnsdm") -> list[JobRecord]:
    """Submit the records' jobs (one array, then the final step if any); return them with job ids and logs."""
    if not records:
        return records
    folder = records[0].folder / "slurm"
    work = [r for r in records if r.kind != "finalize"]
    final = [r for r in records if r.kind == "finalize"]
    for record in records:
        record.launcher, record.submitted = "slurm", time.time()
        record.save_submission()  # the job reads its spec from here
    executor = _executor(folder, options, name)
    try:
        jobs = executor.map_array(SlurmTask(), [str(r.job_file) for r in work])
    except Exception as exc:
        raise NnsdmError(f"sbatch: submission failed ({str(exc).strip().splitlines()[-1][:300]})") from None
    for record, job in zip(work, jobs):
        record.job_id, record.log = str(job.job_id), str(job.paths.stdout)
        record.save_submission()
    for record in final:
        array_id = str(jobs[0].job_id).split("_")[0]
        executor.update_parameters(slurm_additional_parameters={**options.extra, "dependency": f"afterany:{array_id}"})
        job = executor.submit(SlurmTask(), str(record.job_file))
        record.job_id, record.log = str(job.job_id), str(job.paths.stdout)
        record.save_submission()
    return records

"""Job records on disk: what was submitted, and what each job last reported.

Every job of a study (a workspace's ``nnsdm_jobs/``) or of a sharded prediction (the output folder's
``nnsdm_jobs/``) has two small JSON files, each written atomically and each by one writer only:

* ``KEY.job.json``: the submission (the job's spec, launcher, scheduler job id, log path, a submission
  id), written by the submitting command;
* ``KEY.state.json``: the job's own reports (state, progress, pseudo Dice, error, host and pid), written
  by the job itself; a state from an earlier submission counts as no report.

``nnsdm status`` reads these files only, so it works for every launcher, after the submitting process
is gone and on clusters without an accounting database. The one outside question it may ask is whether
a job that never reported its end still exists (``squeue`` for SLURM, the pid for local jobs): a job
that vanished without a final report was cancelled or killed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnsdm.fileio import write_text

JOBS_FOLDER = "nnsdm_jobs"
STATES = ("pending", "running", "requeued", "done", "failed")
FINAL_STATES = ("done", "failed")


@dataclass
class JobState:
    """What a job reports about itself (``KEY.state.json``)."""

    state: str = "pending"
    submission: str = ""
    done: int = 0  # epochs trained or cases finished
    total: int = 0
    pseudo_dice: float | None = None
    error: str | None = None  # one line
    failed_cases: dict[str, str] = field(default_factory=dict)  # prediction: case -> one-line error
    attempts: int = 0
    host: str = ""
    pid: int = 0
    updated: float = 0.0


@dataclass
class JobRecord:
    """One job as submitted (``KEY.job.json``) with its latest state."""

    key: str
    kind: str  # "train", "predict" or "finalize"
    spec: dict
    folder: Path
    launcher: str = "local"
    job_id: str = ""
    log: str = ""
    submission: str = ""
    submitted: float = 0.0
    label: str = ""  # e.g. "fold 0, sdm 1" or "shard 2/4"
    state: JobState = field(default_factory=JobState)

    @property
    def job_file(self) -> Path:
        return self.folder / f"{self.key}.job.json"

    @property
    def state_file(self) -> Path:
        return self.folder / f"{self.key}.state.json"

    def save_submission(self) -> None:
        """Write ``KEY.job.json`` (the submitter's file)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("state", "folder")}
        write_text(self.job_file, json.dumps(data, indent=1, default=str))

    def report(self, **changes) -> JobState:
        """Update and write this job's state (the job's own file); returns the new state."""
        values = {**asdict(self.state), **changes, "submission": self.submission, "host": socket.gethostname(),
                  "pid": os.getpid(), "updated": time.time()}
        self.state = JobState(**values)
        write_text(self.state_file, json.dumps(asdict(self.state), indent=1))
        return self.state


def load_record(job_file: Path) -> JobRecord:
    """Read a job's submission and its current state (``pending`` when the job has not reported yet)."""
    job_file = Path(job_file)
    data = json.loads(job_file.read_text(encoding="utf-8"))
    record = JobRecord(folder=job_file.parent, **data)
    if record.state_file.is_file():
        try:
            state = JobState(**json.loads(record.state_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            state = JobState()
        if state.submission == record.submission:
            record.state = state
    return record


def load_records(folder: Path) -> list[JobRecord]:
    """Every job recorded in ``folder`` (a ``nnsdm_jobs`` folder), in key order."""
    folder = Path(folder)
    return [load_record(p) for p in sorted(folder.glob("*.job.json"))] if folder.is_dir() else []


def _slurm_jobs_alive() -> set[str] | None:
    """Ids of the jobs SLURM still knows (``squeue``, one line per array task); None without squeue."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(out.stdout.split()) if out.returncode == 0 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def effective_state(record: JobRecord, slurm_alive: set[str] | None) -> tuple[str, str | None]:
    """The state to show and an error: a job gone without a final report is ``failed``."""
    state = record.state
    if state.state in FINAL_STATES:
        return state.state, state.error
    gone = "job ended without a final report (cancelled, killed or out of memory); run the command again to resume"
    if record.launcher == "slurm" and record.job_id and slurm_alive is not None and record.job_id not in slurm_alive:
        return "failed", gone
    if record.launcher == "local":
        here = state.host == socket.gethostname()
        if state.state in ("running", "requeued") and here and state.pid and not _pid_alive(state.pid):
            return "failed", gone
        submitter = record.spec.get("_launcher_pid")
        if state.state == "pending" and submitter and not _pid_alive(int(submitter)):
            return "failed", "the local launcher stopped before this job ran; run the command again"
    return state.state, None


def states(records: list[JobRecord]) -> list[tuple[str, str | None]]:
    """``effective_state`` of every record, asking ``squeue`` at most once."""
    alive = _slurm_jobs_alive() if any(r.launcher == "slurm" for r in records) else None
    return [effective_state(r, alive) for r in records]

"""The local launcher: the jobs of a study on this machine, one per visible GPU at a time.

Each job runs in its own process (``python -m nnsdm.scaleout.jobs KEY.job.json``) with
``CUDA_VISIBLE_DEVICES`` set to one GPU, so as many jobs run at once as GPUs are visible; on a machine
without a GPU (or with ``device cpu``) they run one after another. The launcher itself waits for them
(it is the scheduler) with a progress bar over jobs. Ctrl-C asks running training jobs to stop at the
end of their current epoch (checkpointed); a second Ctrl-C stops them at once. Running the same command
again resumes every unfinished job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from nnsdm.scaleout.records import JobRecord


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _start(record: JobRecord, gpu: str | None) -> subprocess.Popen:
    log = record.folder / "logs" / f"{record.key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    with open(log, "ab") as handle:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "nnsdm.scaleout.jobs", str(record.job_file)], env=env,
                                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # Ctrl-C reaches the launcher only


def submit_local(records: list[JobRecord]) -> list[JobRecord]:
    """Write the job records for the local launcher (job ids ``local-N``)."""
    for n, record in enumerate(records):
        record.launcher, record.job_id = "local", f"local-{n}"
        record.log = str(record.folder / "logs" / f"{record.key}.log")
        record.submitted = time.time()
        record.spec = {**record.spec, "_launcher_pid": os.getpid()}
        record.save_submission()
    return records


def run_local(records: list[JobRecord], *, use_gpus: bool = True, progress: bool = True) -> dict[str, int]:
    """Run the jobs (the ``finalize`` job last, only if every other succeeded); return exit codes by key."""
    from tqdm import tqdm

    submit_local(records)
    slots: list[str | None] = (visible_gpus() if use_gpus else []) or [None]
    queue = [r for r in records if r.kind != "finalize"]
    final = [r for r in records if r.kind == "finalize"]
    running: dict[str, tuple[subprocess.Popen, str | None]] = {}
    codes: dict[str, int] = {}
    bar = tqdm(total=len(records), desc="jobs", unit="job", disable=not progress, dynamic_ncols=True)
    interrupts = 0
    while queue or running or final:
        try:
            if not queue and not running and final:
                if all(c == 0 for c in codes.values()):
                    queue.append(final.pop())
                else:
                    skipped = final.pop()
                    skipped.report(state="failed", error="not run: not every training job succeeded")
                    codes[skipped.key] = -1
                    bar.update()
                    continue
            free = [s for s in slots if s not in {g for _, g in running.values()}]
            while queue and free:
                record, gpu = queue.pop(0), free.pop(0)
                running[record.key] = (_start(record, gpu), gpu)
            for key, (proc, _) in list(running.items()):
                if proc.poll() is not None:
                    codes[key] = proc.returncode
                    del running[key]
                    bar.update()
            time.sleep(0.5)
        except KeyboardInterrupt:
            interrupts += 1
            queue.clear()
            final.clear()
            sig = signal.SIGUSR2 if interrupts == 1 else signal.SIGTERM
            tqdm.write("stopping: training jobs stop at the end of their current epoch (Ctrl-C again: stop now)"
                       if interrupts == 1 else "stopping now")
            for proc, _ in running.values():
                proc.send_signal(sig)
    bar.close()
    return codes


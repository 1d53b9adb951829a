"""What runs inside one job: a training fold, a prediction shard, or the study's final step.

:func:`run_job` is the entry point of every job, whichever launcher started it (``python -m
nnsdm.scaleout.jobs KEY.job.json`` for the local launcher, :class:`nnsdm.scaleout.slurm.SlurmTask` on
SLURM). Every job is idempotent: a training job resumes from its fold's latest checkpoint and does
nothing when the fold is finished; a shard skips cases whose outputs exist. The job reports its state
to ``KEY.state.json`` as it goes (see :mod:`nnsdm.scaleout.records`).

Stopping. ``SIGUSR2`` (SLURM's warning before the time limit, or preemption) asks a training job to
stop at the next epoch boundary: the epoch in progress finishes, ``checkpoint_latest.pth`` is written,
and the job is requeued (on SLURM) or ends (locally), so every epoch is trained exactly once and every
run trains at least one; once no epoch is left, the fold's final validation runs to its end (``SIGUSR2``
is ignored then: SLURM signals every process of the job, and the validation's worker pools, started
with the spawn method, would die of it and leave the validation waiting for them forever). Shards
stop at once (a shard's case in progress leaves no file and
is predicted again). ``SIGTERM`` (``scancel``, Ctrl-C through the local launcher) stops at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from nnsdm.errors import NnsdmError
from nnsdm.model_folder import LATEST_CHECKPOINT, ModelFolder
from nnsdm.scaleout.records import JobRecord, load_record
from nnsdm.trainer import EpochSummary
from nnsdm.training import TrainingOptions
from nnsdm.workspace import Workspace


class Cancelled(BaseException):
    """Raised in a job by SIGTERM: unwinds (temporary files are removed) and is reported as ``failed``."""


def one_line(exc: BaseException) -> str:
    """A one-line description of an error (NnsdmError messages are one line already)."""
    if isinstance(exc, (NnsdmError, Cancelled)):
        return str(exc).splitlines()[0] if str(exc) else "error"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


class StopControl:
    """Signal handling of one job: when to stop, and how (``requeue`` checkpoints the job and exits).

    ``deferring`` is True in a training job: a stop request then waits for the end of the epoch
    (:meth:`at_epoch_end`).
    """

    def __init__(self, record: JobRecord, requeue: Callable[[], None] | None) -> None:
        self.record = record
        self._requeue = requeue
        self.requested = False
        self.deferring = record.kind == "train"  # from the start: every run trains at least one epoch

    def install(self) -> None:
        signal.signal(signal.SIGUSR2, self._on_usr2)
        signal.signal(signal.SIGTERM, self._on_term)

    @contextlib.contextmanager
    def ignoring_stop_requests(self) -> Iterator[None]:
        """``SIGUSR2`` ignored, also by every process started meanwhile (an ignored signal stays ignored across exec)."""
        previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGUSR2, previous)

    def _on_usr2(self, signum, frame) -> None:
        self.requested = True
        if not self.deferring:
            self.stop_now()

    def _on_term(self, signum, frame) -> None:
        raise Cancelled("cancelled (SIGTERM)")

    def stop_now(self) -> None:
        """Requeue (SLURM) or end (local launcher) this job now; everything needed to resume is on disk."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # SLURM's own SIGTERM after the requeue is expected
        if self._requeue is None:
            done = self.record.state.done
            where = f"after epoch {done} (checkpoint written)" if self.record.kind == "train" else f"after {done} case(s)"
            self.record.report(state="failed", error=f"stopped {where}; run the same command again to resume")
            sys.exit(3)
        self.record.report(state="requeued", attempts=self.record.state.attempts)
        self._requeue()  # submitit: checkpoint(), `scontrol requeue`, sys.exit

    def at_epoch_end(self, trainer, summary: EpochSummary) -> None:
        """The trainer's epoch callback in a training job: report progress; stop here if asked to."""
        dice = float(np.mean(summary.pseudo_dice)) if summary.pseudo_dice else None
        self.record.report(state="running", done=summary.epoch, total=summary.epochs,
                           pseudo_dice=None if dice is None else round(dice, 4))
        if self.requested and trainer.current_epoch < trainer.num_epochs:
            save_latest_checkpoint(trainer)
            self.stop_now()


def save_latest_checkpoint(trainer) -> None:
    """``checkpoint_latest.pth`` at an epoch boundary (after nnU-Net advanced ``current_epoch``).

    nnU-Net's ``save_checkpoint`` stores ``current_epoch + 1`` as it is called before the epoch counter
    moves on; here the counter has moved already, so it is stepped back while saving.
    """
    trainer.current_epoch -= 1
    try:
        trainer.save_checkpoint(str(Path(trainer.output_folder) / LATEST_CHECKPOINT))
    finally:
        trainer.current_epoch += 1


# --- training ------------------------------------------------------------------------------------------

def fold_finished(model: ModelFolder, fold: int | str, *, validate: bool) -> bool:
    """True when the fold has its final checkpoint (and, if asked for, its validation summary)."""
    return model.checkpoint(fold) is not None and (
        not validate or (model.fold_folder(fold) / "validation" / "summary.json").is_file())


def training_options(spec: dict) -> TrainingOptions:
    """The :class:`~nnsdm.training.TrainingOptions` of a training job's spec."""
    fields = {k: v for k, v in spec.items() if not k.startswith("_")}
    return TrainingOptions(**{**fields, "workspace": Workspace(fields["workspace"])})


def run_training_job(record: JobRecord, control: StopControl) -> None:
    """Train one (fold, sdm_weight) to the end: resume from the latest checkpoint, nothing when finished."""
    from nnsdm.training import _run, build_trainer, validate_fold

    options = training_options(record.spec)
    if options.workers is not None:
        os.environ["nnUNet_n_proc_DA"] = str(max(0, int(options.workers)))
    model = options.model_folder
    if fold_finished(model, options.fold, validate=options.validate):
        record.report(state="done", done=options.epochs, total=options.epochs, error=None)
        return
    resume = model.resume_checkpoint(options.fold) is not None
    trainer = build_trainer(options)
    trainer.epoch_callback = lambda summary: control.at_epoch_end(trainer, summary)
    record.report(state="running", total=options.epochs)
    _run(trainer, dataclasses.replace(options, resume=resume, validate=False))
    if options.validate:  # no epoch left: a stop request lets the validation finish
        with control.ignoring_stop_requests():
            validate_fold(trainer, tta=options.validation_tta)
    record.report(state="done", done=trainer.current_epoch, total=trainer.num_epochs, error=None)


# --- entry point ---------------------------------------------------------------------------------------

def _runner(kind: str) -> Callable[[JobRecord, StopControl], None]:
    if kind == "train":
        return run_training_job
    if kind == "predict":
        from nnsdm.scaleout.shards import run_shard

        return run_shard
    if kind == "finalize":
        from nnsdm.scaleout.study import run_finalize

        return run_finalize
    raise NnsdmError(f"unknown job kind {kind!r}")


def _limit_threads() -> None:
    """One torch thread per CPU SLURM gave the job (torch would use every core of the node)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(int(cpus))


def run_job(job_file: Path, *, requeue: Callable[[], None] | None = None) -> str:
    """Run the job described by ``job_file`` in this process and return its final state.

    ``requeue`` (SLURM) checkpoints the job and puts it back in the queue; without it a stop request
    ends the job, to be resumed by running the same command again.
    """
    record = load_record(Path(job_file))
    _limit_threads()
    control = StopControl(record, requeue)
    control.install()
    attempts = record.state.attempts + 1 if record.state.state in ("running", "requeued") else 1
    record.report(state="running", attempts=attempts, error=None)
    try:
        _runner(record.kind)(record, control)
    except (Exception, Cancelled) as exc:
        record.report(state="failed", error=one_line(exc))
        raise
    return record.state.state


def main(argv: list[str] | None = None) -> int:
    """``python -m nnsdm.scaleout.jobs KEY.job.json``: run one job (the local launcher's child process)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        run_job(Path(argv[0]))
    except NnsdmError as exc:
        print(f"nnsdm: error: {exc}", file=sys.stderr)
        return 1
    except Cancelled as exc:
        print(f"nnsdm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

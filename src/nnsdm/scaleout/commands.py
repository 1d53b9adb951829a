"""The command-line side of scaling out: launcher options, and ``train``/``predict``/``status`` as jobs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnsdm.errors import NnsdmError
from nnsdm.scaleout.records import JobRecord


def add_launcher_options(p: argparse.ArgumentParser, *, predict: bool = False) -> None:
    """``--launcher``, ``--wait`` and the ``--slurm-*`` options of ``train`` and ``predict``."""
    p.add_argument("--launcher", choices=["local", "slurm"],
                   help="run as jobs: local (one job per visible GPU, else one after another) or slurm (submitit)")
    if predict:
        p.add_argument("--shards", type=int, default=1, help="with --launcher: split the cases into N jobs (default 1)")
    else:
        p.add_argument("--finalize", action="store_true",
                       help="with --launcher: a last job decides post-processing and writes the report when every fold is done")
    p.add_argument("--wait", action="store_true",
                   help="with --launcher slurm: block until every job has ended (progress bar); exit 1 if any failed")
    g = p.add_argument_group("SLURM (with --launcher slurm; every job gets the same resources)")
    g.add_argument("--slurm-partition", help="partition (default: the cluster's default)")
    g.add_argument("--slurm-time", default="24:00:00",
                   help="time limit per job run, SLURM format (default 24:00:00); jobs are requeued when it runs out")
    g.add_argument("--slurm-gpus-per-job", type=int, help="GPUs per job (default 1, or 0 with --device cpu)")
    g.add_argument("--slurm-cpus-per-job", type=int, help="CPUs per job (default: the cluster's)")
    g.add_argument("--slurm-mem", help="memory per job, e.g. 32G (default: the cluster's)")
    g.add_argument("--slurm-signal-delay", type=int, default=300,
                   help="seconds before the time limit at which a job checkpoints and requeues (default 300: "
                        "longer than one epoch)")
    g.add_argument("--slurm-option", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. account=lab qos=high constraint=a100")


def slurm_options(args: argparse.Namespace):
    """The ``--slurm-*`` options as :class:`nnsdm.scaleout.slurm.SlurmOptions`."""
    from nnsdm.scaleout.slurm import SlurmOptions, parse_extra, parse_time

    gpus = args.slurm_gpus_per_job
    if gpus is None:
        gpus = 0 if getattr(args, "device", "auto") == "cpu" else 1
    if gpus < 0 or (args.slurm_cpus_per_job is not None and args.slurm_cpus_per_job < 1):
        raise NnsdmError("--slurm-gpus-per-job must be >= 0 and --slurm-cpus-per-job >= 1")
    if args.slurm_signal_delay < 0:
        raise NnsdmError(f"--slurm-signal-delay {args.slurm_signal_delay}: must be >= 0")
    return SlurmOptions(partition=args.slurm_partition, time_min=parse_time(args.slurm_time), gpus_per_job=gpus,
                        cpus_per_job=args.slurm_cpus_per_job, mem=args.slurm_mem,
                        signal_delay_s=args.slurm_signal_delay, extra=parse_extra(args.slurm_option))


def launch(records: list[JobRecord], args: argparse.Namespace, *, follow: str, use_gpus: bool) -> int:
    """Run the records with the chosen launcher; print ids and how to follow them; wait if asked."""
    from nnsdm.scaleout.status import format_status, status_rows, wait

    if args.launcher == "slurm":
        from nnsdm.scaleout.slurm import submit_slurm

        submit_slurm(records, slurm_options(args))
        ids = sorted({r.job_id.split("_")[0] for r in records})
        for record in records:
            print(f"submitted {record.label or record.key}: SLURM job {record.job_id}, log {record.log}")
        print(f"follow:  {follow}\ncancel:  scancel {' '.join(ids)}   (the same command again resumes every job)")
        if not args.wait:
            return 0
        final = wait(records)
    else:
        from nnsdm.scaleout.local import run_local

        run_local(records, use_gpus=use_gpus)
        final = None
    rows = status_rows(records[0].folder)
    keys = {r.label or r.key for r in records}
    print(format_status([r for r in rows if r["job"] in keys]))
    failed = [k for k, s in final.items() if s != "done"] if final else [r for r in rows if r["job"] in keys and r["state"] != "done"]
    return 1 if failed else 0


def train_jobs(args: argparse.Namespace) -> int:
    """``nnsdm train`` over several folds / SDM weights, or with ``--launcher``."""
    from nnsdm.scaleout.study import training_records
    from nnsdm.workspace import Workspace

    if args.gpus != 1:
        raise NnsdmError(f"--gpus {args.gpus}: jobs train on one GPU each (nnU-Net's recommendation); drop --gpus")
    options = dict(epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch, val_iterations=args.val_iterations,
                   save_every=args.save_every, device=args.device, optimizer=args.optimizer, learning_rate=args.lr,
                   mirroring=not args.no_mirroring, cpu_precision=args.cpu_precision, validate=not args.no_validation,
                   validation_tta=not args.validation_no_tta, workers=args.workers)
    workspace = Workspace(args.workspace)
    records = training_records(workspace=workspace, folds=args.fold, sdm_weights=args.sdm_weight, dataset=args.dataset,
                               options=options, finalize=args.finalize)
    args.launcher = args.launcher or "local"
    return launch(records, args, follow=f"nnsdm status --workspace {args.workspace}", use_gpus=args.device != "cpu")


def predict_jobs(args: argparse.Namespace) -> int:
    """``nnsdm predict --launcher ... --shards N``; at the end, one line per failed case."""
    from nnsdm.scaleout.shards import FAILURES_FILE
    from nnsdm.scaleout.study import prediction_records

    if args.overwrite:
        raise NnsdmError("--overwrite: not with --launcher (shards skip finished cases; remove the output folder instead)")
    folds = [f if f == "all" else int(f) for f in args.folds] if args.folds else None
    options = dict(folds=folds, tta=not args.no_tta, step_size=args.step_size, device=args.device,
                   postprocess=args.postprocess, save_sdm=args.save_sdm, save_probabilities=args.save_probabilities,
                   cpu_precision=args.cpu_precision, output_format=args.output_format, statistics=args.statistics,
                   preview=args.preview, qc=args.qc, resample=args.resample)
    records = prediction_records(input=args.input, output=args.output, model=args.model, shards=args.shards, options=options)
    args.launcher = args.launcher or "local"
    code = launch(records, args, follow=f"nnsdm status {args.output}", use_gpus=args.device != "cpu")
    failures = Path(args.output) / FAILURES_FILE
    if (args.wait or args.launcher == "local") and failures.is_file():
        lines = failures.read_text(encoding="utf-8").splitlines()[1:]
        print(f"{len(lines)} case(s) failed (listed in {failures}):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        code = 1
    return code


def show_status(path: Path) -> int:
    """``nnsdm status``: the table of jobs recorded for a workspace or a prediction output folder."""
    from nnsdm.scaleout.status import format_status, status_rows

    rows = status_rows(Path(path))
    print(format_status(rows))
    return 0

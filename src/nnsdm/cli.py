"""The ``nnsdm`` command: argument parsing only; each subcommand calls the typed API of its module.

Errors the user can fix (``NnsdmError``) become one line on stderr and exit code 1, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nnsdm import __version__
from nnsdm.errors import NnsdmError
from nnsdm.scaleout.commands import add_launcher_options
from nnsdm.workspace import DEFAULT_WORKSPACE, Workspace


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three integers like 64x160x160") from None
    if len(values) != 3 or min(values) < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three integers >= 8 like 64x160x160 (z x y x x)")
    return values  # type: ignore[return-value]


def _spacing(text: str) -> tuple[float, float, float]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers in mm like 4x2x2") from None
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three positive numbers in mm like 4x2x2 (z x y x x)")
    return values  # type: ignore[return-value]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _add_workspace(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE,
                   help="folder holding nnU-Net's raw, preprocessed and results folders (default: ./nnsdm_workspace)")


def _cmd_phantom(args: argparse.Namespace) -> int:
    from nnsdm.phantom import generate_dataset

    kwargs = {}
    if args.shape:
        kwargs["shape"] = args.shape
    if args.spacing:
        kwargs["spacing"] = args.spacing
    if args.degradation:
        kwargs.update(degradation=args.degradation, severity=args.severity)
    out = generate_dataset(args.out, cases=args.cases, seed=args.seed, naming=args.naming, overwrite=args.overwrite, **kwargs)
    print(f"wrote {args.cases} synthetic CT cases to {out}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from nnsdm.datasets import convert_flare21

    out = convert_flare21(args.src, args.out, mode="copy" if args.copy else "link", overwrite=args.overwrite)
    print(f"wrote nnU-Net raw dataset {out}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from nnsdm.datasets import check_dataset

    if not args.dataset.is_dir():
        raise NnsdmError(f"{args.dataset}: dataset folder not found")
    problems = check_dataset(args.dataset)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found in {args.dataset}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: OK")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from nnsdm.planning import plan

    summary = plan(args.dataset, workspace=Workspace(args.workspace), preset=args.preset, dataset_id=args.dataset_id,
                   num_processes=args.processes, verbose=args.verbose)
    print(summary)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from nnsdm.training import train

    if args.launcher or len(args.fold) > 1 or len(args.sdm_weight) > 1:
        from nnsdm.scaleout.commands import train_jobs

        return train_jobs(args)
    model = train(workspace=Workspace(args.workspace), fold=args.fold[0], dataset=args.dataset, sdm_weight=args.sdm_weight[0],
                  epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch, val_iterations=args.val_iterations,
                  save_every=args.save_every, device=args.device, optimizer=args.optimizer, learning_rate=args.lr,
                  mirroring=not args.no_mirroring, cpu_precision=args.cpu_precision, resume=args.resume,
                  validate=not args.no_validation,
                  validation_tta=not args.validation_no_tta, workers=args.workers, gpus=args.gpus)
    print(f"model folder: {model}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from nnsdm.export import export_stock_model

    out = export_stock_model(args.model, args.out, overwrite=args.overwrite)
    print(f"wrote stock nnU-Net model folder {out} (run it with nnUNetv2_predict_from_modelfolder -m {out})")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from nnsdm.export import model_statistics

    stats = model_statistics(args.source)
    print(f"network      {stats['network']}, patch {'x'.join(map(str, stats['patch_size']))}")
    print(f"parameters   {stats['parameters']:,} (with SDM head {stats['parameters_with_sdm_head']:,})")
    print(f"FLOPs        {stats['flops']:,} (with SDM head {stats['flops_with_sdm_head']:,}); one forward pass, batch 1")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from nnsdm.inference import predict

    if args.launcher or args.shards != 1:
        from nnsdm.scaleout.commands import predict_jobs

        return predict_jobs(args)

    written = predict(input=args.input, output=args.output, model=args.model, folds=args.folds, tta=not args.no_tta,
                      step_size=args.step_size, device=args.device, postprocess=args.postprocess, save_sdm=args.save_sdm,
                      save_probabilities=args.save_probabilities, output_format=args.output_format,
                      statistics=args.statistics, preview=args.preview, qc=args.qc, overwrite=args.overwrite,
                      cpu_precision=args.cpu_precision, resample=args.resample)
    what = {"nifti": "label map(s)", "dicom-seg": "DICOM SEG case(s)", "both": "label map(s) and DICOM SEGs"}[args.output_format]
    print(f"{len(written)} {what} in {args.output}; time and memory per case in {args.output / 'efficiency.csv'}")
    if args.statistics:
        print(f"organ statistics in {args.output / 'statistics.csv'} and {args.output / 'summary.json'}")
    if args.preview:
        print(f"previews: {args.output / 'previews.png'} (contact sheet) and CASE_preview.png per case")
    if args.qc:
        print(f"quality scores per case and organ in {args.output / 'qc.csv'} (flagged: worth a look)")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from nnsdm.scaleout.commands import show_status

    return show_status(args.output if args.output is not None else args.workspace)


def _cmd_postprocessing(args: argparse.Namespace) -> int:
    from nnsdm.inference import determine_postprocessing

    decision = determine_postprocessing(args.model)
    print(json.dumps(decision, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nnsdm.evaluation import evaluate_folder, format_summary, parse_tolerance

    summary = evaluate_folder(pred=args.pred, gt=args.gt, out=args.out, tolerance_mm=parse_tolerance(args.tolerance),
                              hd95=args.hd95)
    print(format_summary(summary))
    print(f"wrote {args.out / 'metrics.csv'} and {args.out / 'summary.csv'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from nnsdm.evaluation import parse_tolerance
    from nnsdm.report import write_report

    if (args.pred is None) != (args.gt is None):
        raise NnsdmError("--pred and --gt go together (the external set's predictions and ground truth)")
    out = write_report(workspace=Workspace(args.workspace), out=args.out, dataset=args.dataset, pred=args.pred, gt=args.gt,
                       images=args.images, tolerance_mm=parse_tolerance(args.tolerance), workers=args.workers)
    print(f"report: {out / 'report.html'} (and report.md, CSVs, figures)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nnsdm.demo import run_demo

    options = {k: v for k, v in vars(args).items()
               if k in ("train_cases", "test_cases", "seed", "seeds", "shape", "spacing", "epochs", "iterations", "learning_rate",
                        "workers")
               and v is not None}
    run_demo(out=args.out, ablation=args.ablation, overwrite=args.overwrite, tta=args.tta, device=args.device, **options)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage itself is one ``--help`` away), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nnsdm", description="Signed-distance-map training for nnU-Net v2 (FLARE21 organs).")
    parser.add_argument("--version", action="version", version=f"nnsdm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from nnsdm.phantom import DEGRADATIONS

    p = sub.add_parser("phantom", help="write a synthetic abdominal CT dataset (nnU-Net raw layout)",
                       description="Write a synthetic abdominal CT dataset with liver, kidney, spleen and pancreas labels.")
    p.add_argument("out", type=Path, help="output dataset folder")
    p.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same bytes (default 0)")
    p.add_argument("--shape", type=_shape, help="nominal image shape z x y x x, e.g. 64x160x160 (varies per case)")
    p.add_argument("--spacing", type=_spacing, help="nominal voxel spacing in mm z x y x x (varies per case)")
    p.add_argument("--naming", choices=["nnunet", "flare21"], default="nnunet",
                   help="nnunet: imagesTr/labelsTr/dataset.json; flare21: the FLARE21 release layout")
    p.add_argument("--degradation", choices=DEGRADATIONS, help="degrade every case the way real scans go wrong "
                   "(same anatomy as without it)")
    p.add_argument("--severity", type=float, default=1.0, help="degradation strength in (0, 1] (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("convert-flare21", help="turn the FLARE21 release layout into an nnU-Net raw dataset",
                       description="Link (or copy) FLARE21 TrainingImg/TrainingMask/ValidationImg into an nnU-Net raw dataset. Source files are never altered.")
    p.add_argument("src", type=Path, help="FLARE21 folder holding TrainingImg/ and TrainingMask/")
    p.add_argument("out", type=Path, help="output nnU-Net raw dataset folder")
    p.add_argument("--copy", action="store_true", help="copy files instead of linking them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("check", help="validate a raw dataset and list every problem",
                       description="Validate an nnU-Net raw dataset; prints one line per problem and exits 1 if there are any.")
    p.add_argument("dataset", type=Path, help="nnU-Net raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("plan", help="fingerprint, plan and preprocess a dataset (3d_fullres)",
                       description="Check the dataset, then run nnU-Net's fingerprint, planning and 3d_fullres preprocessing in the workspace.")
    p.add_argument("dataset", type=Path, help="nnU-Net raw dataset folder (linked into the workspace, never modified)")
    _add_workspace(p)
    p.add_argument("--preset", choices=["default", "flare21", "cpu-small"], default="default",
                   help="default: nnU-Net's plan; flare21: the paper's patch 80x192x160, batch 2; cpu-small: small network for CPUs")
    p.add_argument("--dataset-id", type=int, help="nnU-Net dataset id (default: first free id from 501)")
    p.add_argument("--processes", type=int, help="worker processes for fingerprint and preprocessing (default: CPU count, at most 8)")
    p.add_argument("--verbose", action="store_true", help="show nnU-Net's own planning output")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("train", help="train the SDM model on one fold (nnU-Net trainer + SDM head)",
                       description="Train nnU-Net with the signed-distance-map head on one cross-validation fold of the workspace's planned dataset.")
    _add_workspace(p)
    p.add_argument("--fold", nargs="+", default=["0"],
                   help="0, 1, 2, 3, 4, or all (train on every case) (default 0); several folds run as jobs (see --launcher)")
    p.add_argument("--dataset", help="dataset name or id, when the workspace holds several")
    p.add_argument("--epochs", type=_positive_int, default=1000, help="epochs (default 1000, nnU-Net's; the paper's SDM model ran 100)")
    p.add_argument("--iterations-per-epoch", type=_positive_int, default=250, help="training iterations per epoch (default 250)")
    p.add_argument("--val-iterations", type=_positive_int, help="validation iterations per epoch (default: a fifth of the training iterations)")
    p.add_argument("--sdm-weight", type=float, nargs="+", default=[1.0],
                   help="weight of the SDM loss; 0 trains the plain nnU-Net baseline (default 1); several weights run as jobs")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device (default: CUDA if available)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                   help="sgd: nnU-Net's (Nesterov momentum 0.99, the paper's); adamw: short-budget recipe of the demo "
                        "(poly schedule stepped every iteration)")
    p.add_argument("--lr", type=float, help="initial learning rate (default 0.01, nnU-Net's), poly decay")
    p.add_argument("--no-mirroring", action="store_true", help="no mirroring augmentation (and no mirroring TTA later)")
    p.add_argument("--cpu-precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="CPU training only: bf16 autocast or fp32 (default auto: bf16 where the CPU has native bf16)")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="resume from the fold's latest checkpoint (give the same options as the interrupted run)")
    p.add_argument("--save-every", type=_positive_int, default=50, help="write checkpoint_latest.pth every N epochs (default 50)")
    p.add_argument("--workers", type=int, help="augmentation worker processes (default: nnU-Net's choice)")
    p.add_argument("--gpus", type=_positive_int, default=1, help="GPUs for distributed data-parallel training (default 1)")
    p.add_argument("--no-validation", action="store_true", help="skip the final validation of the fold")
    p.add_argument("--validation-no-tta", action="store_true", help="final validation without mirroring (8x faster on a CPU)")
    add_launcher_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="write a stock nnU-Net model folder without the SDM head",
                       description="Export a trained model as a stock nnU-Net v2 model folder that nnUNetv2_predict_from_modelfolder runs.")
    p.add_argument("--model", type=Path, required=True, help="trained nnsdm model folder")
    p.add_argument("--out", type=Path, required=True, help="output model folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("stats", help="parameter count and FLOPs of the planned network, with and without the SDM head",
                       description="Count parameters and FLOPs of one forward pass at the planned patch size.")
    p.add_argument("--model", dest="source", type=Path, required=True, help="model folder, or a plans file (nnUNetPlans.json) beside its dataset.json")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("predict", help="segment NIfTI files/folders or DICOM series with a trained model",
                       description="Segment CT scans (NIfTI file, folder of NIfTI files, DICOM series folder, or folder of DICOM series) "
                                   "into CASE.nii.gz label maps on each input's own grid (and/or DICOM SEG objects of DICOM series), with time "
                                   "and memory per case in efficiency.csv; optionally organ statistics and preview images.")
    p.add_argument("-i", "--input", type=Path, required=True, help="NIfTI file, folder of NIfTI files, DICOM series folder or folder of series")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--model", type=Path, required=True, help="trained model folder (.../nnsdmTrainer__nnUNetPlans__3d_fullres)")
    p.add_argument("--folds", nargs="+", help="folds to ensemble, e.g. 0 1 2 3 4 or all (default: every trained fold)")
    p.add_argument("--no-tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")
    p.add_argument("--step-size", type=float, default=0.5, help="sliding-window step as a fraction of the patch (default 0.5)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device (default: CUDA if available)")
    p.add_argument("--postprocess", choices=["none", "largest", "cv"], default="none",
                   help="none (paper, default); largest: largest component per label, two for the kidneys; cv: as the cross-validation decided")
    p.add_argument("--save-sdm", action="store_true", help="also write CASE_sdm.nii.gz, the predicted signed distance maps (4D)")
    p.add_argument("--qc", action="store_true", help="score each organ (SDM head vs segmentation, and a softmax-entropy "
                   "baseline) into qc.csv and flag likely failures (SDM models)")
    p.add_argument("--save-probabilities", action="store_true", help="also write CASE.npz with the softmax probabilities")
    p.add_argument("--output-format", choices=["nifti", "dicom-seg", "both"], default="nifti",
                   help="nifti: CASE.nii.gz label maps (default); dicom-seg: CASE_seg.dcm, a DICOM Segmentation object "
                        "referencing the source series (DICOM inputs only), instead; both")
    p.add_argument("--statistics", action="store_true",
                   help="also write statistics.csv and summary.json: per case and organ volume (ml), voxel count, "
                        "mean/median/std HU, bounding box")
    p.add_argument("--preview", action="store_true",
                   help="also write CASE_preview.png (organs over axial, coronal and sagittal planes) and previews.png, "
                        "a contact sheet of all cases")
    p.add_argument("--cpu-precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="CPU only: bf16 autocast (as nnU-Net's fp16 on GPUs) or fp32 (default auto: bf16 where the CPU has native bf16)")
    p.add_argument("--resample", choices=["logits", "probabilities"], default="logits",
                   help="what is resampled back to the input grid: logits (nnU-Net v2, default) or softmax "
                        "probabilities (nnU-Net v1; keeps small organs of briefly trained SDM models from shrinking)")
    p.add_argument("--overwrite", action="store_true", help="predict cases whose outputs already exist again")
    add_launcher_options(p, predict=True)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("status", help="where the jobs of a workspace or a sharded prediction stand",
                       description="A table of the jobs started with --launcher (training folds or prediction shards): state, "
                                   "epochs or cases done, last pseudo Dice, log. Read from disk: works for every launcher, "
                                   "after the submitting command has ended, and without SLURM accounting.")
    p.add_argument("output", type=Path, nargs="?", help="a prediction output folder (default: the workspace's training jobs)")
    _add_workspace(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("postprocessing", help="decide per label from the cross-validation whether largest-component post-processing helps",
                       description="Compare each label's cross-validation Dice with and without keeping the largest components "
                                   "(two for the kidneys) and store the decision with the model, for predict --postprocess cv.")
    p.add_argument("--model", type=Path, required=True, help="trained model folder with fold_K/validation predictions")
    p.set_defaults(func=_cmd_postprocessing)

    p = sub.add_parser("evaluate", help="Dice and NSD per case and organ with the FLARE21 rules",
                       description="Score predicted label maps against ground truth with the FLARE21 rules (DSC and NSD per organ).")
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted CASE.nii.gz")
    p.add_argument("--gt", type=Path, required=True, help="folder of ground-truth CASE.nii.gz")
    p.add_argument("--out", type=Path, required=True, help="output folder for metrics.csv and summary.csv")
    p.add_argument("--tolerance", default="1",
                   help="NSD tolerance in mm: one value for all organs (FLARE21: 1) or per organ, e.g. liver=5,kidney=3,spleen=3,pancreas=5 (FLARE22)")
    p.add_argument("--hd95", action="store_true", help="also compute the 95th-percentile Hausdorff distance")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="tables and figures of the paper: cross-validation, external set, ablation",
                       description="Write a Markdown and self-contained HTML report: per-fold DSC/NSD tables, violin plots, "
                                   "qualitative figures, training curves, efficiency, model statistics and the SDM ablation.")
    _add_workspace(p)
    p.add_argument("--dataset", help="dataset name or id, when the workspace holds several")
    p.add_argument("--pred", type=Path, help="predictions of an external set (e.g. FLARE21 validation), with --gt")
    p.add_argument("--gt", type=Path, help="ground truth of the external set")
    p.add_argument("--images", type=Path, help="images of the external set, for the qualitative figure")
    p.add_argument("--out", type=Path, help="report folder (default: WORKSPACE/report)")
    p.add_argument("--tolerance", default="1", help="NSD tolerance in mm, as for evaluate (default 1)")
    p.add_argument("--workers", type=int, default=1, help="processes for scoring cases (default 1)")
    p.set_defaults(func=_cmd_report)

    from nnsdm.demo import DEFAULT_OUT, DEFAULTS

    p = sub.add_parser("demo", help="the whole pipeline on synthetic CT: data, plan, train, predict, evaluate, report",
                       description="Generate synthetic CT (training and held-out sets), check, plan (cpu-small), train the SDM "
                                   "model, predict and evaluate the held-out set, and write the report; summary.json holds the scores.")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--ablation", action="store_true", help="also train the sdm_weight 0 baseline and compare (paired Wilcoxon)")
    p.add_argument("--seeds", type=int, help="with --ablation: train both models with this many training seeds "
                   "(same data and budget) and report mean +- sd over seeds and a paired test over cases and seeds (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous demo's output folder")
    p.add_argument("--train-cases", type=int, help=f"training cases (default {DEFAULTS['train_cases']})")
    p.add_argument("--test-cases", type=int, help=f"held-out cases (default {DEFAULTS['test_cases']})")
    p.add_argument("--seed", type=int, help=f"random seed (default {DEFAULTS['seed']})")
    p.add_argument("--shape", type=_shape, help="phantoms' nominal shape z x y x x (default {})".format("x".join(map(str, DEFAULTS["shape"]))))
    p.add_argument("--spacing", type=_spacing, help="phantoms' nominal spacing in mm (default {})".format("x".join(map(str, DEFAULTS["spacing"]))))
    p.add_argument("--epochs", type=int, help=f"training epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--iterations", type=int, help=f"iterations per epoch (default {DEFAULTS['iterations']})")
    p.add_argument("--learning-rate", type=float, help=f"initial AdamW learning rate (default {DEFAULTS['learning_rate']})")
    p.add_argument("--workers", type=int, help="augmentation worker processes (default: CPU cores - 1)")
    p.add_argument("--tta", action="store_true", help="mirroring at prediction (only for models trained with mirroring)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device (default: CUDA if available)")
    p.set_defaults(func=_cmd_demo)
    return parser


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (so ``finally`` blocks clean up)."""


def _sigterm_handler(main_pid: int):
    """Raise :class:`Terminated` in this process; forked workers (multiprocessing ends its pools with
    SIGTERM) inherit the handler and die as by default instead."""
    import signal

    def handle(signum, frame) -> None:
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()

    return handle


def _os_error(exc: OSError) -> str:
    """One line for an operating-system failure: the path and the system's reason."""
    import errno

    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (free some space or write elsewhere)"
    elif exc.errno == errno.EFBIG:
        reason += " (the file-size limit, ulimit -f, was reached)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += " (choose a folder you can write to)"
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nnsdm`` command; returns the exit code.

    Problems become one line on stderr and exit 1: nnsdm's own (``NnsdmError``) and the operating
    system's (read-only or full disk, permission denied). Ctrl-C exits 130 and SIGTERM 143 (128 + the
    signal number, as shells report them); atomic writers have removed their temporary files by then.
    """
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm_handler(os.getpid())) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except NnsdmError as exc:
        print(f"nnsdm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nnsdm: interrupted (Ctrl-C); completed outputs are kept, rerun to finish", file=sys.stderr)
        return 130
    except Terminated:
        print("nnsdm: terminated (SIGTERM); completed outputs are kept, rerun to finish", file=sys.stderr)
        return 143
    except MemoryError:
        print("nnsdm: error: out of memory", file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout closed early (``nnsdm check ... | head``)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 141
    except OSError as exc:
        print(f"nnsdm: error: {_os_error(exc)}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:  # None: a handler installed outside Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        try:
            sys.stdout.flush()
        except OSError:
            pass


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

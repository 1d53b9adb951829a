"""Training one fold with the SDM trainer (:mod:`nnsdm.trainer`): options, resume and multi-GPU runs.

:class:`TrainingOptions` holds everything ``nnsdm train`` can be told; :func:`build_trainer` turns it
into an :class:`~nnsdm.trainer.nnsdmTrainer` object for the workspace's planned dataset (built here
directly, never looked up by class name, see :mod:`nnsdm.trainer`), and :func:`train` runs nnU-Net's
training loop and final validation, on one device or through nnU-Net's DDP support on several GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nnsdm.checkpoints import read_checkpoint
from nnsdm.device import resolve_cpu_precision, resolve_device
from nnsdm.errors import NnsdmError
from nnsdm.fileio import remove_stale_temporaries
from nnsdm.locking import hold
from nnsdm.model_folder import ModelFolder, trainer_name
from nnsdm.planning import CONFIGURATION
from nnsdm.workspace import Workspace

__all__ = ["TrainingOptions", "build_trainer", "train", "parse_fold"]


def parse_fold(fold) -> int | str:
    """``0``..``4`` or ``'all'`` (every training case); anything else is a one-line error."""
    if str(fold) == "all":
        return "all"
    if re.fullmatch(r"[0-9]+", str(fold)) and 0 <= int(fold) <= 4:
        return int(fold)
    raise NnsdmError(f"--fold {fold}: unknown fold (choose 0, 1, 2, 3, 4 or all)")


@dataclass(frozen=True)
class TrainingOptions:
    """How to train one fold (``fold='all'``: every training case). Defaults are nnU-Net's protocol (the paper's).

    * ``optimizer``: ``sgd`` (nnU-Net's SGD, Nesterov momentum 0.99, lr 0.01, poly decay) or ``adamw``
      (as nnU-Net's Adam trainer variants, the same poly schedule stepped every iteration instead of every
      epoch); ``learning_rate`` overrides the initial rate;
      ``mirroring=False`` trains and predicts without mirroring (as ``nnUNetTrainerNoMirroring``). AdamW
      without mirroring is ``nnsdm demo``'s short-budget recipe (its reasons: the README's Demo section).
    * ``cpu_precision`` (CPU only): ``bf16``, ``fp32`` or ``auto``, see :func:`nnsdm.device.resolve_cpu_precision`.
    * ``val_iterations``: validation batches per epoch (default: a fifth of ``iterations_per_epoch``).
    * ``resume`` continues from the fold's latest checkpoint: epoch counter, optimiser state, logs and
      the poly learning-rate schedule (a function of the epoch and iteration) carry on exactly. ``validate`` runs
      nnU-Net's final validation of the fold (``fold_K/validation/``); ``validation_tta=False`` skips its
      mirroring (8x faster on a CPU; the saved model keeps its mirroring axes for prediction).
    * ``workers``: augmentation processes per data loader (nnU-Net's ``nnUNet_n_proc_DA``); ``gpus`` > 1
      trains with DDP, one process per GPU.
    * ``epoch_callback``: called after every epoch with an :class:`nnsdm.trainer.EpochSummary`
      (single-process training only; DDP workers run in other processes).
    """

    workspace: Workspace
    fold: int | str
    dataset: str | None = None
    sdm_weight: float = 1.0
    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations: int | None = None
    save_every: int = 50
    device: str = "auto"
    optimizer: str = "sgd"
    learning_rate: float | None = None
    mirroring: bool = True
    cpu_precision: str = "auto"
    resume: bool = False
    validate: bool = True
    validation_tta: bool = True
    workers: int | None = None
    gpus: int = 1
    epoch_callback: Callable | None = None

    def __post_init__(self) -> None:
        """Every option checked before any work, each problem a one-line error."""
        object.__setattr__(self, "fold", parse_fold(self.fold))
        trainer_name(self.sdm_weight)  # rejects a negative weight
        counts = (self.epochs, self.iterations_per_epoch, self.save_every, 1 if self.val_iterations is None else self.val_iterations)
        if min(counts) < 1:
            raise NnsdmError("--epochs, --iterations-per-epoch, --val-iterations and --save-every must be at least 1")
        if self.gpus < 1:
            raise NnsdmError(f"--gpus {self.gpus}: must be at least 1")
        if self.gpus > 1 and self.device == "cpu":
            raise NnsdmError(f"--gpus {self.gpus} with --device cpu: multi-GPU training runs on CUDA "
                             "(use --device cuda, or one process on the CPU)")
        if self.optimizer not in ("sgd", "adamw"):
            raise NnsdmError(f"--optimizer {self.optimizer}: choose sgd (nnU-Net's) or adamw")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise NnsdmError(f"--lr {self.learning_rate}: must be positive")
        resolve_cpu_precision(self.cpu_precision)

    @property
    def model_folder(self) -> ModelFolder:
        """The model folder this training writes."""
        return ModelFolder.of(self.workspace.results, self.workspace.dataset_name(self.dataset), self.sdm_weight)


def _options(options: TrainingOptions | None, fields: dict) -> TrainingOptions:
    if options is not None and fields:
        raise TypeError("give either a TrainingOptions or its fields as keywords, not both")
    return options if options is not None else TrainingOptions(**fields)


def build_trainer(options: TrainingOptions | None = None, /, **fields):
    """An nnsdm trainer for one fold of the workspace's planned dataset, initialised on demand (nnU-Net's way).

    Takes a :class:`TrainingOptions` or its fields as keywords.
    """
    from nnsdm.trainer import trainer_class

    options = _options(options, fields)
    workspace = options.workspace
    name = workspace.dataset_name(options.dataset)  # before activate(): a wrong path must not create a workspace
    workspace.activate()
    pre = workspace.preprocessed / name
    plans = workspace.load_plans(name)
    if CONFIGURATION not in plans.get("configurations", {}):
        raise NnsdmError(f"{workspace.plans_file(name)}: no {CONFIGURATION} configuration in the plans")
    if not (pre / plans["configurations"][CONFIGURATION].get("data_identifier", "")).is_dir():
        raise NnsdmError(f"{pre}: preprocessed data missing (run `nnsdm plan` again)")
    dataset_json = json.loads((pre / "dataset.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False
    trainer = trainer_class(options.sdm_weight)(plans, CONFIGURATION, options.fold, dataset_json,
                                                resolve_device(options.device))
    trainer.num_epochs = int(options.epochs)
    trainer.num_iterations_per_epoch = int(options.iterations_per_epoch)
    val_iterations = options.val_iterations if options.val_iterations is not None else max(1, options.iterations_per_epoch // 5)
    trainer.num_val_iterations_per_epoch = int(val_iterations)
    trainer.save_every = max(1, int(options.save_every))
    trainer.optimizer_name, trainer.mirroring = options.optimizer, bool(options.mirroring)
    trainer.cpu_precision, trainer.epoch_callback = options.cpu_precision, options.epoch_callback
    if options.learning_rate is not None:
        trainer.initial_lr = float(options.learning_rate)
    return trainer


def train(options: TrainingOptions | None = None, /, **fields) -> Path:
    """Train one fold and return the model folder; takes a :class:`TrainingOptions` or its fields as keywords."""
    options = _options(options, fields)
    if options.workers is not None:
        os.environ["nnUNet_n_proc_DA"] = str(max(0, int(options.workers)))
    fold_folder = options.model_folder.fold_folder(options.fold)
    with hold(fold_folder, "train"):  # one training per fold folder
        remove_stale_temporaries(fold_folder)  # an interrupted run's half-written checkpoint or figure
        if options.gpus > 1:
            return _train_ddp(dataclasses.replace(options, device="cuda", epoch_callback=None))
        trainer = build_trainer(options)
        _run(trainer, options)
    return Path(trainer.output_folder_base)


def _run(trainer, options: TrainingOptions) -> None:
    if options.resume:
        checkpoint = ModelFolder(Path(trainer.output_folder_base)).resume_checkpoint(options.fold)
        if checkpoint is None:  # killed before its first checkpoint: start the fold afresh, as nnU-Net's --c does
            print(f"{trainer.output_folder}: no checkpoint yet; training the fold from its first epoch", file=sys.stderr)
        else:
            trainer.load_checkpoint(read_checkpoint(checkpoint, device=trainer.device, for_training=True))
            if trainer.current_epoch > trainer.num_epochs:
                raise NnsdmError(f"{checkpoint}: already trained {trainer.current_epoch} epochs, more than --epochs {trainer.num_epochs}")
    if torch.cuda.is_available() and trainer.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        trainer.run_training()
    except BaseException:
        _stop_data_loaders(trainer)
        raise
    if options.validate:
        validate_fold(trainer, tta=options.validation_tta)


def validate_fold(trainer, *, tta: bool = True) -> None:
    """nnU-Net's final validation of the trained fold (``fold_K/validation/``); ``tta=False`` without mirroring."""
    axes = trainer.inference_allowed_mirroring_axes
    if not tta:
        trainer.inference_allowed_mirroring_axes = None  # the final checkpoint is already written
    trainer.perform_actual_validation(False)
    trainer.inference_allowed_mirroring_axes = axes


def _stop_data_loaders(trainer) -> None:
    """Shut the augmentation workers down after a failed or interrupted training (nnU-Net only does so at the end)."""
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        finish = getattr(loader, "_finish", None)
        if finish is not None:
            try:
                finish()
            except Exception:
                pass


def _ddp_worker(rank: int, world_size: int, port: int, options: TrainingOptions) -> None:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    torch.cuda.set_device(rank)
    try:
        _run(build_trainer(options), options)
    finally:
        dist.destroy_process_group()


def _train_ddp(options: TrainingOptions) -> Path:
    """Multi-GPU training through nnU-Net's DDP support (one process per GPU)."""
    import socket

    import torch.multiprocessing as mp

    if not torch.cuda.is_available() or torch.cuda.device_count() < options.gpus:
        raise NnsdmError(f"--gpus {options.gpus}: only {torch.cuda.device_count()} CUDA device(s) available")
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(options.gpus, port, options), nprocs=options.gpus, join=True)
    return options.model_folder.path

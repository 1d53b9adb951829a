"""SDM multi-task training on nnU-Net v2's trainer.

Seams with nnU-Net (all documented nnU-Net extension points; nnU-Net's own training loop, train and
validation steps, augmentation, sampling, optimiser, schedule and final validation run unchanged):

* ``build_network_architecture`` returns :class:`nnsdm.network.SDMUNet` (nnU-Net's net + SDM head);
* ``get_training_transforms`` / ``get_validation_transforms`` append :class:`SDMTargetTransform`, which
  computes the SDM targets per patch, after spatial augmentation, inside the augmentation workers, at
  every deep-supervision resolution, and lets them ride along as extra entries of the target list;
* ``_build_loss`` wraps nnU-Net's deep-supervised Dice + CE in :class:`SegAndSDMLoss` (+ weight x MSE);
* the trainer object is built here directly, never looked up by class name (that lookup imports
  torchvision and crashes with the CPU torch build, see FACTS.md).

``sdm_weight == 0`` builds nnU-Net's plain network and loss and computes no SDM target: the baseline.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from torch import nn

from nnsdm.checkpoints import read_checkpoint
from nnsdm.errors import NnsdmError
from nnsdm.network import DeepSupervisionOutputs, build_network, resolve_cpu_precision, use_cpu_fast_path
from nnsdm.planning import CONFIGURATION, PLANS_IDENTIFIER
from nnsdm.sdm import signed_distance_map
from nnsdm.workspace import Workspace

SDM_LOG_KEYS = ("train_seg_losses", "train_sdm_losses", "val_seg_losses", "val_sdm_losses")
METADATA_FILE = "nnsdm.json"


class SDMTargetTransform(BasicTransform):
    """Append one SDM target per deep-supervision scale to the segmentation target list.

    Runs per sample in nnU-Net's augmentation workers, after spatial augmentation and after the
    deep-supervision downsampling of the segmentation, so each target matches its output's resolution
    (spacing = planned spacing / scale).
    """

    def __init__(self, classes, spacing, ds_scales, weights=None) -> None:
        super().__init__()
        self.classes = tuple(int(c) for c in classes)
        self.spacing = tuple(float(s) for s in spacing)
        self.ds_scales = [tuple(s) for s in ds_scales] if ds_scales is not None else None
        # loss weight per scale: a scale whose weight is 0 gets an empty placeholder, not a target nobody reads
        self.weights = [float(w) for w in weights] if weights is not None else None

    def apply(self, data_dict: dict, **params) -> dict:
        seg = data_dict["segmentation"]
        segs = list(seg) if isinstance(seg, (list, tuple)) else [seg]
        scales = self.ds_scales or [(1.0,) * len(self.spacing)]
        weights = self.weights or [1.0] * len(scales)
        sdms = []
        for s, scale, weight in zip(segs, scales, weights):
            if weight == 0:
                sdms.append(torch.zeros(0))
                continue
            spacing = [sp / f for sp, f in zip(self.spacing, scale)]
            labels = s[0].numpy() if isinstance(s, torch.Tensor) else np.asarray(s[0])
            sdms.append(torch.from_numpy(signed_distance_map(labels, self.classes, spacing)))
        data_dict["segmentation"] = segs + sdms
        return data_dict


class SegAndSDMLoss(nn.Module):
    """nnU-Net's deep-supervised Dice + CE plus ``sdm_weight`` x MSE(tanh output, SDM target).

    The MSE terms use the same deep-supervision weights as the segmentation loss. The two parts of the
    last call are kept (detached) for logging.
    """

    def __init__(self, seg_loss: nn.Module, ds_weights, sdm_weight: float) -> None:
        super().__init__()
        self.seg_loss = seg_loss
        self.ds_weights = [float(w) for w in ds_weights]
        self.sdm_weight = float(sdm_weight)
        self.last_seg = self.last_sdm = None

    def forward(self, output: DeepSupervisionOutputs, target: list) -> torch.Tensor:
        n = len(output)
        seg = self.seg_loss(output, target[:n])
        sdm = sum(
            w * nn.functional.mse_loss(o.float(), t.float())
            for w, o, t in zip(self.ds_weights, output.sdm, target[n:])
            if w != 0
        )
        self.last_seg, self.last_sdm = seg.detach(), sdm.detach()
        return seg + self.sdm_weight * sdm


def _trainer_base():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return nnUNetTrainer


def trainer_class(sdm_weight: float):
    """The nnsdm trainer class for ``sdm_weight``; its name names the model folder.

    ``nnsdmTrainer`` for weight 1 (the paper), ``nnsdmTrainer_sdm0`` for the baseline, e.g.
    ``nnsdmTrainer_sdm0p5`` for 0.5.
    """
    if sdm_weight < 0:
        raise NnsdmError(f"--sdm-weight {sdm_weight}: must be >= 0")
    base = _trainer_base()
    name = "nnsdmTrainer" if sdm_weight == 1 else "nnsdmTrainer_sdm" + f"{sdm_weight:g}".replace(".", "p").replace("-", "m")

    class Trainer(base):
        """nnU-Net's trainer with the SDM head, SDM targets and SDM loss (see module docstring)."""

        def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.sdm_weight = float(sdm_weight)
            self.optimizer_name = "sgd"  # nnU-Net's SGD, Nesterov momentum 0.99; "adamw" as nnU-Net's Adam variants
            self.mirroring = True  # False as nnU-Net's nnUNetTrainerNoMirroring (training and prediction)
            self.cpu_precision = "auto"  # on a CPU: bf16 autocast where the CPU has native bf16, else fp32
            self.progress_bar = None
            if self.sdm_weight > 0:
                for key in SDM_LOG_KEYS:
                    self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

        # --- network -------------------------------------------------------------------------------
        def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision: bool = True):
            n_sdm = len(self.label_manager.foreground_labels) if self.sdm_weight > 0 else 0
            return build_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                 num_sdm_channels=n_sdm, deep_supervision=enable_deep_supervision)

        def initialize(self):
            super().initialize()
            if self.device.type == "cpu":
                use_cpu_fast_path(self.network, bf16=self.cpu_precision_used == "bf16")
                self._threads_before = torch.get_num_threads()
                torch.set_num_threads(cpu_training_threads())

        def on_train_end(self):
            super().on_train_end()
            if getattr(self, "_threads_before", None):
                torch.set_num_threads(self._threads_before)  # prediction afterwards uses every core again

        @property
        def cpu_precision_used(self) -> str | None:
            """The CPU precision training runs in (None on CUDA, where nnU-Net's fp16 autocast applies)."""
            return resolve_cpu_precision(self.cpu_precision) if self.device.type == "cpu" else None

        # --- optimiser and mirroring (nnU-Net's defaults unless asked otherwise) -------------------------
        def configure_optimizers(self):
            if self.optimizer_name == "sgd":
                return super().configure_optimizers()
            from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

            optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
            return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            rotation, dummy_2d, initial_patch_size, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            if not self.mirroring:
                self.inference_allowed_mirroring_axes = mirror_axes = None
            return rotation, dummy_2d, initial_patch_size, mirror_axes

        # --- targets -------------------------------------------------------------------------------
        def _with_sdm_targets(self, compose, deep_supervision_scales):
            if self.sdm_weight > 0:
                weights = getattr(getattr(self, "loss", None), "ds_weights", None)  # set by initialize()
                compose.transforms.append(SDMTargetTransform(self.label_manager.foreground_labels,
                                          self.configuration_manager.spacing, deep_supervision_scales, weights))
            return compose

        def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                    do_dummy_2d_data_aug, **kwargs):
            compose = base.get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                                   do_dummy_2d_data_aug, **kwargs)
            return self._with_sdm_targets(compose, deep_supervision_scales)

        def get_validation_transforms(self, deep_supervision_scales, **kwargs):
            compose = base.get_validation_transforms(deep_supervision_scales, **kwargs)
            return self._with_sdm_targets(compose, deep_supervision_scales)

        # --- loss ----------------------------------------------------------------------------------
        def _build_loss(self):
            seg_loss = super()._build_loss()
            if self.sdm_weight == 0:
                return seg_loss
            if not self.enable_deep_supervision:
                raise NnsdmError("SDM training needs deep supervision (nnU-Net's default)")
            return SegAndSDMLoss(seg_loss, seg_loss.weight_factors, self.sdm_weight)

        def train_step(self, batch: dict) -> dict:
            result = super().train_step(batch)
            self._add_loss_parts(result)
            if self.progress_bar is not None:
                self.progress_bar.update()
                self.progress_bar.set_postfix(loss=f"{float(result['loss']):.3f}", refresh=False)
            return result

        def validation_step(self, batch: dict) -> dict:
            result = super().validation_step(batch)
            self._add_loss_parts(result)
            return result

        def _add_loss_parts(self, result: dict) -> None:
            if isinstance(self.loss, SegAndSDMLoss):
                result["seg_loss"] = self.loss.last_seg.cpu().numpy()
                result["sdm_loss"] = self.loss.last_sdm.cpu().numpy()

        # --- logging -------------------------------------------------------------------------------
        def on_train_start(self):
            super().on_train_start()
            if self.local_rank == 0:
                from nnsdm.inference.io import majority_orientation

                gt = sorted((Path(self.preprocessed_dataset_folder_base) / "gt_segmentations").glob("*"))
                write_metadata(Path(self.output_folder_base), sdm_weight=self.sdm_weight,
                               classes=[int(c) for c in self.label_manager.foreground_labels],
                               orientation=majority_orientation(gt),
                               recipe={"optimizer": self.optimizer_name, "initial_lr": self.initial_lr,
                                       "mirroring": self.mirroring, "cpu_precision": self.cpu_precision_used})

        def on_train_epoch_start(self):
            super().on_train_epoch_start()
            if self.local_rank == 0:
                from tqdm import tqdm

                # disable=None: only on a terminal; in a log file the bar's redraws would pile up, and the
                # per-epoch log lines already show progress there
                self.progress_bar = tqdm(total=self.num_iterations_per_epoch, leave=False, dynamic_ncols=True,
                                         disable=None, desc=f"epoch {self.current_epoch + 1}/{self.num_epochs}")

        def on_train_epoch_end(self, train_outputs):
            if self.progress_bar is not None:
                self.progress_bar.close()
                self.progress_bar = None
            super().on_train_epoch_end(train_outputs)
            self._log_parts("train", train_outputs)

        def on_validation_epoch_end(self, val_outputs):
            super().on_validation_epoch_end(val_outputs)
            self._log_parts("val", val_outputs)

        def _log_parts(self, split: str, outputs: list) -> None:
            if self.sdm_weight == 0:
                return
            for part in ("seg", "sdm"):
                value = float(np.mean([o[f"{part}_loss"] for o in outputs]))
                if self.is_ddp:
                    import torch.distributed as dist

                    gathered = [None] * dist.get_world_size()
                    dist.all_gather_object(gathered, value)
                    value = float(np.mean(gathered))
                self.logger.log(f"{split}_{part}_losses", value, self.current_epoch)

        def on_epoch_end(self):
            if self.sdm_weight > 0:
                get = lambda k: self.logger.get_value(k, step=-1)  # noqa: E731
                self.print_to_log_file(f"train seg loss {get('train_seg_losses'):.4f} sdm loss {get('train_sdm_losses'):.4f}; "
                                       f"val seg loss {get('val_seg_losses'):.4f} sdm loss {get('val_sdm_losses'):.4f}")
                if self.local_rank == 0:
                    plot_sdm_progress(self.logger.local_logger.my_fantastic_logging, Path(self.output_folder) / "progress_sdm.png")
            super().on_epoch_end()

        # --- checkpoints ---------------------------------------------------------------------------
        def save_checkpoint(self, filename: str) -> None:
            """nnU-Net's checkpoint, written to a temporary name and renamed: an interrupted save keeps the old one."""
            tmp = f"{filename}.tmp"
            super().save_checkpoint(tmp)
            if os.path.isfile(tmp):
                os.replace(tmp, filename)

    Trainer.__name__ = Trainer.__qualname__ = name
    return Trainer


def write_metadata(model_folder: Path, *, sdm_weight: float, classes: list[int], orientation: str | None,
                   recipe: dict) -> None:
    """``nnsdm.json`` in the model folder: what nnsdm needs to rebuild the network for inference.

    ``orientation``: the axis orientation code of most training images; ``predict`` reorients inputs
    stored otherwise to it (nnU-Net itself never reorients) and maps the result back.
    """
    from nnsdm import __version__
    from nnsdm.fileio import write_text

    data = {"nnsdm_version": __version__, "sdm_weight": sdm_weight, "sdm_classes": classes,
            "configuration": CONFIGURATION, "plans": PLANS_IDENTIFIER, "orientation": orientation, "training": recipe}
    write_text(model_folder / METADATA_FILE, json.dumps(data, indent=2))


def plot_sdm_progress(log: dict, path: Path) -> None:
    """Training curves of the two loss parts (segmentation Dice + CE, and SDM MSE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnsdm.fileio import atomic_path

    epochs = min(len(log[k]) for k in SDM_LOG_KEYS)
    if epochs == 0:
        return
    x = np.arange(1, epochs + 1)
    # matplotlib's default style: nnU-Net's own progress plot changes the global one (seaborn, font scale 2.5)
    with matplotlib.style.context("default"), atomic_path(path) as tmp:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for ax, part, title in ((ax1, "seg", "segmentation loss (Dice + CE)"), (ax2, "sdm", "SDM loss (MSE)")):
            ax.plot(x, log[f"train_{part}_losses"][:epochs], label="train")
            ax.plot(x, log[f"val_{part}_losses"][:epochs], label="validation")
            ax.set(title=title, xlabel="epoch")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(tmp, dpi=80)
        plt.close(fig)


def cpu_training_threads(cores: int | None = None) -> int:
    """Torch threads for training on a CPU: the cores nnU-Net's augmentation workers leave free, at least 1.

    On 2 cores with one worker that is 1 thread: the step and the augmentation (with the SDM targets) each
    get a core. Two torch threads beside a busy worker would share 2 cores among 3 busy threads, and the
    step's threads stall at every synchronisation point while one of them waits for a core.
    """
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    cores = cores or os.cpu_count() or 1
    return max(1, cores - get_allowed_n_proc_DA())


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise NnsdmError("--device cuda: no CUDA device is available to this torch build")
    if device not in ("cpu", "cuda"):
        raise NnsdmError(f"--device {device}: choose auto, cpu or cuda")
    return torch.device(device)


def parse_fold(fold) -> int | str:
    if str(fold) == "all":
        return "all"
    if re.fullmatch(r"[0-9]+", str(fold)) and 0 <= int(fold) <= 4:
        return int(fold)
    raise NnsdmError(f"--fold {fold}: unknown fold (choose 0, 1, 2, 3, 4 or all)")


def build_trainer(
    *,
    workspace: Workspace,
    fold: int | str,
    dataset: str | None = None,
    sdm_weight: float = 1.0,
    epochs: int = 1000,
    iterations_per_epoch: int = 250,
    val_iterations: int | None = None,
    save_every: int = 50,
    device: str = "auto",
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    mirroring: bool = True,
    cpu_precision: str = "auto",
):
    """An initialised-on-demand nnsdm trainer for one fold of the workspace's planned dataset.

    Defaults are nnU-Net's protocol (the paper's): SGD with Nesterov momentum 0.99 at lr 0.01 and poly
    decay, mirroring in training and prediction. ``optimizer="adamw"`` (as nnU-Net's Adam trainer
    variants, same poly schedule) and ``mirroring=False`` (as ``nnUNetTrainerNoMirroring``) are the
    short-budget recipe of ``nnsdm demo``. ``cpu_precision`` (CPU only): ``bf16`` trains under bfloat16
    autocast, ``fp32`` in full precision, ``auto`` picks bf16 where the CPU computes it natively; both use
    the channels-last layout (see :func:`nnsdm.network.use_cpu_fast_path`). On CUDA nnU-Net's own fp16
    autocast applies.
    """
    name = workspace.dataset_name(dataset)  # before activate(): a wrong path must not create a workspace
    workspace.activate()
    pre = workspace.preprocessed / name
    plans = workspace.load_plans(name)
    if CONFIGURATION not in plans.get("configurations", {}):
        raise NnsdmError(f"{workspace.plans_file(name)}: no {CONFIGURATION} configuration in the plans")
    if not (pre / plans["configurations"][CONFIGURATION].get("data_identifier", "")).is_dir():
        raise NnsdmError(f"{pre}: preprocessed data missing (run `nnsdm plan` again)")
    if epochs < 1 or iterations_per_epoch < 1:
        raise NnsdmError("--epochs and --iterations-per-epoch must be at least 1")
    if optimizer not in ("sgd", "adamw"):
        raise NnsdmError(f"--optimizer {optimizer}: choose sgd (nnU-Net's) or adamw")
    if learning_rate is not None and not learning_rate > 0:
        raise NnsdmError(f"--lr {learning_rate}: must be positive")
    resolve_cpu_precision(cpu_precision)  # a clear error before any work
    dataset_json = json.loads((pre / "dataset.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False
    cls = trainer_class(sdm_weight)
    trainer = cls(plans, CONFIGURATION, parse_fold(fold), dataset_json, resolve_device(device))
    trainer.num_epochs = int(epochs)
    trainer.num_iterations_per_epoch = int(iterations_per_epoch)
    trainer.num_val_iterations_per_epoch = int(val_iterations if val_iterations is not None else max(1, iterations_per_epoch // 5))
    trainer.save_every = max(1, int(save_every))
    trainer.optimizer_name, trainer.mirroring, trainer.cpu_precision = optimizer, bool(mirroring), cpu_precision
    if learning_rate is not None:
        trainer.initial_lr = float(learning_rate)
    return trainer


def find_resume_checkpoint(fold_folder: Path) -> Path | None:
    """The checkpoint ``--continue`` starts from: final, else latest, else best (nnU-Net's order)."""
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
        if (fold_folder / name).is_file():
            return fold_folder / name
    return None


def train(
    *,
    workspace: Workspace,
    fold: int | str,
    dataset: str | None = None,
    sdm_weight: float = 1.0,
    epochs: int = 1000,
    iterations_per_epoch: int = 250,
    val_iterations: int | None = None,
    save_every: int = 50,
    device: str = "auto",
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    mirroring: bool = True,
    cpu_precision: str = "auto",
    resume: bool = False,
    validate: bool = True,
    validation_tta: bool = True,
    workers: int | None = None,
    gpus: int = 1,
) -> Path:
    """Train one fold (``'all'``: every training case) and return the model folder.

    ``resume`` continues from the fold's latest checkpoint: epoch counter, optimiser state, logs and
    the poly learning-rate schedule (a function of the epoch) carry on exactly. ``validate`` runs
    nnU-Net's final validation of the fold (``fold_K/validation/``); ``validation_tta=False`` skips its
    mirroring (8x faster on a CPU; the saved model keeps its mirroring axes for prediction).
    """
    if workers is not None:
        os.environ["nnUNet_n_proc_DA"] = str(max(0, int(workers)))
    options = dict(workspace=workspace, fold=fold, dataset=dataset, sdm_weight=sdm_weight, epochs=epochs,
                   iterations_per_epoch=iterations_per_epoch, val_iterations=val_iterations, save_every=save_every,
                   device=device, optimizer=optimizer, learning_rate=learning_rate, mirroring=mirroring,
                   cpu_precision=cpu_precision)
    if gpus > 1:
        return _train_ddp(gpus, {**options, "device": "cuda", "resume": resume, "validate": validate,
                                 "validation_tta": validation_tta})
    trainer = build_trainer(**options)
    _run(trainer, resume=resume, validate=validate, validation_tta=validation_tta)
    return Path(trainer.output_folder_base)


def _run(trainer, *, resume: bool, validate: bool, validation_tta: bool = True) -> None:
    if resume:
        checkpoint = find_resume_checkpoint(Path(trainer.output_folder))
        if checkpoint is None:
            raise NnsdmError(f"{trainer.output_folder}: no checkpoint to continue from")
        read_checkpoint(checkpoint, device=trainer.device, for_training=True)  # a clear error for a corrupt file
        trainer.load_checkpoint(str(checkpoint))  # nnU-Net 2.8.1 only accepts a file name here
        if trainer.current_epoch > trainer.num_epochs:
            raise NnsdmError(f"{checkpoint}: already trained {trainer.current_epoch} epochs, more than --epochs {trainer.num_epochs}")
    if torch.cuda.is_available() and trainer.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        trainer.run_training()
    except BaseException:
        _stop_data_loaders(trainer)
        raise
    if validate:
        axes = trainer.inference_allowed_mirroring_axes
        if not validation_tta:
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


def _ddp_worker(rank: int, world_size: int, port: int, kwargs: dict) -> None:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    torch.cuda.set_device(rank)
    try:
        run_options = {k: kwargs.pop(k) for k in ("resume", "validate", "validation_tta")}
        _run(build_trainer(**kwargs), **run_options)
    finally:
        dist.destroy_process_group()


def _train_ddp(gpus: int, kwargs: dict) -> Path:
    """Multi-GPU training through nnU-Net's DDP support (one process per GPU)."""
    import socket

    import torch.multiprocessing as mp

    if not torch.cuda.is_available() or torch.cuda.device_count() < gpus:
        raise NnsdmError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) available")
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(gpus, port, kwargs), nprocs=gpus, join=True)
    trainer_name = trainer_class(kwargs["sdm_weight"]).__name__
    ws: Workspace = kwargs["workspace"]
    return ws.results / ws.dataset_name(kwargs["dataset"]) / f"{trainer_name}__{PLANS_IDENTIFIER}__{CONFIGURATION}"

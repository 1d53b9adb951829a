"""The SDM trainer: nnU-Net v2's trainer with the SDM head, SDM targets and SDM loss.

Seams with nnU-Net (all documented nnU-Net extension points; nnU-Net's own training loop, train and
validation steps, augmentation, sampling, optimiser, schedule and final validation run unchanged, except
that the demo's AdamW recipe steps the poly schedule every iteration, see :meth:`nnsdmTrainer.train_step`):

* ``build_network_architecture`` returns :class:`nnsdm.network.SDMUNet` (nnU-Net's net + SDM head);
* ``get_training_transforms`` / ``get_validation_transforms`` append :class:`SDMTargetTransform`, which
  computes the SDM targets per patch, after spatial augmentation, inside the augmentation workers, at
  every deep-supervision resolution, and lets them ride along as extra entries of the target list;
* ``_build_loss`` wraps nnU-Net's deep-supervised Dice + CE in :class:`SegAndSDMLoss` (+ weight x MSE);
* ``on_epoch_end`` logs the two loss parts, plots them and calls the trainer's ``epoch_callback``
  (:class:`EpochSummary`) for progress reports that do not depend on nnU-Net's printed wording;
* ``on_train_start``, training on a CPU, runs the augmentation workers at the lowest CPU priority
  (:func:`nnsdm.device.lower_worker_priority`).

:class:`nnsdmTrainer` is the paper's trainer (``sdm_weight`` 1); :func:`trainer_class` makes the
subclass for another weight, named by :func:`nnsdm.model_folder.trainer_name` (the name names the model
folder and is stored in checkpoints). ``sdm_weight == 0`` builds nnU-Net's plain network and loss and
computes no SDM target: the baseline. nnsdm constructs trainer objects itself and never lets nnU-Net
look a trainer up by class name: that lookup imports every module of nnU-Net's trainer package, some of
which import torchvision, which fails with CPU-only torch builds.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnsdm.checkpoints import read_checkpoint
from nnsdm.device import cpu_training_threads, lower_worker_priority, resolve_cpu_precision, use_cpu_fast_path
from nnsdm.errors import NnsdmError
from nnsdm.model_folder import TRAINER_NAME, ModelFolder, trainer_name
from nnsdm.network import DeepSupervisionOutputs, build_network
from nnsdm.orientation import majority_orientation
from nnsdm.sdm import signed_distance_map

__all__ = ["nnsdmTrainer", "trainer_class", "EpochSummary", "SDMTargetTransform", "SegAndSDMLoss", "SDM_LOG_KEYS",
           "plot_sdm_progress"]

SDM_LOG_KEYS = ("train_seg_losses", "train_sdm_losses", "val_seg_losses", "val_sdm_losses")


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


@dataclass(frozen=True)
class EpochSummary:
    """What one finished epoch reports to ``nnsdmTrainer.epoch_callback`` (values as nnU-Net logged them).

    ``epoch`` counts from 1; ``pseudo_dice`` holds nnU-Net's pseudo Dice per foreground label on the
    validation patches; ``seg_loss``/``sdm_loss`` are the training loss parts (``None`` for ``sdm_weight 0``).
    """

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    pseudo_dice: tuple[float, ...]
    seconds: float
    seg_loss: float | None = None
    sdm_loss: float | None = None


class nnsdmTrainer(nnUNetTrainer):
    """nnU-Net's trainer with the SDM head, SDM targets and SDM loss (see the module docstring).

    Settings beyond nnU-Net's are plain attributes, set before ``initialize()`` (``nnsdm.training``
    sets them from its :class:`~nnsdm.training.TrainingOptions`): ``optimizer_name`` (``sgd``: nnU-Net's
    SGD with Nesterov momentum 0.99; ``adamw``: as nnU-Net's Adam variants, with the poly schedule
    stepped every iteration rather than every epoch, see :meth:`train_step`), ``mirroring`` (False as
    nnU-Net's ``nnUNetTrainerNoMirroring``, in training and prediction), ``cpu_precision`` (on a CPU:
    ``auto``, ``bf16`` or ``fp32``, see :mod:`nnsdm.device`) and ``epoch_callback`` (called on rank 0
    with an :class:`EpochSummary` after every epoch).
    """

    sdm_weight: float = 1.0  # the class's SDM loss weight; subclasses from trainer_class() set theirs

    def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.sdm_weight = float(type(self).sdm_weight)
        self.optimizer_name = "sgd"
        self.mirroring = True
        self.cpu_precision = "auto"
        self.epoch_callback: Callable[[EpochSummary], None] | None = None
        self.progress_bar = None
        self._iteration_in_epoch = 0
        if self.sdm_weight > 0:
            for key in SDM_LOG_KEYS:
                self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

    # --- network -----------------------------------------------------------------------------------
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
            torch.set_num_threads(cpu_training_threads(bf16=self.cpu_precision_used == "bf16"))

    def on_train_end(self):
        super().on_train_end()
        if getattr(self, "_threads_before", None):
            torch.set_num_threads(self._threads_before)  # prediction afterwards uses every core again

    @property
    def cpu_precision_used(self) -> str | None:
        """The CPU precision training runs in (None on CUDA, where nnU-Net's fp16 autocast applies)."""
        return resolve_cpu_precision(self.cpu_precision) if self.device.type == "cpu" else None

    # --- optimiser and mirroring (nnU-Net's defaults unless asked otherwise) ---------------------------
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

    # --- targets -----------------------------------------------------------------------------------
    def _with_sdm_targets(self, compose, deep_supervision_scales):
        if self.sdm_weight > 0:
            weights = getattr(getattr(self, "loss", None), "ds_weights", None)  # set by initialize()
            compose.transforms.append(SDMTargetTransform(self.label_manager.foreground_labels,
                                                         self.configuration_manager.spacing, deep_supervision_scales,
                                                         weights))
        return compose

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, **kwargs):
        compose = nnUNetTrainer.get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales,
                                                        mirror_axes, do_dummy_2d_data_aug, **kwargs)
        return self._with_sdm_targets(compose, deep_supervision_scales)

    def get_validation_transforms(self, deep_supervision_scales, **kwargs):
        compose = nnUNetTrainer.get_validation_transforms(deep_supervision_scales, **kwargs)
        return self._with_sdm_targets(compose, deep_supervision_scales)

    # --- loss --------------------------------------------------------------------------------------
    def _build_loss(self):
        seg_loss = super()._build_loss()
        if self.sdm_weight == 0:
            return seg_loss
        if not self.enable_deep_supervision:
            raise NnsdmError("SDM training needs deep supervision (nnU-Net's default)")
        return SegAndSDMLoss(seg_loss, seg_loss.weight_factors, self.sdm_weight)

    def train_step(self, batch: dict) -> dict:
        if self.optimizer_name == "adamw":
            # The AdamW recipe is for short budgets (the demo: 20 epochs). nnU-Net steps its poly schedule
            # once per epoch, which there leaves a whole last epoch at 1/15 of the initial rate; stepping
            # it per iteration (the same curve, sampled finely) ends training at a rate near 0 (README, "recipe").
            self.lr_scheduler.step(self.current_epoch + self._iteration_in_epoch / self.num_iterations_per_epoch)
        self._iteration_in_epoch += 1
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

    # --- logging -----------------------------------------------------------------------------------
    def on_train_start(self):
        super().on_train_start()  # creates the data loaders and starts their workers
        if self.device.type == "cpu":
            lower_worker_priority(self.dataloader_train, self.dataloader_val)
        if self.local_rank == 0:
            gt = sorted((Path(self.preprocessed_dataset_folder_base) / "gt_segmentations").glob("*"))
            ModelFolder(Path(self.output_folder_base)).write_metadata(
                sdm_weight=self.sdm_weight, classes=[int(c) for c in self.label_manager.foreground_labels],
                orientation=majority_orientation(gt),
                recipe={"optimizer": self.optimizer_name, "initial_lr": self.initial_lr,
                        "mirroring": self.mirroring, "cpu_precision": self.cpu_precision_used})

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # steps the learning rate to this epoch
        self._iteration_in_epoch = 0
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
        last = lambda k: self.logger.get_value(k, step=-1)  # noqa: E731
        if self.sdm_weight > 0:
            self.print_to_log_file(f"train seg loss {last('train_seg_losses'):.4f} sdm loss {last('train_sdm_losses'):.4f}; "
                                   f"val seg loss {last('val_seg_losses'):.4f} sdm loss {last('val_sdm_losses'):.4f}")
            if self.local_rank == 0:
                plot_sdm_progress(self.logger.local_logger.my_fantastic_logging, Path(self.output_folder) / "progress_sdm.png")
        super().on_epoch_end()  # logs the epoch's end time, saves checkpoints, counts the epoch
        if self.epoch_callback is not None and self.local_rank == 0:
            self.epoch_callback(EpochSummary(
                epoch=self.current_epoch, epochs=self.num_epochs, train_loss=float(last("train_losses")),
                val_loss=float(last("val_losses")), pseudo_dice=tuple(float(d) for d in last("dice_per_class_or_region")),
                seconds=float(last("epoch_end_timestamps") - last("epoch_start_timestamps")),
                seg_loss=float(last("train_seg_losses")) if self.sdm_weight > 0 else None,
                sdm_loss=float(last("train_sdm_losses")) if self.sdm_weight > 0 else None))

    # --- checkpoints -------------------------------------------------------------------------------
    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's resume, from a checkpoint read by :func:`read_checkpoint` (never an unsafe unpickling).

        nnU-Net 2.8.1 reads the file itself with ``weights_only=False`` and fails on a dict, so its body
        is repeated here on the dict.
        """
        checkpoint = filename_or_checkpoint
        if not isinstance(checkpoint, dict):
            checkpoint = read_checkpoint(Path(checkpoint), device=self.device, for_training=True)
        if not self.was_initialized:
            self.initialize()
        network = self.network.module if self.is_ddp else self.network
        network = getattr(network, "_orig_mod", network)  # torch.compile's wrapper
        own = network.state_dict().keys()
        weights = {k[7:] if k not in own and k.startswith("module.") else k: v
                   for k, v in checkpoint["network_weights"].items()}
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        network.load_state_dict(weights)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary name and renamed: an interrupted save keeps the old one."""
        tmp = f"{filename}.tmp"
        super().save_checkpoint(tmp)
        if os.path.isfile(tmp):
            os.replace(tmp, filename)


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


@functools.lru_cache(maxsize=None)
def _variant(name: str, sdm_weight: float) -> type[nnsdmTrainer]:
    return type(name, (nnsdmTrainer,), {"sdm_weight": sdm_weight, "__module__": __name__, "__qualname__": name,
                                        "__doc__": f"{TRAINER_NAME} with SDM loss weight {sdm_weight!r}."})


def trainer_class(sdm_weight: float) -> type[nnsdmTrainer]:
    """The trainer class for ``sdm_weight``: :class:`nnsdmTrainer` for 1, else a subclass named by
    :func:`nnsdm.model_folder.trainer_name` (``nnsdmTrainer_sdm0`` for the baseline), the same class for
    the same weight."""
    name = trainer_name(sdm_weight)  # also rejects a negative weight
    return nnsdmTrainer if name == TRAINER_NAME else _variant(name, float(sdm_weight) + 0.0)

"""Export an nnsdm model as a stock nnU-Net v2 model folder, and count its size and cost.

The SDM head only shapes training: at inference the segmentation comes from nnU-Net's own network.
Dropping the head's weights and naming nnU-Net's own trainer gives a folder that plain
``nnUNetv2_predict_from_modelfolder`` (or ``nnUNetv2_predict`` with the folder placed under
``nnUNet_results``) runs with predictions identical to nnsdm's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from nnsdm.checkpoints import FINAL_CHECKPOINT, read_checkpoint
from nnsdm.errors import NnsdmError
from nnsdm.fileio import atomic_dir
from nnsdm.model_folder import ModelFolder
from nnsdm.network import build_network, count_flops, count_parameters, strip_sdm_head

STOCK_TRAINER = "nnUNetTrainer"
_COPIED = ("plans.json", "dataset.json", "dataset_fingerprint.json")


def model_folds(model: Path) -> list[int | str]:
    """Folds of a model that hold a final checkpoint (an ``NnsdmError`` when there is none)."""
    folder = ModelFolder(model).require()
    folder.plans()  # one-line errors for a folder that is not a model folder
    folder.dataset_json()
    folds = folder.folds()
    if not folds:
        raise NnsdmError(f"{model}: no trained fold (no fold_*/checkpoint_final.pth)")
    return folds


def export_stock_model(model: Path, out: Path, *, overwrite: bool = False) -> Path:
    """Write ``out`` as a stock nnU-Net model folder (plans, dataset, checkpoints without the SDM head)."""
    model, out = Path(model), Path(out)
    folder = ModelFolder(model)
    folds = model_folds(model)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name in _COPIED:
            if (model / name).is_file():
                shutil.copyfile(model / name, tmp / name)
        for fold in folds:
            checkpoint = read_checkpoint(folder.fold_folder(fold) / FINAL_CHECKPOINT)
            stock = {
                "network_weights": strip_sdm_head(checkpoint["network_weights"]),
                "trainer_name": STOCK_TRAINER,
                "init_args": checkpoint.get("init_args", {"configuration": "3d_fullres"}),
                "inference_allowed_mirroring_axes": checkpoint.get("inference_allowed_mirroring_axes"),
                "current_epoch": checkpoint.get("current_epoch"),
            }
            (tmp / f"fold_{fold}").mkdir()
            torch.save(stock, tmp / f"fold_{fold}" / FINAL_CHECKPOINT)
    return out


def model_statistics(source: Path) -> dict:
    """Parameters and FLOPs of one forward pass at the planned patch, with and without the SDM head.

    ``source``: a model folder or a plans file (``nnUNetPlans.json`` beside its ``dataset.json``).
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnsdm.planning import CONFIGURATION

    source = Path(source)
    plans_file = source / "plans.json" if source.is_dir() else source
    dataset_file = plans_file.parent / "dataset.json"
    for f in (plans_file, dataset_file):
        if not f.is_file():
            raise NnsdmError(f"{f}: not found (give a model folder or a plans file beside its dataset.json)")
    try:
        plans, dataset_json = json.loads(plans_file.read_text(encoding="utf-8")), json.loads(dataset_file.read_text(encoding="utf-8"))
        manager = PlansManager(plans)
        config = manager.get_configuration(CONFIGURATION)
    except (ValueError, KeyError) as exc:
        raise NnsdmError(f"{plans_file}: not an nnU-Net plans file ({type(exc).__name__}: {exc})") from None
    labels = manager.get_label_manager(dataset_json)
    in_ch = determine_num_input_channels(manager, config, dataset_json)
    n_sdm = len(labels.foreground_labels)
    with torch.device("meta"):  # shapes only: counting needs no weights and no arithmetic
        net = build_network(manager, config, in_ch, labels.num_segmentation_heads, num_sdm_channels=n_sdm,
                            deep_supervision=False)
    patch = [int(p) for p in config.patch_size]
    return {
        "network": config.network_arch_class_name.rsplit(".", 1)[-1],
        "patch_size": patch,
        "parameters": count_parameters(net, include_sdm_head=False),
        "parameters_with_sdm_head": count_parameters(net, include_sdm_head=True),
        "flops": count_flops(net, patch, in_channels=in_ch, with_sdm=False),
        "flops_with_sdm_head": count_flops(net, patch, in_channels=in_ch, with_sdm=True),
    }

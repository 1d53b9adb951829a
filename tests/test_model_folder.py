"""The model folder format: trainer names <-> SDM weights, folds, checkpoints, metadata, ground truth."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nnsdm.errors import NnsdmError
from nnsdm.model_folder import METADATA_FILE, ModelFolder, sdm_weight_from_trainer_name, trainer_name


@pytest.mark.parametrize("weight, name", [
    (1, "nnsdmTrainer"), (1.0, "nnsdmTrainer"), (0, "nnsdmTrainer_sdm0"), (-0.0, "nnsdmTrainer_sdm0"),
    (0.5, "nnsdmTrainer_sdm0p5"), (2, "nnsdmTrainer_sdm2"), (1e-05, "nnsdmTrainer_sdm1em05"),
    (0.1, "nnsdmTrainer_sdm0p1"), (1e20, "nnsdmTrainer_sdm1e20"),
])
def test_trainer_names_of_known_weights(weight, name):
    assert trainer_name(weight) == name
    assert sdm_weight_from_trainer_name(name) == weight


def test_trainer_name_round_trips_every_non_negative_float():
    rng = np.random.default_rng(0)
    special = [0.0, 1.0, 2.0, 0.5, 1e-05, 0.1 + 0.2, 123.456, 1 / 3, 5e-324, 2.2250738585072014e-308,
               1.7976931348623157e308, 1e16, 1e-7, 3e-3, math.inf]
    random = np.concatenate([rng.random(200), 10.0 ** rng.uniform(-300, 300, 200),
                             rng.integers(0, 2**63, 50).view(np.float64)])
    for weight in [*special, *(float(w) for w in random if np.isfinite(w) and w >= 0)]:
        name = trainer_name(weight)
        assert name.isidentifier(), name
        assert sdm_weight_from_trainer_name(name) == weight, (weight, name)


def test_negative_weights_and_foreign_names_are_refused():
    for weight in (-1.0, -1e-05, math.nan):
        with pytest.raises(NnsdmError, match="must be >= 0"):
            trainer_name(weight)
    for name in ("nnUNetTrainer", "nnsdmTrainer_sdm", "nnsdmTrainer_sdmm1", "nnsdmTrainer_sdmnan", "nnsdmTrainer_sdm0x"):
        with pytest.raises(ValueError):
            sdm_weight_from_trainer_name(name)


def _checkpoint(path: Path, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {}, **extra}, path)


def test_folds_checkpoints_and_metadata_of_a_constructed_folder(tmp_path):
    folder = ModelFolder(tmp_path / "nnUNet_results" / "Dataset001_X" / "nnsdmTrainer_sdm0p5__nnUNetPlans__3d_fullres")
    _checkpoint(folder.fold_folder(2) / "checkpoint_final.pth")
    _checkpoint(folder.fold_folder(0) / "checkpoint_final.pth", logging={"train_losses": [1.0, 0.5]})
    _checkpoint(folder.fold_folder(0) / "checkpoint_latest.pth")
    _checkpoint(folder.fold_folder(1) / "checkpoint_latest.pth")
    _checkpoint(folder.fold_folder(1) / "checkpoint_best.pth")
    _checkpoint(folder.fold_folder("all") / "checkpoint_final.pth")
    _checkpoint(folder.path / "fold_x" / "checkpoint_final.pth")  # not a fold
    (folder.fold_folder(3) / "validation").mkdir(parents=True)
    assert folder.folds() == [0, 2, "all"]
    assert folder.ensemble_folds() == [0, 2]
    assert folder.folds(holding=("checkpoint_final.pth", "checkpoint_latest.pth")) == [0, 1, 2, "all"]
    assert folder.folds(holding=("validation",)) == [3]
    assert ModelFolder(tmp_path / "other").folds() == [] and ModelFolder(tmp_path / "other").ensemble_folds() == []
    assert folder.resume_checkpoint(0).name == "checkpoint_final.pth"
    assert folder.resume_checkpoint(1).name == "checkpoint_latest.pth"
    assert folder.resume_checkpoint(4) is None
    assert folder.training_log(0) == ({"train_losses": [1.0, 0.5]}, "checkpoint_final.pth")
    assert folder.training_log(1) == (None, "checkpoint_latest.pth") and folder.training_log(4) == (None, "")
    # the SDM weight: from the trainer name until nnsdm.json says otherwise
    assert folder.trainer == "nnsdmTrainer_sdm0p5" and folder.metadata() == {} and folder.sdm_weight() == 0.5
    folder.write_metadata(sdm_weight=0.25, classes=[1, 2], orientation="RAS", recipe={"optimizer": "sgd"})
    meta = json.loads((folder.path / METADATA_FILE).read_text())
    assert meta["sdm_weight"] == 0.25 and meta["orientation"] == "RAS" and meta["configuration"] == "3d_fullres"
    assert folder.metadata() == meta and folder.sdm_weight() == 0.25
    assert ModelFolder(tmp_path / "x" / "nnUNetTrainer__nnUNetPlans__3d_fullres").sdm_weight() is None


def test_missing_or_broken_files_are_one_line_errors(tmp_path):
    with pytest.raises(NnsdmError, match="model folder not found"):
        ModelFolder(tmp_path / "nope").require()
    model = tmp_path / "ws" / "nnUNet_results" / "Dataset001_X" / "m"
    model.mkdir(parents=True)
    folder = ModelFolder(model)
    with pytest.raises(NnsdmError, match=r"m: not an nnsdm model folder \(plans.json missing\)"):
        folder.plans()
    (model / "dataset.json").write_text("{broken")
    with pytest.raises(NnsdmError, match="dataset.json: unreadable JSON"):
        folder.dataset_json()
    (model / METADATA_FILE).write_text(json.dumps({"sdm_weight": "heavy"}))
    with pytest.raises(NnsdmError, match="not an nnsdm metadata file"):
        folder.sdm_weight()
    with pytest.raises(NnsdmError, match="plans.json missing or unreadable"):
        folder.ground_truth()
    (model / "plans.json").write_text(json.dumps({"dataset_name": "Dataset001_X"}))
    with pytest.raises(NnsdmError, match="ground truth not found at WORKSPACE/nnUNet_preprocessed/Dataset001_X"):
        folder.ground_truth()
    gt = tmp_path / "ws" / "nnUNet_preprocessed" / "Dataset001_X" / "gt_segmentations"
    gt.mkdir(parents=True)
    assert folder.ground_truth() == gt.resolve()


def test_a_trained_model_folder(trained_model, planned_workspace):
    workspace, _ = planned_workspace
    folder = ModelFolder(trained_model)
    assert folder == ModelFolder.of(workspace.results, workspace.dataset_name(), 1.0)
    assert folder.trainer == "nnsdmTrainer" and folder.sdm_weight() == 1.0
    assert folder.folds() == [0] and folder.ensemble_folds() == [0]
    assert folder.metadata()["sdm_classes"] == [1, 2, 3, 4]
    assert folder.plans()["dataset_name"] == workspace.dataset_name()
    assert folder.dataset_json()["labels"]["kidney"] == 2
    log, checkpoint = folder.training_log(0)
    assert checkpoint == "checkpoint_final.pth" and len(log["train_losses"]) == 2
    assert folder.resume_checkpoint(0) == trained_model / "fold_0" / "checkpoint_final.pth"
    assert folder.ground_truth() == (workspace.preprocessed / workspace.dataset_name() / "gt_segmentations").resolve()
    assert (folder.fold_folder(0) / "validation").is_dir()

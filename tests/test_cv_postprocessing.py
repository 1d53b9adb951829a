"""The cross-validation post-processing decision on hand-made predictions whose right answer is known."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnsdm.errors import NnsdmError
from nnsdm.inference import determine_postprocessing, load_postprocessing


def _fake_cv_model(root: Path) -> Path:
    """A model folder in a workspace with hand-made CV predictions: what helps which label is known."""
    labels = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
    model = root / "nnUNet_results" / "Dataset042_Fake" / "nnsdmTrainer__nnUNetPlans__3d_fullres"
    gt_dir = root / "nnUNet_preprocessed" / "Dataset042_Fake" / "gt_segmentations"
    for d in (model / "fold_0" / "validation", model / "fold_1" / "validation", gt_dir):
        d.mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps({"dataset_name": "Dataset042_Fake"}))
    (model / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))
    for i, fold in enumerate((0, 0, 1)):
        gt = np.zeros((16, 40, 40), np.uint8)
        gt[2:10, 2:18, 2:18] = 1                       # liver
        gt[4:10, 24:30, 4:9] = gt[4:10, 24:30, 30:35] = 2  # two kidneys
        gt[2:6, 30:38, 14:24] = 3                      # spleen ...
        gt[12:14, 30:33, 14:17] = 3                    # ... in two pieces (the reference says so)
        gt[11:13, 20:24, 10:30] = 4                    # pancreas
        pred = gt.copy()
        pred[13:15, 2:4, 36:38] = 1                    # false liver island: removing it helps
        pred[13:15, 10:12, 36:38] = 2                  # false kidney blob: keeping two helps
        pred[5, 25, 5 + i] = 0                         # small differences between cases
        for array, path in ((gt, gt_dir / f"case{i}.nii.gz"), (pred, model / f"fold_{fold}" / "validation" / f"case{i}.nii.gz")):
            sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return model


def test_determine_postprocessing_keeps_the_rule_only_where_cv_dice_improves(tmp_path):
    model = _fake_cv_model(tmp_path)
    with pytest.raises(NnsdmError, match="create it with `nnsdm postprocessing --model MODEL`"):
        load_postprocessing(model)
    result = determine_postprocessing(model, progress=False)
    assert result["cases"] == 3 and result["folds"] == [0, 1]
    decided = {int(k): v for k, v in result["labels"].items()}
    assert {k: v["apply"] for k, v in decided.items()} == {1: True, 2: True, 3: False, 4: False}
    assert decided[2]["keep_components"] == 2
    assert decided[1]["mean_dice_after"] > decided[1]["mean_dice_before"]
    assert decided[3]["mean_dice_after"] < decided[3]["mean_dice_before"]
    assert decided[4]["mean_dice_after"] == decided[4]["mean_dice_before"] == 1.0
    assert json.loads((model / "postprocessing_nnsdm.json").read_text()) == result
    assert load_postprocessing(model) == {1: 1, 2: 2}


def test_determine_postprocessing_needs_cv_predictions_and_ground_truth(tmp_path):
    model = _fake_cv_model(tmp_path)
    shutil.rmtree(tmp_path / "nnUNet_preprocessed")
    with pytest.raises(NnsdmError, match="gt_segmentations"):
        determine_postprocessing(model, progress=False)
    bare = tmp_path / "ws2" / "nnUNet_results" / "Dataset042_Fake" / "m"
    bare.mkdir(parents=True)
    with pytest.raises(NnsdmError, match="not an nnsdm model folder"):
        determine_postprocessing(bare, progress=False)
    model = _fake_cv_model(tmp_path / "ws3")
    for f in model.glob("fold_*/validation/*.nii.gz"):
        f.unlink()
    with pytest.raises(NnsdmError, match="no cross-validation predictions"):
        determine_postprocessing(model, progress=False)

"""Post-processing decided by cross-validation, per label, with nnU-Net's criterion.

The rule tried for each label is "keep the largest connected component" (two for a label named
kidney, which covers both kidneys in FLARE21: see :mod:`nnsdm.postprocessing`). As nnU-Net does, a
label gets the rule only if it raises that label's mean Dice over the cross-validation cases (the
folds' ``validation/`` predictions against the workspace's ground truth). The rules apply to each
label's voxels alone, so the per-label decisions are independent. The decision is stored with the
model as ``postprocessing_nnsdm.json``; ``nnsdm predict --postprocess cv`` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnsdm.errors import NnsdmError
from nnsdm.evaluation import dice
from nnsdm.fileio import as_array, read_image, write_text
from nnsdm.labels import keep_counts
from nnsdm.model_folder import ModelFolder

POSTPROCESSING_FILE = "postprocessing_nnsdm.json"
CV_COMMAND = "nnsdm postprocessing --model MODEL"


def determine_postprocessing(model_folder: Path, *, progress: bool = True) -> dict:
    """Decide per label whether the largest-component rule helps, from the cross-validation predictions.

    Reads every trained fold's ``fold_K/validation/*.nii.gz`` and the ground truth of the model's
    workspace, writes ``MODEL/postprocessing_nnsdm.json`` atomically and returns its content.
    """
    from tqdm import tqdm

    from nnsdm.postprocessing import keep_largest_components

    model = ModelFolder(model_folder).require()
    folder = model.path
    gt_folder = model.ground_truth()
    dataset_json = model.dataset_json()
    ending = dataset_json.get("file_ending", ".nii.gz")
    names = {int(v): k for k, v in dataset_json["labels"].items() if not isinstance(v, (list, tuple))}
    keep = keep_counts(dataset_json["labels"])
    folds = [f for f in model.folds(holding=("validation",)) if isinstance(f, int)]
    files = [f for k in folds for f in sorted((model.fold_folder(k) / "validation").glob(f"*{ending}"))]
    if not files:
        raise NnsdmError(f"{folder}: no cross-validation predictions (fold_K/validation/*{ending}); "
                         "train the folds with their final validation first")

    before: dict[int, list[float]] = {label: [] for label in keep}
    after: dict[int, list[float]] = {label: [] for label in keep}
    for path in tqdm(files, desc="cross-validation cases", unit="case", disable=not progress):
        ref_path = gt_folder / path.name
        if not ref_path.is_file():
            raise NnsdmError(f"{path}: no ground truth {ref_path}")
        pred, ref = as_array(read_image(path)), as_array(read_image(ref_path))
        if pred.shape != ref.shape:
            raise NnsdmError(f"{path}: shape {pred.shape} differs from the ground truth's {ref.shape}")
        if pred.dtype.kind not in "iu":
            pred = pred.astype(np.int32)
        for label, n in keep.items():
            cleaned = keep_largest_components(pred, labels=[label], keep={label: n})
            if not (pred == label).any() and not (ref == label).any():
                continue  # both empty: left out of the means, as nnU-Net does
            before[label].append(dice(pred == label, ref == label))
            after[label].append(dice(cleaned == label, ref == label))

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    labels = {}
    for label, n in keep.items():
        b, a = mean(before[label]), mean(after[label])
        labels[str(label)] = {"name": names.get(label, str(label)), "keep_components": n,
                              "apply": bool(a is not None and b is not None and a > b),
                              "mean_dice_before": b, "mean_dice_after": a}
    result = {
        "rule": "keep_largest_components",
        "criterion": "applied to a label when it raises that label's mean Dice over the cross-validation cases",
        "folds": folds,
        "cases": len(files),
        "labels": labels,
    }
    write_text(folder / POSTPROCESSING_FILE, json.dumps(result, indent=2) + "\n")
    return result


def load_postprocessing(model_folder: Path) -> dict[int, int]:
    """The labels (and components kept) that cross-validation chose, from ``MODEL/postprocessing_nnsdm.json``."""
    path = Path(model_folder) / POSTPROCESSING_FILE
    if not path.is_file():
        raise NnsdmError(f"{path}: not found; --postprocess cv needs the cross-validation decision "
                         f"(create it with `{CV_COMMAND}`)")
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
        return {int(k): int(v["keep_components"]) for k, v in labels.items() if v["apply"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NnsdmError(f"{path}: unreadable post-processing decision ({type(exc).__name__})") from None

"""The model folder: what nnsdm training writes and prediction, export, post-processing and the report read.

A model folder is nnU-Net's ``WORKSPACE/nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``
with nnU-Net's ``plans.json``, ``dataset.json`` and ``fold_K/`` folders (checkpoints, ``validation/``,
``training_log_*.txt``), plus nnsdm's metadata file ``nnsdm.json`` (SDM weight, SDM classes,
configuration, training orientation and recipe). The trainer name encodes the SDM loss weight
(:func:`trainer_name`), so the folder of the paper's model and of its ``sdm_weight 0`` baseline differ.

This module is the one place that knows these names; everything else asks a :class:`ModelFolder`.
Checkpoints are read through :func:`nnsdm.checkpoints.read_checkpoint`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from nnsdm.checkpoints import FINAL_CHECKPOINT, read_checkpoint
from nnsdm.errors import NnsdmError
from nnsdm.planning import CONFIGURATION, PLANS_IDENTIFIER

__all__ = ["METADATA_FILE", "LATEST_CHECKPOINT", "BEST_CHECKPOINT", "TRAINER_NAME", "ModelFolder",
           "trainer_name", "sdm_weight_from_trainer_name"]

METADATA_FILE = "nnsdm.json"
LATEST_CHECKPOINT = "checkpoint_latest.pth"
BEST_CHECKPOINT = "checkpoint_best.pth"
TRAINER_NAME = "nnsdmTrainer"  # the paper's model (sdm_weight 1)
_WEIGHT_SUFFIX = re.compile(rf"^{TRAINER_NAME}_sdm([0-9a-z]+)$")


def trainer_name(sdm_weight: float) -> str:
    """The trainer (and model folder) name for ``sdm_weight``: ``nnsdmTrainer`` for 1, else
    ``nnsdmTrainer_sdm<w>`` with the weight's shortest exact decimal form, ``.`` as ``p`` and ``-`` as ``m``
    (``nnsdmTrainer_sdm0``, ``nnsdmTrainer_sdm0p5``, ``nnsdmTrainer_sdm1em05``). Exactly invertible by
    :func:`sdm_weight_from_trainer_name`; names are valid Python identifiers."""
    weight = float(sdm_weight) + 0.0  # -0.0 -> 0.0
    if not weight >= 0:
        raise NnsdmError(f"--sdm-weight {sdm_weight}: must be >= 0")
    if weight == 1:
        return TRAINER_NAME
    text = repr(weight)  # shortest decimal that reads back as the same float
    if text.endswith(".0"):
        text = text[:-2]
    return f"{TRAINER_NAME}_sdm" + text.replace("+", "").replace(".", "p").replace("-", "m")


def sdm_weight_from_trainer_name(name: str) -> float:
    """The SDM weight a trainer name encodes (inverse of :func:`trainer_name`); ``ValueError`` for other names."""
    if name == TRAINER_NAME:
        return 1.0
    match = _WEIGHT_SUFFIX.match(name)
    if match:
        try:
            weight = float(match.group(1).replace("p", ".").replace("m", "-"))
        except ValueError:
            weight = math.nan
        if weight >= 0:
            return weight
    raise ValueError(f"{name}: not an nnsdm trainer name")


def _fold_key(fold: int | str) -> tuple:
    """Numbered folds in order, then the others (``all``) by name."""
    return (0, fold, "") if isinstance(fold, int) else (1, 0, str(fold))


@dataclass(frozen=True)
class ModelFolder:
    """One model folder (see the module docstring). Reading methods raise one-line ``NnsdmError``."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, results: Path, dataset: str, sdm_weight: float) -> "ModelFolder":
        """The model folder training with ``sdm_weight`` writes under a results folder (``nnUNet_results``)."""
        return cls(Path(results) / dataset / f"{trainer_name(sdm_weight)}__{PLANS_IDENTIFIER}__{CONFIGURATION}")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def trainer(self) -> str:
        """The trainer name, the first part of ``<trainer>__<plans>__<configuration>``."""
        return self.path.name.split("__")[0]

    def require(self) -> "ModelFolder":
        """Self, or an ``NnsdmError`` when the folder does not exist."""
        if not self.path.is_dir():
            raise NnsdmError(f"{self.path}: model folder not found")
        return self

    # --- JSON files ----------------------------------------------------------------------------------
    def _json(self, name: str) -> dict:
        path = self.path / name
        if not path.is_file():
            raise NnsdmError(f"{self.path}: not an nnsdm model folder ({name} missing)")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NnsdmError(f"{path}: unreadable JSON ({exc})") from None

    def plans(self) -> dict:
        """nnU-Net's ``plans.json`` of the model."""
        return self._json("plans.json")

    def dataset_json(self) -> dict:
        """nnU-Net's ``dataset.json`` of the model."""
        return self._json("dataset.json")

    def metadata(self) -> dict:
        """nnsdm's ``nnsdm.json``; ``{}`` for a folder without it (a stock nnU-Net model)."""
        return self._json(METADATA_FILE) if (self.path / METADATA_FILE).is_file() else {}

    def write_metadata(self, *, sdm_weight: float, classes: list[int], orientation: str | None, recipe: dict) -> None:
        """Write ``nnsdm.json``: what nnsdm needs to rebuild the network for inference.

        ``orientation``: the axis orientation code of most training images; ``predict`` reorients inputs
        stored otherwise to it (nnU-Net itself never reorients) and maps the result back.
        """
        from nnsdm import __version__
        from nnsdm.fileio import write_text

        data = {"nnsdm_version": __version__, "sdm_weight": sdm_weight, "sdm_classes": classes,
                "configuration": CONFIGURATION, "plans": PLANS_IDENTIFIER, "orientation": orientation,
                "training": recipe}
        write_text(self.path / METADATA_FILE, json.dumps(data, indent=2))

    def sdm_weight(self) -> float | None:
        """The SDM loss weight: from ``nnsdm.json``, else from the trainer name; ``None`` when unknown."""
        meta = self.path / METADATA_FILE
        if meta.is_file():
            try:
                return float(json.loads(meta.read_text(encoding="utf-8"))["sdm_weight"])
            except (ValueError, KeyError, TypeError):
                raise NnsdmError(f"{meta}: not an nnsdm metadata file (no numeric sdm_weight)") from None
        try:
            return sdm_weight_from_trainer_name(self.trainer)
        except ValueError:
            return None

    # --- folds and checkpoints -----------------------------------------------------------------------
    def fold_folder(self, fold: int | str) -> Path:
        return self.path / f"fold_{fold}"

    def folds(self, *, holding: tuple[str, ...] = (FINAL_CHECKPOINT,)) -> list[int | str]:
        """Folds (``0``..``4`` as ints, ``'all'``) whose folder holds one of ``holding`` (file or folder names),
        numbered folds first."""
        found = []
        for folder in self.path.glob("fold_*"):
            fold = folder.name[5:]
            if folder.is_dir() and (fold.isdigit() or fold == "all") and any((folder / h).exists() for h in holding):
                found.append(int(fold) if fold.isdigit() else fold)
        return sorted(found, key=_fold_key)

    def ensemble_folds(self) -> list[int | str]:
        """The trained folds prediction uses by default: the numbered ones as nnU-Net picks them, else ``'all'``."""
        folds = self.folds()
        return [f for f in folds if isinstance(f, int)] or folds

    def checkpoint(self, fold: int | str, *names: str) -> Path | None:
        """The first of the named checkpoint files that the fold holds (default: the final one)."""
        for name in names or (FINAL_CHECKPOINT,):
            path = self.fold_folder(fold) / name
            if path.is_file():
                return path
        return None

    def resume_checkpoint(self, fold: int | str) -> Path | None:
        """The checkpoint ``--continue`` starts from: final, else latest, else best (nnU-Net's order)."""
        return self.checkpoint(fold, FINAL_CHECKPOINT, LATEST_CHECKPOINT, BEST_CHECKPOINT)

    def training_log(self, fold: int | str) -> tuple[dict | None, str]:
        """nnU-Net's per-epoch ``logging`` dict from the fold's final (else latest) checkpoint, and that
        checkpoint's file name (``(None, "")`` without a checkpoint)."""
        path = self.checkpoint(fold, FINAL_CHECKPOINT, LATEST_CHECKPOINT)
        if path is None:
            return None, ""
        log = read_checkpoint(path).get("logging")
        return (log if isinstance(log, dict) else None), path.name

    # --- the workspace around it ---------------------------------------------------------------------
    def ground_truth(self) -> Path:
        """The training ground truth: ``WORKSPACE/nnUNet_preprocessed/<dataset>/gt_segmentations``."""
        try:
            dataset = json.loads((self.path / "plans.json").read_text(encoding="utf-8"))["dataset_name"]
        except (OSError, ValueError, KeyError):
            raise NnsdmError(f"{self.path}: not an nnsdm model folder (plans.json missing or unreadable)") from None
        resolved = self.path.resolve()
        gt = resolved.parents[2] / "nnUNet_preprocessed" / dataset / "gt_segmentations" if len(resolved.parents) > 2 else None
        if gt is None or not gt.is_dir():
            raise NnsdmError(f"{self.path}: ground truth not found at WORKSPACE/nnUNet_preprocessed/{dataset}/gt_segmentations "
                             "(the model folder must stay in its workspace: WORKSPACE/nnUNet_results/<dataset>/<model>)")
        return gt

"""Convert the FLARE21 release layout into an nnU-Net v2 raw dataset.

The release has ``TrainingImg/train_XXX_0000.nii.gz`` (CT), ``TrainingMask/train_XXX.nii.gz`` (masks:
0 background, 1 liver, 2 kidney, 3 spleen, 4 pancreas), and optionally ``ValidationImg/`` and
``TestImg/`` with images only. Those already carry nnU-Net's ``_0000`` channel suffix, so conversion is
a matter of placing files (symbolic links by default, so no 20 GB copy) and writing dataset.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from nnsdm.errors import NnsdmError
from nnsdm.fileio import atomic_dir
from nnsdm.labels import FLARE21_DATASET_LABELS

__all__ = ["convert_flare21"]

_ENDING = ".nii.gz"
# (source folder, file prefix, destination folder)
_IMAGE_FOLDERS = (("TrainingImg", "train", "imagesTr"), ("ValidationImg", "validation", "imagesTs"),
                  ("TestImg", "test", "imagesTs"))


def convert_flare21(src: Path, out: Path, *, mode: str = "link", overwrite: bool = False,
                    progress: bool = True) -> Path:
    """FLARE21 release layout -> nnU-Net v2 raw dataset at ``out``; returns ``out``.

    ``mode`` is ``"link"`` (symbolic links to the resolved source files; a copy where the file system
    refuses links) or ``"copy"``. The source files are never altered. ``out`` appears complete or not at
    all, and an existing non-empty ``out`` is replaced only with ``overwrite``.
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if mode not in ("link", "copy"):
        raise NnsdmError(f"mode {mode!r}: expected 'link' or 'copy'")
    if not (src / "TrainingImg").is_dir():
        raise NnsdmError(f"{src}: no TrainingImg/ folder (expected the FLARE21 release layout: "
                         "TrainingImg/train_XXX_0000.nii.gz, TrainingMask/train_XXX.nii.gz)")
    if not (src / "TrainingMask").is_dir():
        raise NnsdmError(f"{src}: no TrainingMask/ folder (the FLARE21 training masks)")
    src_real, out_real = src.resolve(), out.resolve()
    if out_real == src_real or out_real in src_real.parents:
        raise NnsdmError(f"{out}: output folder must not be the source folder or contain it")

    moves = _plan(src)  # (source file, path relative to out)
    n_train = sum(1 for _, rel in moves if rel.parts[0] == "labelsTr")
    meta = {
        "name": "FLARE21",
        "description": "MICCAI FLARE21 abdominal organ segmentation (converted by nnsdm)",
        "reference": "https://flare.grand-challenge.org/",
        "channel_names": {"0": "CT"},
        "labels": FLARE21_DATASET_LABELS,
        "numTraining": n_train,
        "file_ending": _ENDING,
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for sub in {rel.parts[0] for _, rel in moves}:
            (tmp / sub).mkdir()
        for source, rel in tqdm(moves, desc=f"{mode}ing FLARE21 files", unit="file", disable=not progress):
            _place(source, tmp / rel, mode=mode)
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _plan(src: Path) -> list[tuple[Path, Path]]:
    """List (resolved source file, destination relative to the output) for every file to place."""
    moves = []
    mask_dir = src / "TrainingMask"
    for folder, prefix, dest in _IMAGE_FOLDERS:
        if not (src / folder).is_dir():
            continue
        pattern = re.compile(rf"^({prefix}_\d+)_0000{re.escape(_ENDING)}$")
        images = sorted(p for p in (src / folder).iterdir() if p.name.endswith(_ENDING) and not p.name.startswith("."))
        if folder == "TrainingImg" and not images:
            raise NnsdmError(f"{src / folder}: no {prefix}_XXX_0000{_ENDING} images")
        for image in images:
            match = pattern.match(image.name)
            if match is None:
                raise NnsdmError(f"{image}: unexpected file name (expected {prefix}_XXX_0000{_ENDING})")
            moves.append((image.resolve(), Path(dest, image.name)))
            if folder == "TrainingImg":
                mask = mask_dir / f"{match[1]}{_ENDING}"
                if not mask.is_file():
                    raise NnsdmError(f"{image}: no mask {mask}")
                moves.append((mask.resolve(), Path("labelsTr", mask.name)))
    expected = {rel.name for _, rel in moves if rel.parts[0] == "labelsTr"}
    for mask in sorted(mask_dir.iterdir()):
        if mask.name.endswith(_ENDING) and not mask.name.startswith(".") and mask.name not in expected:
            raise NnsdmError(f"{mask}: mask without image (no TrainingImg/{mask.name[:-len(_ENDING)]}_0000{_ENDING})")
    return moves


def _place(source: Path, dest: Path, *, mode: str) -> None:
    """Link (absolute path) or copy one file; copy when the file system does not allow links."""
    if mode == "link":
        try:
            os.symlink(source, dest)
            return
        except OSError:
            pass  # e.g. a file system without symbolic links
    shutil.copy2(source, dest)

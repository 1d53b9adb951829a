"""Tiny synthetic images, nnU-Net raw datasets and FLARE21 release folders for fast tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnsdm.labels import FLARE21_DATASET_LABELS

SHAPE = (8, 16, 16)  # (z, y, x)
SPACING = (2.5, 0.8, 0.8)  # (z, y, x) mm


def make_image(array: np.ndarray, *, spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=None,
               vector: bool = False) -> sitk.Image:
    """A SimpleITK image from a (z, y, x) array; spacing in (z, y, x) mm, origin in SimpleITK's (x, y, z)."""
    image = sitk.GetImageFromArray(array, isVector=vector)
    dim = image.GetDimension()
    image.SetSpacing(tuple(reversed(spacing))[:dim] + (1.0,) * max(0, dim - len(spacing)))
    image.SetOrigin(tuple(origin)[:dim] + (0.0,) * max(0, dim - len(origin)))
    if direction is not None:
        image.SetDirection(direction)
    return image


def write(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Write a (z, y, x) array as an image file (compressed for .nii.gz); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(make_image(array, **kwargs), str(path), useCompression=path.name.endswith(".gz"))
    return path


def ct(seed: int = 0, shape=SHAPE, dtype=np.int16) -> np.ndarray:
    """A CT-like intensity array."""
    return np.random.default_rng(seed).integers(-1000, 1000, size=shape).astype(dtype)


def mask(shape=SHAPE, values=(1, 2, 3, 4)) -> np.ndarray:
    """A label array with one block per value."""
    out = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        out[1:-1, 2 + 3 * i: 4 + 3 * i, 3:12] = v
    return out


def make_dataset(root: Path, *, cases=("case_001", "case_002"), channels: int = 1, test_cases=("case_101",),
                 file_ending: str = ".nii.gz", labels=None) -> Path:
    """Write a clean nnU-Net v2 raw dataset (dataset.json, imagesTr, labelsTr, imagesTs); return its folder."""
    root = Path(root)
    for i, case in enumerate(cases):
        for c in range(channels):
            write(root / "imagesTr" / f"{case}_{c:04d}{file_ending}", ct(10 * i + c))
        write(root / "labelsTr" / f"{case}{file_ending}", mask())
    for i, case in enumerate(test_cases):
        for c in range(channels):
            write(root / "imagesTs" / f"{case}_{c:04d}{file_ending}", ct(100 + 10 * i + c))
    meta = {"name": "Tiny", "channel_names": {str(c): f"ch{c}" for c in range(channels)},
            "labels": dict(FLARE21_DATASET_LABELS if labels is None else labels), "numTraining": len(cases),
            "file_ending": file_ending}
    write_json(root / "dataset.json", meta)
    return root


def write_json(path: Path, meta: dict) -> None:
    Path(path).write_text(json.dumps(meta, indent=2))


def edit_json(root: Path, **changes) -> None:
    """Change (value) or remove (None) keys of a dataset's dataset.json."""
    path = Path(root) / "dataset.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    write_json(path, meta)


def make_flare21_release(root: Path, *, n_train: int = 3, n_validation: int = 2, n_test: int = 0) -> Path:
    """Write a miniature FLARE21 release folder (TrainingImg, TrainingMask, ValidationImg, TestImg)."""
    root = Path(root)
    for i in range(1, n_train + 1):
        write(root / "TrainingImg" / f"train_{i:03d}_0000.nii.gz", ct(i))
        write(root / "TrainingMask" / f"train_{i:03d}.nii.gz", mask())
    for i in range(1, n_validation + 1):
        write(root / "ValidationImg" / f"validation_{i:03d}_0000.nii.gz", ct(50 + i))
    for i in range(1, n_test + 1):
        write(root / "TestImg" / f"test_{i:03d}_0000.nii.gz", ct(80 + i))
    return root

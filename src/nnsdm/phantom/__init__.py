"""Built-in synthetic abdominal CT: a FLARE21-like dataset to try nnsdm without downloading anything.

Each case is a portal-venous CT (int16 Hounsfield units) of a random adult abdomen with its label map
(uint8: 0 background, 1 liver, 2 kidney (both), 3 spleen, 4 pancreas), every organ present. Anatomy
(body wall and fat, lower chest, spine and ribs, aorta, IVC and portal system, stomach, duodenum, small
bowel and colon with gas, fluid, stool and oral contrast, and the four organs) is defined in patient
millimetres (LPS) and sampled onto each case's grid, so a case's spacing does not change its anatomy. Cases vary
in organ size, shape, position and rotation, spacing (slices 2-5 mm, pixels 0.6-1.0 mm around the default
nominal grid), field of view, slice count (some cut through the liver dome), intensities, noise and blur;
some have a fatty liver, liver lesions, a kidney cyst or tumour (labelled as their organ, as in FLARE21);
about one in four is stored in another axis orientation (flipped or permuted direction matrix, array
reoriented to match). Each slice is the mean of three thin ones (partial volume along z), then blurred
and given correlated noise; labels are those of the slice's centre.

The anatomy is drawn at a fixed scale per dataset: an adult trunk about 380 mm wide fills 82% of the
nominal in-plane field of view (shape x spacing), and 320 mm of it from lower chest to iliac crest fills
the nominal z extent. With the default 64x160x160 grid at 2.5x0.8x0.8 mm that is a small patient (scale
about 0.28 in-plane and 0.5 along z, so organs are somewhat elongated along z), which keeps the default
cases quick to train on a CPU.

Layouts written by :func:`generate_dataset`:

``naming="nnunet"`` (an nnU-Net v2 raw dataset)::

    out/dataset.json                     channel_names {"0": "CT"}, labels, numTraining, file_ending ".nii.gz"
    out/imagesTr/phantom_000_0000.nii.gz CT, int16 HU
    out/labelsTr/phantom_000.nii.gz      labels, uint8
    out/phantom_cases.json               per-case seed, orientation, spacing and findings

``naming="flare21"`` (the FLARE21 training release)::

    out/TrainingImg/train_000_0000.nii.gz   CT, int16 HU
    out/TrainingMask/train_000.nii.gz       labels, uint8 (0 background, 1 liver, 2 kidney, 3 spleen, 4 pancreas)
    out/phantom_cases.json                  per-case seed, orientation, spacing and findings (not in the release)

Case i of a dataset is ``generate_case(seed=case_seed(seed, i), ...)``; the same arguments write the
same bytes (gzip headers carry no time stamp).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nnsdm.errors import NnsdmError
from nnsdm.labels import FLARE21_DATASET_LABELS
from nnsdm.phantom._case import OTHER_ORIENTATIONS, check_grid, generate_case_arrays
from nnsdm.phantom._degrade import DEGRADATIONS

__all__ = ["generate_case", "generate_dataset", "case_seed", "OTHER_ORIENTATIONS", "DEGRADATIONS"]

NAMINGS = ("nnunet", "flare21")


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a dataset made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint32)[0])


def generate_case(*, seed: int, shape: tuple[int, int, int] = (64, 160, 160),
                  spacing: tuple[float, float, float] = (2.5, 0.8, 0.8), orientation: str | None = None,
                  degradation: str | None = None, severity: float = 1.0, return_info: bool = False):
    """One synthetic CT (int16 HU) and its label map (uint8) as SimpleITK images with a correct affine.

    ``shape`` and ``spacing`` are the nominal (z, y, x) grid; the case's own grid varies around it.
    ``orientation`` forces the stored axis orientation ("LPS" or one of ``OTHER_ORIENTATIONS``) without
    changing anything else; by default about one case in four is stored in another orientation.
    ``degradation`` (one of ``DEGRADATIONS``: noise, low dose, contrast phase, metal, motion, truncated
    field of view, thick slices; see ``nnsdm.phantom._degrade``) at ``severity`` in (0, 1] degrades the
    same case (same anatomy) the way real scans go wrong.
    With ``return_info`` also returns a dict: seed, orientation, shape, spacing (z, y, x), findings
    (fatty_liver, liver_lesions, kidney_cyst, kidney_tumour, gallbladder, oral_contrast, liver_dome_cropped),
    noise_sd, the base HU per tissue, and ``tissue``: a uint8 array like the image naming each voxel's
    tissue (indices into ``tissue_names``), for checks.
    """
    image, label, info = generate_case_arrays(seed, shape, spacing, orientation, degradation, severity)
    return (image, label, info) if return_info else (image, label)


def _dataset_json(out: Path, cases: int, seed: int, shape, spacing) -> dict[str, Any]:
    return {
        "channel_names": {"0": "CT"},
        "labels": dict(FLARE21_DATASET_LABELS),
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": out.name,
        "description": (f"nnsdm synthetic abdominal CT phantom (seed {seed}, nominal shape "
                        f"{'x'.join(map(str, shape))}, spacing {'x'.join(f'{s:g}' for s in spacing)} mm)"),
        "reference": "generated by nnsdm.phantom",
        "licence": "CC0-1.0 (synthetic data)",
    }


def generate_dataset(out: Path, *, cases: int, seed: int, shape: tuple[int, int, int] = (64, 160, 160),
                     spacing: tuple[float, float, float] = (2.5, 0.8, 0.8), naming: str = "nnunet",
                     overwrite: bool = False, degradation: str | None = None, severity: float = 1.0) -> Path:
    """Write an nnU-Net v2 raw dataset or, with naming='flare21', the FLARE21 release layout; returns ``out``.

    ``degradation``/``severity``: every case degraded as :func:`generate_case` does.

    The folder appears complete or not at all; an existing non-empty one is only replaced with ``overwrite``.
    """
    import SimpleITK as sitk
    from tqdm import tqdm

    from nnsdm.fileio import atomic_dir

    out = Path(out)
    if naming not in NAMINGS:
        raise NnsdmError(f"naming: expected one of {', '.join(NAMINGS)}, got {naming!r}")
    if not isinstance(cases, (int, np.integer)) or isinstance(cases, bool) or cases < 1:
        raise NnsdmError(f"cases: expected a positive number of cases, got {cases!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise NnsdmError(f"seed: expected a non-negative integer, got {seed!r}")
    shape, spacing = check_grid(shape, spacing)
    if naming == "nnunet":
        img_dir, lab_dir, stem = "imagesTr", "labelsTr", "phantom"
    else:
        img_dir, lab_dir, stem = "TrainingImg", "TrainingMask", "train"

    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / img_dir).mkdir()
        (tmp / lab_dir).mkdir()
        records = {}
        for i in tqdm(range(cases), desc="phantom cases", unit="case"):
            name = f"{stem}_{i:03d}"
            image, label, info = generate_case(seed=case_seed(seed, i), shape=shape, spacing=spacing,
                                               degradation=degradation, severity=severity, return_info=True)
            sitk.WriteImage(image, str(tmp / img_dir / f"{name}_0000.nii.gz"), useCompression=True)
            sitk.WriteImage(label, str(tmp / lab_dir / f"{name}.nii.gz"), useCompression=True)
            records[name] = {k: v for k, v in info.items() if k not in ("tissue", "tissue_names")}
        if naming == "nnunet":
            text = json.dumps(_dataset_json(out, cases, seed, shape, spacing), indent=2) + "\n"
            (tmp / "dataset.json").write_text(text, encoding="utf-8")
        (tmp / "phantom_cases.json").write_text(json.dumps(records, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out

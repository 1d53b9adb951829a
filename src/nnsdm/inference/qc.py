"""Per-case, per-organ quality control from one prediction: does the SDM head agree with the segmentation?

An SDM model gives two opinions about every organ: the softmax segmentation and the signed distance map
of its SDM head (negative inside). Both come from the same decoder, but from different heads trained on
different targets, so where they disagree the network is unsure. The head's targets are normalised per
training patch (``nnsdm.sdm``: each half divided by its maximum within the patch), so its magnitude is
not a distance in any fixed unit; its sign is. The score therefore reads only the head's zero level set:

* ``B = sdm < 0`` (the head's idea of the organ) against ``A`` (the segmented organ);
* overlap: Dice(A, B), which also catches volume disagreement;
* boundary: normalised surface Dice of the two surfaces at ``tolerance_mm`` (default 2 mm);
* ``qc = sqrt(overlap * boundary)`` in [0, 1]: 1 where the head's organ is the segmented organ.

Both absent scores 1 (the two opinions agree); one absent scores 0.

The baseline, ``qc_baseline``, uses only the softmax of the same prediction: one minus the mean
normalised entropy (entropy / log(number of classes), so in [0, 1]) over the organ's uncertain zone,
the voxels within ``margin_mm`` of the segmented organ or of its probability above 0.1. An empty zone
(the organ confidently absent) scores 1.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import edt
import numpy as np

from nnsdm.evaluation import dice, normalized_surface_dice
from nnsdm.fileio import write_text

__all__ = ["QC_FILE", "QC_COLUMNS", "QC_THRESHOLD", "TOLERANCE_MM", "MARGIN_MM", "sdm_score", "entropy_score",
           "case_qc", "update_qc_csv", "read_qc_csv"]

QC_FILE = "qc.csv"
QC_COLUMNS = ["case", "organ", "qc", "qc_baseline", "flagged"]
TOLERANCE_MM = 2.0
MARGIN_MM = 5.0
# Flag an organ whose score is below this. Chosen on benchmarks/qc.py's held-out degraded phantoms (README,
# "Quality control"): pooled over organs it maximised sensitivity + specificity for failures (DSC < 0.85)
# with a demo model of the 4x2x2 mm plan, in-sample; two demo models of the 3x1.6x1.6 mm plan had their
# best thresholds at 0.51 and 0.76. It depends on how well the SDM head is trained: rerun
# benchmarks/qc.py for another model.
QC_THRESHOLD = 0.55


def sdm_score(mask: np.ndarray, sdm: np.ndarray, spacing: Sequence[float], *,
              tolerance_mm: float = TOLERANCE_MM) -> float:
    """Agreement in [0, 1] of a segmented organ ``mask`` with the zero level set of its predicted ``sdm``.

    ``sqrt(Dice * NSD)`` of ``mask`` and ``sdm < 0``, NSD at ``tolerance_mm``; ``spacing`` (z, y, x) mm.
    """
    mask = np.asarray(mask, dtype=bool)
    head = np.asarray(sdm) < 0
    if mask.shape != head.shape:
        raise ValueError(f"mask {mask.shape} and sdm {head.shape} differ in shape")
    overlap = dice(head, mask)
    if overlap == 0.0:
        return 0.0
    boundary = normalized_surface_dice(head, mask, spacing, tolerance_mm)
    return float(math.sqrt(overlap * boundary))


def _near(mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` of ``mask`` (the mask included), on the mask's bounding box plus the margin."""
    coords = np.nonzero(mask)
    pad = [int(math.ceil(margin_mm / s)) + 1 for s in spacing]
    lo = [max(0, int(c.min()) - p) for c, p in zip(coords, pad)]
    hi = [min(n, int(c.max()) + 1 + p) for c, n, p in zip(coords, mask.shape, pad)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    outside = np.ascontiguousarray(~mask[box]).view(np.uint8)
    distance = edt.edt(outside, anisotropy=tuple(float(s) for s in spacing), black_border=False)
    near = np.zeros(mask.shape, dtype=bool)
    near[box] = distance <= margin_mm
    return near


def entropy_score(probabilities: np.ndarray, label: int, mask: np.ndarray, spacing: Sequence[float], *,
                  margin_mm: float = MARGIN_MM) -> float:
    """Softmax confidence in [0, 1] about organ ``label``: 1 - mean normalised entropy over its uncertain zone.

    ``probabilities``: softmax (classes, z, y, x) with background at index 0; ``mask``: the segmented
    organ. The zone: voxels within ``margin_mm`` of ``mask`` or of ``probabilities[label] > 0.1``.
    """
    probabilities = np.asarray(probabilities)
    mask = np.asarray(mask, dtype=bool)
    if probabilities.shape[1:] != mask.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not match mask {mask.shape}")
    seed = mask | (probabilities[label] > 0.1)
    if not seed.any():
        return 1.0
    zone = _near(seed, spacing, margin_mm)
    p = probabilities[:, zone].astype(np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=0) / math.log(probabilities.shape[0])
    return float(np.clip(1.0 - entropy.mean(), 0.0, 1.0))


def case_qc(case: str, segmentation: np.ndarray, sdm: np.ndarray, probabilities: np.ndarray | None,
            spacing: Sequence[float], organs: Mapping[int, str], *, threshold: float = QC_THRESHOLD,
            tolerance_mm: float = TOLERANCE_MM, margin_mm: float = MARGIN_MM) -> list[dict]:
    """Rows of ``qc.csv`` for one case: per organ (label -> name) the SDM score, the baseline and the flag.

    ``sdm`` has one channel per organ in label order (as the SDM head and ``--save-sdm`` give it);
    ``probabilities`` (classes, z, y, x) or ``None`` (empty baseline). ``flagged`` is 1 where
    ``qc < threshold``.
    """
    segmentation = np.asarray(segmentation)
    labels = sorted(organs)
    if len(sdm) < len(labels):
        raise ValueError(f"sdm has {len(sdm)} channels for {len(labels)} organs")
    rows = []
    for channel, label in enumerate(labels):
        mask = segmentation == label
        score = sdm_score(mask, sdm[channel], spacing, tolerance_mm=tolerance_mm)
        base = (None if probabilities is None
                else entropy_score(probabilities, label, mask, spacing, margin_mm=margin_mm))
        rows.append({"case": case, "organ": organs[label], "qc": round(score, 4),
                     "qc_baseline": None if base is None else round(base, 4), "flagged": int(score < threshold)})
    return rows


def read_qc_csv(path: Path) -> list[dict]:
    """Rows of a ``qc.csv`` (values as strings); empty when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row.get("case")]


def update_qc_csv(path: Path, rows: Iterable[dict]) -> None:
    """Add or replace the given cases' rows in ``path`` (rewritten atomically, sorted by case, organs in order)."""
    rows = list(rows)
    new_cases = {row["case"] for row in rows}
    kept = [row for row in read_qc_csv(path) if row["case"] not in new_cases]
    table = kept + rows
    order = {case: i for i, case in enumerate(sorted({row["case"] for row in table}))}
    table.sort(key=lambda row: order[row["case"]])  # stable: organ order within a case is kept
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=QC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in QC_COLUMNS})
    write_text(path, buffer.getvalue())

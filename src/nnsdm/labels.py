"""The FLARE21 label set: the one definition of the organs, their labels and how many components each has.

FLARE21 masks hold 0 background, 1 liver, 2 kidney, 3 spleen, 4 pancreas. Label 2 covers both kidneys,
so connected-component post-processing keeps two components for it (see :mod:`nnsdm.postprocessing`).
"""

from __future__ import annotations

from collections.abc import Mapping

from nnsdm.errors import NnsdmError

__all__ = ["FLARE21_LABELS", "FLARE21_ORGANS", "FLARE21_DATASET_LABELS", "FLARE21_KEEP", "PAIRED_ORGANS",
           "components_kept", "keep_counts"]

FLARE21_LABELS: dict[int, str] = {1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"}
FLARE21_ORGANS: tuple[str, ...] = tuple(FLARE21_LABELS.values())
# dataset.json's "labels" entry (name -> value) for a FLARE21-like dataset
FLARE21_DATASET_LABELS: dict[str, int] = {"background": 0, **{name: label for label, name in FLARE21_LABELS.items()}}
# label names that hold a pair of organs (one component each)
PAIRED_ORGANS = frozenset({"kidney", "kidneys"})


def components_kept(name: str) -> int:
    """Connected components an organ label keeps in post-processing: 2 for a paired organ, else 1."""
    return 2 if str(name).strip().lower() in PAIRED_ORGANS else 1


def keep_counts(labels: Mapping[str, int]) -> dict[int, int]:
    """Components kept per foreground label of dataset.json's ``labels`` (name -> value): 2 for a label
    named kidney(s), else 1. A region-based (list-valued) label is a one-line ``NnsdmError``."""
    keep = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise NnsdmError(f"label {name!r}: region-based labels are not supported by connected-component post-processing")
        if int(value) > 0:
            keep[int(value)] = components_kept(name)
    return keep


FLARE21_KEEP: dict[int, int] = keep_counts(FLARE21_DATASET_LABELS)

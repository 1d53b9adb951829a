"""The FLARE21 label set: one definition, used by dataset conversion, phantoms, metrics and post-processing."""

from __future__ import annotations

import pytest

from nnsdm.errors import NnsdmError
from nnsdm.labels import FLARE21_DATASET_LABELS, FLARE21_KEEP, FLARE21_LABELS, FLARE21_ORGANS, components_kept, keep_counts


def test_flare21_labels_and_their_dataset_json_form():
    assert FLARE21_LABELS == {1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"}
    assert FLARE21_ORGANS == ("liver", "kidney", "spleen", "pancreas")
    assert FLARE21_DATASET_LABELS == {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}


def test_keep_counts_of_the_flare21_labels_is_the_flare21_rule():
    assert keep_counts(FLARE21_DATASET_LABELS) == FLARE21_KEEP == {1: 1, 2: 2, 3: 1, 4: 1}
    assert keep_counts({"background": 0, "kidney_left": 1, "Kidneys": 2}) == {1: 1, 2: 2}
    assert components_kept(" Kidney ") == 2 and components_kept("liver") == 1


def test_region_based_labels_have_no_component_rule():
    with pytest.raises(NnsdmError, match="label 'organs': region-based labels are not supported"):
        keep_counts({"background": 0, "organs": [1, 2]})

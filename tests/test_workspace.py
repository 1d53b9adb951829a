"""The workspace: nnU-Net's three folders under one root, its environment variables and dataset names."""

from __future__ import annotations

import json
import os

import pytest

from nnsdm.errors import NnsdmError
from nnsdm.workspace import Workspace, next_dataset_id


def test_activate_creates_the_folders_and_points_nnunet_at_them(tmp_path, monkeypatch):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    workspace = Workspace(tmp_path / "ws").activate()
    assert workspace.root == (tmp_path / "ws").resolve()
    for var, folder in (("nnUNet_raw", workspace.raw), ("nnUNet_preprocessed", workspace.preprocessed),
                        ("nnUNet_results", workspace.results)):
        assert folder.is_dir() and os.environ[var] == str(folder)


def test_dataset_names_resolve_by_name_id_or_the_only_one(tmp_path):
    workspace = Workspace(tmp_path)
    with pytest.raises(NnsdmError, match="workspace holds no planned dataset"):
        workspace.dataset_name()
    (workspace.preprocessed / "Dataset501_FLARE21").mkdir(parents=True)
    (workspace.preprocessed / "not_a_dataset").mkdir()
    assert workspace.datasets() == ["Dataset501_FLARE21"]
    for given in (None, "Dataset501_FLARE21", "FLARE21", "501"):
        assert workspace.dataset_name(given) == "Dataset501_FLARE21"
    (workspace.preprocessed / "Dataset502_Phantom").mkdir()
    with pytest.raises(NnsdmError, match=r"several datasets \(Dataset501_FLARE21, Dataset502_Phantom\)"):
        workspace.dataset_name()
    with pytest.raises(NnsdmError, match="no planned dataset named 'Liver'"):
        workspace.dataset_name("Liver")


def test_plans_are_read_with_one_line_errors(tmp_path):
    workspace = Workspace(tmp_path)
    (workspace.preprocessed / "Dataset501_FLARE21").mkdir(parents=True)
    with pytest.raises(NnsdmError, match="nnUNetPlans.json: plans not found"):
        workspace.load_plans()
    workspace.plans_file().write_text("{not json")
    with pytest.raises(NnsdmError, match="nnUNetPlans.json: unreadable plans"):
        workspace.load_plans()
    workspace.plans_file().write_text(json.dumps({"plans_name": "nnUNetPlans"}))
    assert workspace.load_plans("501") == {"plans_name": "nnUNetPlans"}


def test_next_dataset_id_skips_used_ids(tmp_path):
    workspace = Workspace(tmp_path)
    assert next_dataset_id(workspace) == 501
    for name in ("Dataset501_A", "Dataset502_B", "Dataset504_C", "other"):
        (workspace.raw / name).mkdir(parents=True)
    assert next_dataset_id(workspace) == 503
    assert next_dataset_id(workspace, start=504) == 505

"""Planning with nnU-Net on tiny phantoms, presets as plan rewrites, and refusals."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

from nnsdm.cli import main
from nnsdm.errors import NnsdmError
from nnsdm.planning import PRESETS, apply_preset, plan
from nnsdm.workspace import Workspace


def test_cpu_small_plan_on_tiny_phantoms(planned_workspace, phantom_dataset):
    workspace, summary = planned_workspace
    name = summary.dataset_name
    assert name.startswith("Dataset501_")
    # the user's dataset is linked, not copied or modified
    assert (workspace.raw / name).is_symlink() and (workspace.raw / name).resolve() == phantom_dataset.resolve()
    pre = workspace.preprocessed / name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())

    assert summary.batch_size == config["batch_size"] == 2
    assert summary.features_per_stage == [8, 16, 32, 64]
    assert all(p <= q for p, q in zip(summary.patch_size, PRESETS["cpu-small"].patch_size))
    assert all(p % (2 ** sum(s[i] == 2 for s in summary.strides)) == 0 for i, p in enumerate(summary.patch_size))
    # spacing stays nnU-Net's choice (the median, or a finer slice spacing for anisotropic data): the tiny
    # phantoms (8x5x5 mm) are coarser than cpu-small's 3x1.6x1.6 mm floor
    assert summary.spacing[1] == pytest.approx(float(np.median([s[1] for s in fingerprint["spacings"]])))
    assert config["normalization_schemes"] == ["CTNormalization"]
    assert 100_000 < summary.parameters < 1_000_000
    # preprocessed cases and ground truth copies exist for every training case
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (phantom_dataset / "imagesTr").iterdir())
    data = pre / config["data_identifier"]
    assert all(any(data.glob(f"{c}.*")) for c in cases)
    assert sorted(p.name[:-7] for p in (pre / "gt_segmentations").iterdir()) == cases
    text = str(summary)
    for expected in ("spacing", "patch", "batch", "4 stages", "parameters", f"{summary.parameters:,}"):
        assert expected in text


def test_default_preset_keeps_nnunets_plan_and_flare21_sets_the_papers_patch():
    arch = {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320], "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5,
            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]], "n_conv_per_stage": [2] * 6,
            "n_conv_per_stage_decoder": [2] * 5}
    original = {"patch_size": [40, 224, 224], "batch_size": 2, "spacing": [2.5, 0.8, 0.8],
                "median_image_size_in_voxels": [100, 512, 512], "architecture": {"arch_kwargs": arch}}
    unchanged = apply_preset(copy.deepcopy(original), PRESETS["default"], get_pool_and_conv_props)
    assert unchanged == original
    flare = apply_preset(copy.deepcopy(original), PRESETS["flare21"], get_pool_and_conv_props)
    assert flare["patch_size"] == [80, 192, 160] and flare["batch_size"] == 2
    kwargs = flare["architecture"]["arch_kwargs"]
    assert kwargs["n_stages"] == len(kwargs["strides"]) == len(kwargs["kernel_sizes"]) == len(kwargs["features_per_stage"])
    assert kwargs["strides"][0] == [1, 1, 1] and kwargs["features_per_stage"][0] == 32


def test_plan_refuses_a_dataset_with_problems_before_touching_the_workspace(tmp_path, phantom_dataset):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(phantom_dataset, broken)
    (broken / "labelsTr" / "phantom_001.nii.gz").unlink()
    workspace = Workspace(tmp_path / "ws")
    with pytest.raises(NnsdmError, match="phantom_001_0000.nii.gz"):
        plan(broken, workspace=workspace, preset="cpu-small")
    assert not workspace.root.exists()


def test_plan_cli_errors_are_single_lines(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "missing"), "--workspace", str(tmp_path / "ws")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nnsdm: error: {tmp_path / 'missing'}: dataset folder not found"]
    with pytest.raises(SystemExit) as exc:
        main(["plan", str(tmp_path), "--preset", "huge"])
    assert exc.value.code == 2


def test_registering_the_same_dataset_again_reuses_its_id(planned_workspace, phantom_dataset):
    from nnsdm.planning import register_dataset

    workspace, summary = planned_workspace
    assert register_dataset(phantom_dataset, workspace) == summary.dataset_name
    assert os.readlink(workspace.raw / summary.dataset_name) == str(phantom_dataset.resolve())


def test_min_spacing_floors_nnunets_target_spacing(tmp_path, phantom_dataset, monkeypatch):
    import dataclasses

    import nnsdm.planning as planning

    coarse = dataclasses.replace(PRESETS["cpu-small"], min_spacing=(0.0, 7.5, 7.5))
    monkeypatch.setitem(planning.PRESETS, "cpu-small", coarse)
    summary = plan(phantom_dataset, workspace=Workspace(tmp_path / "ws"), preset="cpu-small", num_processes=1, check=False)
    fingerprint = json.loads((tmp_path / "ws" / "nnUNet_preprocessed" / summary.dataset_name / "dataset_fingerprint.json").read_text())
    median = np.median(np.array(fingerprint["spacings"]), axis=0)
    assert median[1] < 7.5  # the floor is what coarsens the in-plane spacing
    assert summary.spacing[1:] == pytest.approx([7.5, 7.5])
    assert summary.spacing[0] == pytest.approx(float(median[0]))  # a floor of 0 keeps nnU-Net's choice
    plans = json.loads(summary.plans_file.read_text())
    assert plans["configurations"]["3d_fullres"]["median_image_size_in_voxels"][1] < 64 * 5 / 7.5 + 2

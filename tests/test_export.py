"""Export to a stock nnU-Net model folder, and the parameter/FLOP statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnsdm.cli import main
from nnsdm.export import export_stock_model, model_statistics
from nnsdm.network import SDM_HEAD_PREFIX


def _stock_predictor():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    return nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)


def _nnsdm_predictor(model):
    """nnU-Net's predictor driving nnsdm's own network (with its SDM head), built without the trainer lookup."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnsdm.network import build_network

    plans = PlansManager(json.loads((model / "plans.json").read_text()))
    dataset_json = json.loads((model / "dataset.json").read_text())
    config = plans.get_configuration("3d_fullres")
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    net = build_network(plans, config, determine_num_input_channels(plans, config, dataset_json),
                        plans.get_label_manager(dataset_json).num_segmentation_heads, num_sdm_channels=4,
                        deep_supervision=False)
    predictor = _stock_predictor()
    predictor.manual_initialization(net, plans, config, [checkpoint["network_weights"]], dataset_json,
                                    checkpoint["trainer_name"], checkpoint["inference_allowed_mirroring_axes"])
    return predictor


def test_exported_model_runs_under_stock_nnunet_with_identical_predictions(trained_model, phantom_dataset, tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    out = export_stock_model(trained_model, tmp_path / "stock")
    checkpoint = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert not any(k.startswith(SDM_HEAD_PREFIX) for k in checkpoint["network_weights"])

    stock = _stock_predictor()
    stock.initialize_from_trained_model_folder(str(out), use_folds=(0,))  # nnU-Net's own loading path
    image, props = SimpleITKIO().read_images([str(phantom_dataset / "imagesTr" / "phantom_000_0000.nii.gz")])
    expected = _nnsdm_predictor(trained_model).predict_single_npy_array(image, props, None, None, True)
    got = stock.predict_single_npy_array(image, props, None, None, True)
    np.testing.assert_array_equal(got[0], expected[0])  # segmentation
    np.testing.assert_array_equal(got[1], expected[1])  # probabilities
    assert len(np.unique(got[0])) > 1


def test_export_refuses_a_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notamodel").mkdir()
    code = main(["export", "--model", str(tmp_path / "notamodel"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("nnsdm: error: ") and "notamodel" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_stats_counts_parameters_and_flops_with_and_without_head(trained_model, capsys):
    stats = model_statistics(trained_model)
    plans = json.loads((trained_model / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    # one 1x1x1 conv per decoder stage, 4 outputs each, with bias
    head = sum(4 * f + 4 for f in arch["features_per_stage"][:-1])
    assert stats["parameters_with_sdm_head"] - stats["parameters"] == head
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    assert stats["flops_with_sdm_head"] - stats["flops"] == 2 * arch["features_per_stage"][0] * 4 * int(np.prod(patch))
    assert main(["stats", "--model", str(trained_model)]) == 0
    assert f"{stats['parameters']:,}" in capsys.readouterr().out


def test_stats_on_a_plans_file_and_on_garbage(planned_workspace, tmp_path, capsys):
    workspace, summary = planned_workspace
    assert model_statistics(summary.plans_file)["parameters"] == summary.parameters
    bad = tmp_path / "nnUNetPlans.json"
    bad.write_text("{not json")
    (tmp_path / "dataset.json").write_text("{}")
    assert main(["stats", "--model", str(bad)]) == 1
    assert "not an nnU-Net plans file" in capsys.readouterr().err


@pytest.mark.parametrize("folder_state", ["missing", "no_checkpoint"])
def test_stats_and_export_errors_name_the_folder(tmp_path, folder_state):
    from nnsdm.errors import NnsdmError

    model = tmp_path / "model"
    if folder_state == "no_checkpoint":
        model.mkdir()
        (model / "plans.json").write_text("{}")
        (model / "dataset.json").write_text("{}")
    with pytest.raises(NnsdmError, match="model"):
        export_stock_model(model, tmp_path / "out")

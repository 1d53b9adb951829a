"""The SDM head network: output shapes, stock compatibility, initialisation, size and FLOP counts."""

from __future__ import annotations

import math

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnsdm.network import SDMUNet, build_network, count_flops, count_parameters, strip_sdm_head
from nnsdm.planning import PRESETS, apply_preset

PATCH = (16, 32, 32)
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]


def _plans(network_class: str) -> PlansManager:
    arch = {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": STRIDES,
        "n_conv_per_stage": [1, 1, 1] if "Residual" in network_class else [2, 2, 2],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if "Residual" in network_class:
        arch["n_blocks_per_stage"] = arch.pop("n_conv_per_stage")
    config = {
        "data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2, "patch_size": list(PATCH),
        "median_image_size_in_voxels": [32, 64, 64], "spacing": [2.5, 0.8, 0.8], "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
        "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {}, "batch_dice": False,
        "architecture": {"network_class_name": network_class, "arch_kwargs": arch,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    }
    return PlansManager({"dataset_name": "Dataset999_T", "plans_name": "nnUNetPlans", "configurations": {"3d_fullres": config},
                         "original_median_spacing_after_transp": [2.5, 0.8, 0.8], "original_median_shape_after_transp": [32, 64, 64],
                         "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
                         "experiment_planner_used": "x", "label_manager": "LabelManager",
                         "foreground_intensity_properties_per_channel": {}})


NETWORKS = ["dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"]


def _build(network_class: str, *, sdm: int = 4, deep_supervision: bool = True):
    manager = _plans(network_class)
    return build_network(manager, manager.get_configuration("3d_fullres"), 1, 5, num_sdm_channels=sdm,
                         deep_supervision=deep_supervision)


@pytest.mark.parametrize("network_class", NETWORKS)
def test_deep_supervision_outputs_pair_segmentation_and_sdm_at_each_scale(network_class):
    torch.manual_seed(0)
    net = _build(network_class)
    out = net(torch.randn(2, 1, *PATCH))
    expected = [(16, 32, 32), (16, 16, 16), (8, 8, 8)][:2]  # decoder stages: full and half resolution
    assert [tuple(o.shape) for o in out] == [(2, 5, *s) for s in expected]
    assert [tuple(o.shape) for o in out.sdm] == [(2, 4, *s) for s in expected]
    assert all(float(o.abs().max()) <= 1.0 for o in out.sdm)  # tanh


@pytest.mark.parametrize("network_class", NETWORKS)
def test_without_deep_supervision_only_segmentation_logits_are_returned(network_class):
    net = _build(network_class, deep_supervision=False).eval()
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        seg = net(x)
        assert isinstance(seg, torch.Tensor) and seg.shape == (1, 5, *PATCH)
        net.return_sdm = True
        seg2, sdm = net(x)
    assert torch.equal(seg, seg2)
    assert sdm.shape == (1, 4, *PATCH)


@pytest.mark.parametrize("network_class", NETWORKS)
def test_stripped_state_dict_loads_strictly_into_the_stock_network_with_identical_output(network_class):
    sdm_net = _build(network_class, deep_supervision=False).eval()
    stock = _build(network_class, sdm=0, deep_supervision=False).eval()
    assert not isinstance(stock, SDMUNet)
    stock.load_state_dict(strip_sdm_head(sdm_net.state_dict()), strict=True)
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        assert torch.equal(sdm_net(x), stock(x))


def test_sdm_head_is_he_normal_initialised():
    torch.manual_seed(1)
    manager = _plans(NETWORKS[0])
    config = manager.get_configuration("3d_fullres")
    weights = []
    for _ in range(20):
        net = build_network(manager, config, 1, 5, num_sdm_channels=4)
        weights.append(net.sdm_heads[0].weight.detach().flatten())
        assert torch.count_nonzero(net.sdm_heads[0].bias) == 0
    fan_in = net.sdm_heads[0].weight.shape[1]
    expected_std = math.sqrt(2.0 / (1 + 1e-2**2) / fan_in)
    assert torch.cat(weights).std().item() == pytest.approx(expected_std, rel=0.15)


def test_parameter_and_flop_counts_separate_the_sdm_head():
    net = _build(NETWORKS[0], deep_supervision=False)
    head = sum(p.numel() for p in net.sdm_heads.parameters())
    assert head == 2 * (4 * 4 + 4) + 0 or head == sum(l.in_channels * 4 + 4 for l in net.decoder.seg_layers)
    assert count_parameters(net) - count_parameters(net, include_sdm_head=False) == head
    base = count_flops(net, PATCH, with_sdm=False)
    with_head = count_flops(net, PATCH, with_sdm=True)
    # the full-resolution head is a 1x1x1 conv: 2 FLOPs per multiply-add, in_channels x 4 outputs per voxel
    assert with_head - base == 2 * net.decoder.seg_layers[-1].in_channels * 4 * math.prod(PATCH)
    assert not net.decoder.deep_supervision  # counting restores the network's state


def test_flare21_preset_topology_and_size():
    """The paper's patch gives a 6-stage network with about 31 M parameters under nnU-Net v2's rules."""
    manager = _plans(NETWORKS[0])
    plan = manager.plans["configurations"]["3d_fullres"]
    plan["architecture"]["arch_kwargs"].update(features_per_stage=[32, 64, 128, 256, 320, 320],
                                               n_conv_per_stage=[2] * 6, n_conv_per_stage_decoder=[2] * 5)
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    apply_preset(plan, PRESETS["flare21"], get_pool_and_conv_props)
    assert plan["patch_size"] == [80, 192, 160] and plan["batch_size"] == 2
    manager = PlansManager(manager.plans)
    with torch.device("meta"):
        net = build_network(manager, manager.get_configuration("3d_fullres"), 1, 5, num_sdm_channels=4, deep_supervision=False)
    assert plan["architecture"]["arch_kwargs"]["n_stages"] == 6
    assert 30e6 < count_parameters(net, include_sdm_head=False) < 32e6


@pytest.mark.parametrize("bf16", [False, True])
def test_cpu_fast_path_keeps_outputs_gradients_and_state_dict(bf16):
    from nnsdm.device import use_cpu_fast_path
    from nnsdm.network import DeepSupervisionOutputs

    torch.manual_seed(0)
    reference = _build(NETWORKS[0])
    fast = _build(NETWORKS[0])
    fast.load_state_dict(reference.state_dict())
    use_cpu_fast_path(fast, bf16=bf16)
    x = torch.randn(2, 1, *PATCH)
    expected, out = reference(x), fast(x)
    assert isinstance(out, DeepSupervisionOutputs) and len(out.sdm) == len(expected.sdm)
    assert all(o.dtype == torch.float32 for o in [*out, *out.sdm])
    # bfloat16 keeps about 3 significant digits, and errors add up through the layers
    max_tolerance, mean_tolerance = (0.15, 0.01) if bf16 else (1e-4, 1e-5)
    for got, want in zip([*out, *out.sdm], [*expected, *expected.sdm]):
        assert got.shape == want.shape
        scale = max(1.0, float(want.abs().max()))
        difference = (got - want).abs()
        assert float(difference.max()) <= max_tolerance * scale and float(difference.mean()) <= mean_tolerance * scale
    # gradients reach every parameter, in float32, close to the reference's
    sum(o.square().mean() for o in [*out, *out.sdm]).backward()
    sum(o.square().mean() for o in [*expected, *expected.sdm]).backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in fast.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
    first = "encoder.stages.0.0.convs.0.conv.weight"
    g, r = dict(fast.named_parameters())[first].grad, ref_grads[first].grad
    assert float(torch.nn.functional.cosine_similarity(g.flatten(), r.flatten(), dim=0)) > (0.98 if bf16 else 0.9999)
    # the state dict keeps its keys and loads into a network without the fast path
    plain = _build(NETWORKS[0])
    plain.load_state_dict(fast.state_dict())
    assert set(plain.state_dict()) == set(reference.state_dict())



def test_cpu_fast_path_batch_of_one_without_gradients_matches_and_uses_onednn():
    from torch.profiler import profile

    from nnsdm.device import use_cpu_fast_path

    torch.manual_seed(0)
    reference = _build(NETWORKS[0], deep_supervision=False).eval()
    fast = use_cpu_fast_path(_build(NETWORKS[0], deep_supervision=False).eval(), bf16=False)
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        expected = reference(x)
        with profile() as prof:
            got = fast(x)
    assert got.shape == expected.shape == (1, 5, *PATCH)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::mkldnn_convolution" in ops and "aten::slow_conv3d_forward" not in ops

"""The SDM head network: output shapes, stock compatibility, initialisation, size and FLOP counts."""

from __future__ import annotations

import math

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from helpers_networks import NETWORKS, PATCH
from helpers_networks import build as _build
from helpers_networks import plans as _plans
from nnsdm.network import SDMUNet, build_network, count_flops, count_parameters, strip_sdm_head
from nnsdm.planning import PRESETS, apply_preset

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

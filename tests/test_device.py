"""Device and precision: --device, --cpu-precision and the CPU fast path (channels-last, bf16 autocast)."""

from __future__ import annotations

import pytest
import torch

import nnsdm.device as device
from helpers_networks import NETWORKS, PATCH
from helpers_networks import build as _build
from nnsdm.device import cpu_bf16_supported, resolve_cpu_precision, resolve_device, use_cpu_fast_path
from nnsdm.errors import NnsdmError
from nnsdm.network import DeepSupervisionOutputs


def test_unknown_device_and_missing_cuda_are_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(NnsdmError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(NnsdmError, match="no CUDA device"):
            resolve_device("cuda")


def test_cpu_precision_auto_follows_the_cpu_and_bad_values_are_errors(monkeypatch):
    assert resolve_cpu_precision("auto") == ("bf16" if cpu_bf16_supported() else "fp32")
    assert resolve_cpu_precision("fp32") == "fp32" and resolve_cpu_precision("bf16") == "bf16"
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(device, "cpu_bf16_supported", lambda supported=supported: supported)
        assert resolve_cpu_precision("auto") == expected
    with pytest.raises(NnsdmError, match="--cpu-precision fp16: choose auto, bf16 or fp32"):
        resolve_cpu_precision("fp16")


@pytest.mark.parametrize("bf16", [False, True])
def test_cpu_fast_path_keeps_outputs_gradients_and_state_dict(bf16):
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

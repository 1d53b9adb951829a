"""The planned nnU-Net network with a signed-distance-map head (FLARE21 "nnUNet with Signed Distance Map").

:class:`SDMUNet` reuses the encoder and decoder modules of nnU-Net's planned network (PlainConvUNet or
ResidualEncoderUNet, both built on ``UNetDecoder``) and adds, at every decoder stage, a 1x1x1 convolution
with one output per foreground class followed by tanh. ``UNetDecoder.forward`` does not expose its
features, so the decoder loop is repeated here (a dozen lines).

Outputs:

* deep supervision on (training): the list of segmentation outputs from the highest resolution down,
  as nnU-Net's own network returns it (so nnU-Net's train and validation steps index it unchanged), as
  a :class:`DeepSupervisionOutputs` whose ``.sdm`` holds the SDM outputs at the same resolutions;
* deep supervision off (inference): only the full-resolution segmentation logits, exactly what nnU-Net's
  predictor and final validation expect; with ``return_sdm = True`` the pair ``(seg, sdm)`` instead.

The state dict holds the stock network's keys plus ``sdm_heads.*``: dropping those keys gives a stock
nnU-Net state dict (see :func:`strip_sdm_head`).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from nnsdm.errors import NnsdmError

SDM_HEAD_PREFIX = "sdm_heads."


class DeepSupervisionOutputs(list):
    """Segmentation outputs, highest resolution first, carrying the SDM outputs as ``.sdm``."""

    def __init__(self, seg: list, sdm: list) -> None:
        super().__init__(seg)
        self.sdm = sdm


class SDMUNet(nn.Module):
    """nnU-Net's U-Net plus a tanh signed-distance head per decoder stage."""

    def __init__(self, unet: nn.Module, num_sdm_channels: int) -> None:
        super().__init__()
        decoder = getattr(unet, "decoder", None)
        if decoder is None or not all(hasattr(decoder, a) for a in ("stages", "transpconvs", "seg_layers")):
            raise TypeError(f"{type(unet).__name__}: SDM head needs a network with nnU-Net's UNetDecoder")
        self.encoder = unet.encoder
        self.decoder = decoder
        self.base_class = f"{type(unet).__module__}.{type(unet).__name__}"
        conv_op = unet.encoder.conv_op
        self.sdm_heads = nn.ModuleList(
            conv_op(layer.in_channels, num_sdm_channels, 1, 1, 0, bias=True) for layer in decoder.seg_layers
        )
        self.sdm_heads.apply(_he_normal)
        self.return_sdm = False

    def forward(self, x: torch.Tensor):
        decoder = self.decoder
        skips = self.encoder(x)
        low_res = skips[-1]
        seg_outputs: list[torch.Tensor] = []
        sdm_outputs: list[torch.Tensor] = []
        last = len(decoder.stages) - 1
        for s in range(len(decoder.stages)):
            x = decoder.transpconvs[s](low_res)
            x = torch.cat((x, skips[-(s + 2)]), 1)
            x = decoder.stages[s](x)
            if decoder.deep_supervision or s == last:
                seg_outputs.append(decoder.seg_layers[s](x))
                if decoder.deep_supervision or self.return_sdm:
                    sdm_outputs.append(torch.tanh(self.sdm_heads[s](x)))
            low_res = x
        if decoder.deep_supervision:
            return DeepSupervisionOutputs(seg_outputs[::-1], sdm_outputs[::-1])
        if self.return_sdm:
            return seg_outputs[0], sdm_outputs[0]
        return seg_outputs[0]

    def compute_conv_feature_map_size(self, input_size) -> int:
        """nnU-Net's memory estimate of the base network (the heads add one small map per stage)."""
        return self.encoder.compute_conv_feature_map_size(input_size) + self.decoder.compute_conv_feature_map_size(input_size)


def _he_normal(module: nn.Module) -> None:
    """He-normal initialisation as nnU-Net's ``InitWeights_He(1e-2)``."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)


def build_network(
    plans_manager,
    configuration_manager,
    num_input_channels: int,
    num_output_channels: int,
    *,
    num_sdm_channels: int,
    deep_supervision: bool = True,
) -> nn.Module:
    """The planned network; with ``num_sdm_channels > 0`` wrapped as :class:`SDMUNet`.

    ``num_sdm_channels == 0`` returns nnU-Net's own network untouched (the ``sdm_weight 0`` baseline).
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    unet = get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_output_channels,
        allow_init=True,
        deep_supervision=deep_supervision,
    )
    if num_sdm_channels <= 0:
        return unet
    return SDMUNet(unet, num_sdm_channels)


CPU_PRECISIONS = ("auto", "bf16", "fp32")


def resolve_cpu_precision(cpu_precision: str) -> str:
    """``bf16`` or ``fp32`` for ``--cpu-precision``: ``auto`` is bf16 where the CPU computes it natively."""
    if cpu_precision not in CPU_PRECISIONS:
        raise NnsdmError(f"--cpu-precision {cpu_precision}: choose auto, bf16 or fp32")
    if cpu_precision == "auto":
        return "bf16" if cpu_bf16_supported() else "fp32"
    return cpu_precision


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: bf16 convolutions are emulated there
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 convolutions pay off.

    Honours the instruction-set caps PyTorch and oneDNN honour (``ATEN_CPU_CAPABILITY`` below AVX512,
    ``ONEDNN_MAX_CPU_ISA`` below AVX512_CORE_BF16): under them bf16 runs emulated, as on a CPU without it.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ONEDNN_ISAS_WITHOUT_BF16:
        return False
    try:
        if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
            return False
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private torch helpers: treat their absence as "no"
        return False


def use_cpu_fast_path(network: nn.Module, *, bf16: bool) -> nn.Module:
    """Make a network that runs on the CPU about 1.5x (fp32) or 2.5x (bf16) faster per training step.

    oneDNN's 3D convolutions, above all their backward pass, are much faster in the channels-last
    (NDHWC) layout, so weights and inputs are switched to it. With ``bf16`` the forward pass runs under
    CPU autocast with bfloat16 (the CPU counterpart of nnU-Net's fp16 autocast on CUDA; bfloat16 has
    fp32's range, so no gradient scaler is needed). Outputs are returned in float32, so losses, Dice and
    the exported probabilities are computed in full precision. Parameters and state dict keys are
    unchanged (checkpoints load into a network without the fast path). Returns ``network``.

    Inference in fp32 with a batch of one (nnU-Net's sliding window): PyTorch sends float32 3D
    convolutions with a batch of one and few channels to its slow reference kernel (``slow_conv3d``,
    about 9x slower here than oneDNN for 8 channels at 32x80x80), so without gradients such a batch is
    run as two identical samples, which takes oneDNN's path, and the first is returned.
    """
    network.to(memory_format=torch.channels_last_3d)
    forward = network.forward

    def fast_forward(x: torch.Tensor, *args, **kwargs):
        single = x.dim() == 5 and x.shape[0] == 1 and not bf16 and not torch.is_grad_enabled()
        if single:
            x = x.expand(2, *x.shape[1:])
        if x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(x, *args, **kwargs)
        out = _map_outputs(out, lambda t: t.float())
        return _map_outputs(out, lambda t: t[:1]) if single else out

    network.forward = fast_forward
    return network


def _map_outputs(out, fn):
    """``fn`` applied to every tensor of a network output (tensor, list/tuple, DeepSupervisionOutputs)."""
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, DeepSupervisionOutputs):
        return DeepSupervisionOutputs([fn(o) for o in out], [fn(o) for o in out.sdm])
    if isinstance(out, (list, tuple)):
        return type(out)(_map_outputs(o, fn) for o in out)
    return out


def strip_sdm_head(state_dict: dict) -> dict:
    """A stock nnU-Net state dict: the given one without the SDM head's weights."""
    return {k: v for k, v in state_dict.items() if not k.startswith(SDM_HEAD_PREFIX)}


def count_parameters(network: nn.Module, *, include_sdm_head: bool = True) -> int:
    """Number of trainable parameters, optionally leaving out the SDM head."""
    return sum(
        p.numel()
        for name, p in network.named_parameters()
        if p.requires_grad and (include_sdm_head or not name.startswith(SDM_HEAD_PREFIX))
    )


def count_flops(network: nn.Module, patch_size, *, in_channels: int = 1, with_sdm: bool = True) -> int:
    """FLOPs of one forward pass on one patch (batch 1), by torch's own FLOP counter.

    Counted with deep supervision off, as at inference; ``with_sdm`` also runs the full-resolution SDM head.
    torch counts a multiply-add as 2 FLOPs. A network on the ``meta`` device is counted without any
    arithmetic (fast even for the FLARE21 patch on a CPU).
    """
    from torch.utils.flop_counter import FlopCounterMode

    decoder = network.decoder
    old_ds, old_sdm = decoder.deep_supervision, getattr(network, "return_sdm", False)
    decoder.deep_supervision = False
    if isinstance(network, SDMUNet):
        network.return_sdm = with_sdm
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            device = next(network.parameters()).device
            network(torch.zeros((1, in_channels, *patch_size), device=device))
        return int(counter.get_total_flops())
    finally:
        decoder.deep_supervision = old_ds
        if isinstance(network, SDMUNet):
            network.return_sdm = old_sdm
        network.train(was_training)

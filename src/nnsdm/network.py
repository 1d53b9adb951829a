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

import torch
from torch import nn

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

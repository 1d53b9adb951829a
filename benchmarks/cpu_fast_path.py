"""CPU training step and inference forward: nnU-Net's default layout vs nnsdm's CPU fast path.

Three copies of the same SDM network (same weights, same batch) run side by side in one process:

* ``nnU-Net default``: contiguous (NCDHW) tensors in float32, as nnU-Net trains on a CPU;
* ``channels-last fp32``: :func:`nnsdm.device.use_cpu_fast_path` with ``bf16=False``
  (``nnsdm train --cpu-precision fp32``, and ``auto`` on CPUs without native bf16);
* ``channels-last bf16``: the same with bfloat16 autocast (``--cpu-precision bf16``, the default on CPUs
  with native bf16).

A training step is forward, nnsdm's loss (deep-supervised Dice + CE + SDM MSE), backward and an AdamW
step on random data shaped like the cpu-small plan (batch 2, its patch, 4 organs); the inference
figure is one forward pass without gradients of a batch of one, as nnU-Net's sliding window runs it
(PyTorch sends such float32 3D convolutions to a slow reference kernel; the fast path avoids it). The
largest difference of the fast paths' logits from the default's is printed too.

    python benchmarks/cpu_fast_path.py                 # cpu-small network, this machine's cores
    python benchmarks/cpu_fast_path.py --repeats 20

Goals, asserted: on a CPU with native bf16 (AVX512-BF16 or AMX) the fp32 fast path at least 1.3x and the
bf16 fast path at least 2x faster per training step; on a CPU without AVX512 (AVX2 only) the fp32 fast path
no slower per step (oneDNN's AVX2 kernels gain less from the layout); on every CPU each fast path at least
2x faster for a batch-of-one forward pass. Where bf16 is not native (it would be emulated, many times
slower, which ``--cpu-precision auto`` never chooses) the bf16 variant is skipped with a printed reason.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import nnsdm  # noqa: F401  (before torch: sets OpenMP's wait policy, as `nnsdm train` runs)


def _network(patch: tuple[int, int, int]):
    """The cpu-small SDM network on its own floor spacing (as the demo plans it for its phantoms)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnsdm.network import build_network
    from nnsdm.planning import PRESETS, apply_preset

    spacing = list(PRESETS["cpu-small"].min_spacing)
    arch = {"n_stages": 1, "features_per_stage": [32], "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]],
            "strides": [[1, 1, 1]], "n_conv_per_stage": [2], "n_conv_per_stage_decoder": [], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    config = {"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2, "patch_size": list(patch),
              "median_image_size_in_voxels": [64, 96, 96], "spacing": spacing, "normalization_schemes": ["CTNormalization"],
              "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
              "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {}, "batch_dice": False,
              "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                               "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    apply_preset(config, PRESETS["cpu-small"], get_pool_and_conv_props)
    manager = PlansManager({"dataset_name": "Dataset999_B", "plans_name": "nnUNetPlans", "configurations": {"3d_fullres": config},
                            "original_median_spacing_after_transp": spacing, "original_median_shape_after_transp": [64, 96, 96],
                            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
                            "experiment_planner_used": "x", "label_manager": "LabelManager",
                            "foreground_intensity_properties_per_channel": {}})
    return build_network(manager, manager.get_configuration("3d_fullres"), 1, 5, num_sdm_channels=4), config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions (after 2 warm-up ones)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnsdm.device import cpu_bf16_supported, use_cpu_fast_path
    from nnsdm.trainer import SegAndSDMLoss

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from nnsdm.planning import PRESETS

    reference, config = _network(PRESETS["cpu-small"].patch_size)
    patch = tuple(config["patch_size"])
    x = torch.randn(2, 1, *patch)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in reference(x)]
    weights = [1 / 2 ** i for i in range(len(shapes))]  # nnU-Net's deep-supervision weights (before normalising)
    seg_loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                                     weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss), weights)
    loss_fn = SegAndSDMLoss(seg_loss, weights, 1.0)

    seg_targets = [torch.randint(0, 5, (2, 1, *s)).float() for s in shapes]
    sdm_targets = [torch.rand(2, 4, *s) * 2 - 1 for s in shapes]

    native_bf16 = cpu_bf16_supported()
    variants = {"nnU-Net default": reference}
    for label, bf16 in (("channels-last fp32", False), ("channels-last bf16", True)):
        if bf16 and not native_bf16:
            print("skipping channels-last bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 would be "
                  "emulated; --cpu-precision auto trains in fp32 here")
            continue
        variants[label] = use_cpu_fast_path(copy.deepcopy(reference), bf16=bf16)

    def train_step(net, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        out = net(x)
        loss = loss_fn(out, [*seg_targets, *sdm_targets])
        loss.backward()
        optimizer.step()

    def timed(fn, repeats: int) -> float:
        for _ in range(2):
            fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats

    with torch.no_grad():
        expected = reference(x)[0]
    results = {}
    for label, net in variants.items():
        net.train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=0.0)  # lr 0: every variant keeps the same weights
        step = timed(lambda: train_step(net, optimizer), args.repeats)
        with torch.no_grad():
            forward = timed(lambda: net(x[:1]), args.repeats)
            difference = float((net(x[:1])[0] - expected[:1]).abs().max())
        results[label] = (step, forward, difference)

    base_step, base_forward, _ = results["nnU-Net default"]
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"\ncpu-small SDM network, batch 2, patch {'x'.join(map(str, patch))}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPU cores, {capability}, native bf16: {native_bf16}, {args.repeats} repeats")
    step_goals = {"channels-last fp32": 1.3 if capability.startswith("AVX512") else 1.0, "channels-last bf16": 2.0}
    print(f"{'variant':<22}{'train step s':>13}{'ratio':>8}{'goal':>7}{'forward 1 s':>12}{'ratio':>8}{'goal':>7}"
          f"{'max |logit diff|':>18}")
    failures = []
    for label, (step, forward, difference) in results.items():
        step_goal, forward_goal = step_goals.get(label), (2.0 if label in step_goals else None)
        goals = [f"{g:>6.1f}x" if g else f"{'':>7}" for g in (step_goal, forward_goal)]
        print(f"{label:<22}{step:>13.3f}{base_step / step:>7.2f}x{goals[0]}{forward:>12.3f}{base_forward / forward:>7.2f}x"
              f"{goals[1]}{difference:>18.2e}")
        if step_goal and base_step / step < step_goal:
            failures.append(f"{label} training step {base_step / step:.2f}x < {step_goal}x")
        if forward_goal and base_forward / forward < forward_goal:
            failures.append(f"{label} forward {base_forward / forward:.2f}x < {forward_goal}x")
    assert not failures, "; ".join(failures)


if __name__ == "__main__":
    main()

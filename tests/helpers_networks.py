"""Tiny planned networks (3 stages, 4-16 features, patch 16x32x32) for fast network and device tests."""

from __future__ import annotations

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnsdm.network import build_network

PATCH = (16, 32, 32)
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]


def plans(network_class: str) -> PlansManager:
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


def build(network_class: str, *, sdm: int = 4, deep_supervision: bool = True):
    manager = plans(network_class)
    return build_network(manager, manager.get_configuration("3d_fullres"), 1, 5, num_sdm_channels=sdm,
                         deep_supervision=deep_supervision)

"""Planning: nnU-Net v2's fingerprint, experiment plan and 3d_fullres preprocessing, with nnsdm's presets.

Seam with nnU-Net: :class:`PresetPlanner` subclasses nnU-Net's ``ExperimentPlanner`` and only rewrites
the finished ``3d_fullres`` configuration (patch, batch, network topology) when a preset asks for it, and
floors the target spacing where a preset sets ``min_spacing`` (only ``cpu-small``); normalisation,
resampling and everything else stay nnU-Net's own decisions. Plans stay data: the result is nnU-Net's
``nnUNetPlans.json`` in the workspace.

Presets:

* ``default``: nnU-Net's plan, unchanged.
* ``flare21``: the FLARE21 paper's configuration, patch 80x192x160 and batch 2 (topology re-derived for
  that patch with nnU-Net's own rules).
* ``cpu-small``: a small network and patch for CPU demos and tests, on data resampled to at least
  3 mm between slices and 1.6 mm in-plane (nnU-Net's spacing where it is coarser already). The grid
  bounds what any model can reach: the demo's ground truth taken to 4x2x2 mm and back scores spleen
  DSC 0.934 and kidney 0.932 at best, at 3x1.6x1.6 mm 0.950 and 0.945. The 24x64x64 patch (72 mm
  along z, 102 mm in-plane) keeps an iteration at about 0.3 s on 2 cores without AVX512 (fp32) and
  0.2 s with bf16. Predictions are resampled back to the input grid as usual.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nnsdm.errors import NnsdmError
from nnsdm.workspace import Workspace, next_dataset_id

CONFIGURATION = "3d_fullres"
PLANS_IDENTIFIER = "nnUNetPlans"


@dataclass(frozen=True)
class Preset:
    """How nnsdm changes nnU-Net's 3d_fullres plan (None keeps nnU-Net's choice)."""

    name: str
    description: str
    patch_size: tuple[int, int, int] | None = None
    batch_size: int | None = None
    base_features: int | None = None
    max_features: int | None = None
    max_stages: int | None = None
    n_conv_per_stage: int | None = None
    min_spacing: tuple[float, float, float] | None = None  # floor on nnU-Net's target spacing, image (z, y, x) order


PRESETS: dict[str, Preset] = {
    "default": Preset("default", "nnU-Net v2's own plan"),
    "flare21": Preset("flare21", "FLARE21 paper: patch 80x192x160, batch 2", patch_size=(80, 192, 160), batch_size=2),
    "cpu-small": Preset(
        "cpu-small",
        "small network and patch for CPU demos and tests, at least 3x1.6x1.6 mm",
        patch_size=(24, 64, 64),
        batch_size=2,
        base_features=8,
        max_features=64,
        max_stages=4,
        n_conv_per_stage=2,
        min_spacing=(3.0, 1.6, 1.6),
    ),
}


@dataclass
class PlanSummary:
    """What planning chose, for printing and for the caller."""

    dataset_name: str
    plans_file: Path
    preset: str
    spacing: list[float]
    patch_size: list[int]
    batch_size: int
    network_class: str
    features_per_stage: list[int]
    strides: list[list[int]]
    parameters: int
    num_training_cases: int
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        fmt = lambda xs: "x".join(str(round(x, 3)) for x in xs)  # noqa: E731
        lines = [
            f"dataset         {self.dataset_name} ({self.num_training_cases} training cases)",
            f"preset          {self.preset}",
            f"spacing (mm)    {fmt(self.spacing)}",
            f"patch           {fmt(self.patch_size)}",
            f"batch           {self.batch_size}",
            f"network         {self.network_class.rsplit('.', 1)[-1]}, {len(self.features_per_stage)} stages",
            f"features        {', '.join(map(str, self.features_per_stage))}",
            f"strides         {' '.join(fmt(s) for s in self.strides)}",
            f"parameters      {self.parameters:,} (segmentation network, without the SDM head)",
            f"plans           {self.plans_file}",
        ]
        return "\n".join(lines)


def _planner_class():
    """The nnU-Net planner subclass (imported lazily: nnU-Net pulls in torch)."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    class PresetPlanner(ExperimentPlanner):
        preset: Preset = PRESETS["default"]

        def determine_fullres_target_spacing(self):
            import numpy as np

            target = super().determine_fullres_target_spacing()
            if self.preset.min_spacing is not None and self.overwrite_target_spacing is None:
                target = np.maximum(target, np.asarray(self.preset.min_spacing, dtype=float))
            return target

        def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset, _cache):
            plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier, approximate_n_voxels_dataset, _cache)
            if len(spacing) == 3 and data_identifier.endswith(CONFIGURATION):
                apply_preset(plan, self.preset, get_pool_and_conv_props, self.UNet_featuremap_min_edge_length)
            return plan

    return PresetPlanner


def apply_preset(plan: dict, preset: Preset, get_pool_and_conv_props, min_edge_length: int = 4) -> dict:
    """Rewrite one 3D configuration of an nnU-Net plan (in place) as ``preset`` asks.

    The topology (stages, strides, kernels) is re-derived for the new patch with nnU-Net's own
    ``get_pool_and_conv_props``; features double per stage from ``base_features`` up to ``max_features``
    as in nnU-Net.
    """
    arch = plan["architecture"]["arch_kwargs"]
    if preset.patch_size is None and preset.base_features is None and preset.max_stages is None:
        if preset.batch_size is not None:
            plan["batch_size"] = preset.batch_size
        return plan
    spacing = plan["spacing"]
    patch = list(preset.patch_size) if preset.patch_size is not None else list(plan["patch_size"])
    if preset.name == "cpu-small":
        # never larger than the data: a patch beyond the median image only adds padding
        median = plan["median_image_size_in_voxels"]
        patch = [int(min(p, max(16, 16 * round(m / 16)))) for p, m in zip(patch, median)]
    max_pool = (preset.max_stages - 1) if preset.max_stages else 999999
    _, strides, kernels, patch, _ = get_pool_and_conv_props(spacing, patch, min_edge_length, max_pool)
    if preset.max_stages and len(strides) > preset.max_stages:
        strides, kernels = strides[: preset.max_stages], kernels[: preset.max_stages]
    n_stages = len(strides)
    base = preset.base_features or arch["features_per_stage"][0]
    top = preset.max_features or max(arch["features_per_stage"])
    n_conv = preset.n_conv_per_stage
    arch.update(
        n_stages=n_stages,
        features_per_stage=[min(top, base * 2**i) for i in range(n_stages)],
        kernel_sizes=[list(k) for k in kernels],
        strides=[list(s) for s in strides],
        n_conv_per_stage=[n_conv] * n_stages if n_conv else list(arch["n_conv_per_stage"])[:n_stages],
        n_conv_per_stage_decoder=[n_conv] * (n_stages - 1) if n_conv else list(arch["n_conv_per_stage_decoder"])[: n_stages - 1],
    )
    plan["patch_size"] = [int(p) for p in patch]
    if preset.batch_size is not None:
        plan["batch_size"] = preset.batch_size
    return plan


def _safe_name(text: str) -> str:
    """Letters and digits of a dataset title, words joined in CamelCase: "phantom train" -> "PhantomTrain",
    "FLARE21" stays "FLARE21"."""
    name = "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", text)) or "Dataset"
    return name[:40]


def register_dataset(dataset: Path, workspace: Workspace, *, dataset_id: int | None = None) -> str:
    """Link a raw dataset folder into the workspace as ``nnUNet_raw/DatasetXXX_Name``; return that name.

    The user's folder is linked, never copied or modified. Registering the same folder again reuses its id.
    """
    dataset = Path(dataset).resolve()
    workspace.activate()
    for existing in sorted(workspace.raw.glob("Dataset*_*")):
        if existing.is_symlink() and existing.resolve() == dataset:
            if dataset_id is None or existing.name.startswith(f"Dataset{dataset_id:03d}_"):
                return existing.name
    try:
        title = json.loads((dataset / "dataset.json").read_text(encoding="utf-8")).get("name") or dataset.name
    except (OSError, ValueError):
        title = dataset.name
    ident = dataset_id if dataset_id is not None else next_dataset_id(workspace)
    if not 1 <= ident <= 999:
        raise NnsdmError(f"--dataset-id {ident}: must be between 1 and 999")
    clash = [p for p in workspace.raw.glob(f"Dataset{ident:03d}_*")]
    if clash:
        raise NnsdmError(f"{clash[0]}: dataset id {ident} is already used in this workspace")
    name = f"Dataset{ident:03d}_{_safe_name(str(title))}"
    (workspace.raw / name).symlink_to(dataset, target_is_directory=True)
    return name


def plan(
    dataset: Path,
    *,
    workspace: Workspace,
    preset: str = "default",
    dataset_id: int | None = None,
    num_processes: int | None = None,
    check: bool = True,
    verbose: bool = False,
) -> PlanSummary:
    """Check, fingerprint, plan and preprocess a raw dataset for 3d_fullres in ``workspace``."""
    if preset not in PRESETS:
        raise NnsdmError(f"--preset {preset}: unknown preset (choose from {', '.join(PRESETS)})")
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise NnsdmError(f"{dataset}: dataset folder not found")
    if check:
        from nnsdm.datasets import check_dataset

        problems = check_dataset(dataset)
        if problems:
            shown = "; ".join(str(p) for p in problems[:3])
            more = f" (and {len(problems) - 3} more: run `nnsdm check {dataset}`)" if len(problems) > 3 else ""
            raise NnsdmError(f"{dataset}: dataset has {len(problems)} problem(s): {shown}{more}")
    from nnsdm.device import usable_cores

    num_processes = num_processes or max(1, min(usable_cores(), 8))
    workspace.activate()
    os.environ.setdefault("nnUNet_def_n_proc", str(num_processes))
    name = register_dataset(dataset, workspace, dataset_id=dataset_id)
    ident = int(name[7:10])

    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset

    with _quiet(not verbose):
        extract_fingerprint_dataset(ident, num_processes=num_processes, check_dataset_integrity=False, clean=True, verbose=verbose)
        planner_cls = _planner_class()
        planner_cls.preset = PRESETS[preset]
        plans_file = workspace.preprocessed / name / f"{PLANS_IDENTIFIER}.json"
        if plans_file.exists():
            plans_file.unlink()  # nnU-Net would merge old configurations into the new plan
        planner = planner_cls(ident, plans_name=PLANS_IDENTIFIER)
        planner.plan_experiment()
        preprocess_dataset(ident, PLANS_IDENTIFIER, configurations=(CONFIGURATION,), num_processes=(num_processes,), verbose=verbose)
    return summarize(workspace.preprocessed / name, preset=preset)


def summarize(preprocessed_dataset: Path, *, preset: str = "") -> PlanSummary:
    """Read back a planned dataset's 3d_fullres configuration and count the network's parameters."""
    plans_file = Path(preprocessed_dataset) / f"{PLANS_IDENTIFIER}.json"
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    dataset_json = json.loads((Path(preprocessed_dataset) / "dataset.json").read_text(encoding="utf-8"))
    cfg = plans["configurations"][CONFIGURATION]
    arch = cfg["architecture"]
    net = build_plain_network(plans, dataset_json)
    return PlanSummary(
        dataset_name=plans["dataset_name"],
        plans_file=plans_file,
        preset=preset or plans.get("nnsdm_preset", ""),
        spacing=[float(s) for s in cfg["spacing"]],
        patch_size=[int(p) for p in cfg["patch_size"]],
        batch_size=int(cfg["batch_size"]),
        network_class=arch["network_class_name"],
        features_per_stage=list(arch["arch_kwargs"]["features_per_stage"]),
        strides=[list(s) for s in arch["arch_kwargs"]["strides"]],
        parameters=sum(p.numel() for p in net.parameters()),
        num_training_cases=int(dataset_json.get("numTraining", 0)),
    )


def build_plain_network(plans: dict, dataset_json: dict, *, deep_supervision: bool = False):
    """The planned 3d_fullres segmentation network, exactly as nnU-Net builds it (no SDM head)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    config = manager.get_configuration(CONFIGURATION)
    label_manager = manager.get_label_manager(dataset_json)
    arch = config.network_arch_init_kwargs
    return get_network_from_plans(
        config.network_arch_class_name,
        arch,
        config.network_arch_init_kwargs_req_import,
        determine_num_input_channels(manager, config, dataset_json),
        label_manager.num_segmentation_heads,
        allow_init=True,
        deep_supervision=deep_supervision,
    )


class _quiet:
    """Silence nnU-Net's chatty prints (its progress bars go to stderr and stay visible)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self):
        if self.enabled:
            import contextlib
            import io

            self._redirect = contextlib.redirect_stdout(io.StringIO())
            self._redirect.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._redirect.__exit__(*exc)
        return False


__all__ = ["PRESETS", "Preset", "PlanSummary", "plan", "register_dataset", "summarize", "apply_preset", "build_plain_network"]

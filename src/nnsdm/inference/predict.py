"""``nnsdm predict``: segment CT images with a trained nnsdm model folder through nnU-Net's predictor.

nnU-Net does the work: its preprocessing (``preprocessor.run_case_npy``), its predictor (sliding
window with Gaussian weighting, mirroring test-time augmentation, fold ensemble) and its export
(``convert_predicted_logits_to_segmentation_with_correct_shape``: resampling back, uncropping,
untransposing). nnsdm builds the network itself (:func:`nnsdm.network.build_network`, never nnU-Net's
trainer lookup by class name: see :mod:`nnsdm.trainer` for why) and hands it to
``nnUNetPredictor.manual_initialization``.

Signed distance maps (``save_sdm``) travel through the same sliding window in the same pass: the
network is wrapped so that it returns the segmentation logits and the SDM channels as one tensor, and
the predictor is told (through its label manager's ``num_segmentation_heads``) to allocate that many
channels. Gaussian weighting, mirroring and the fold ensemble then average the SDM exactly like the
logits; the SDM channels are split off and taken back to the input grid with nnU-Net's own resampling
and uncropping, +1 (far outside every organ) outside the crop.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnsdm.checkpoints import FINAL_CHECKPOINT, read_checkpoint
from nnsdm.device import resolve_cpu_precision, resolve_device, use_cpu_fast_path
from nnsdm.errors import NnsdmError
from nnsdm.fileio import atomic_path, write_image
from nnsdm.inference.cv_postprocessing import load_postprocessing
from nnsdm.inference.efficiency import EFFICIENCY_FILE, CaseMonitor, update_efficiency_csv
from nnsdm.inference.io import (
    Case,
    channels_image,
    check_case,
    find_cases,
    label_image,
    nnunet_properties,
    read_case,
    reorient,
)
from nnsdm.labels import keep_counts
from nnsdm.model_folder import ModelFolder
from nnsdm.orientation import majority_orientation

POSTPROCESS_CHOICES = ("none", "largest", "cv")
SDM_SUFFIX = "_sdm"


# --- the model folder ----------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A trained model folder, read and checked, ready to hand to nnU-Net's predictor."""

    folder: Path
    plans_manager: object
    configuration_manager: object
    label_manager: object
    dataset_json: dict
    metadata: dict
    folds: list
    parameters: list[dict]
    trainer_name: str
    mirror_axes: tuple[int, ...] | None
    num_input_channels: int
    num_sdm_channels: int
    orientation: str | None
    checkpoints: list[Path] = field(default_factory=list)

    def network(self, *, with_sdm: bool = False) -> nn.Module:
        """The planned network without deep supervision; ``with_sdm`` returns logits and SDM as one tensor."""
        from nnsdm.network import build_network

        net = build_network(self.plans_manager, self.configuration_manager, self.num_input_channels,
                            self.label_manager.num_segmentation_heads, num_sdm_channels=self.num_sdm_channels,
                            deep_supervision=False)
        return SegAndSDM(net) if with_sdm else net


def _parse_folds(folds: Sequence[int | str] | None, folder: ModelFolder) -> list:
    if folds is None or len(folds) == 0:
        found = folder.ensemble_folds()
        if not found:
            raise NnsdmError(f"{folder.path}: no trained fold (no fold_K/{FINAL_CHECKPOINT}; training not finished?)")
        return found
    parsed = []
    for fold in folds:
        text = str(fold).strip()
        if text == "all" or text.isdigit():
            value = "all" if text == "all" else int(text)
            if value not in parsed:
                parsed.append(value)
        else:
            raise NnsdmError(f"--folds {fold}: not a fold (use numbers like 0 1 2 or 'all')")
    return parsed


def training_orientation(folder: Path, metadata: dict | None = None) -> str | None:
    """The orientation code of the model's training images, or ``None`` when unknown.

    From ``nnsdm.json`` (``"orientation"``) when recorded there, else the most common orientation of
    the model's training ground truth (:meth:`ModelFolder.ground_truth`). ``None`` means: no
    reorientation (nnU-Net's own behaviour).
    """
    if metadata and metadata.get("orientation"):
        return str(metadata["orientation"])
    try:
        gt = ModelFolder(folder).ground_truth()
    except NnsdmError:
        return None
    return majority_orientation(sorted(p for p in gt.iterdir() if p.is_file()))


def load_model(model: Path, *, folds: Sequence[int | str] | None = None) -> LoadedModel:
    """Read and check a model folder (plans, dataset.json, checkpoints); raise ``NnsdmError`` naming what is wrong."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnsdm.network import SDM_HEAD_PREFIX

    model_folder = ModelFolder(model).require()
    folder = model_folder.path
    plans, dataset_json, metadata = model_folder.plans(), model_folder.dataset_json(), model_folder.metadata()
    configuration = metadata.get("configuration", "3d_fullres")
    try:
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        label_manager = plans_manager.get_label_manager(dataset_json)
        num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    except Exception as exc:
        raise NnsdmError(f"{folder / 'plans.json'}: not usable for {configuration} ({type(exc).__name__}: {exc})") from None
    if num_inputs != 1:
        raise NnsdmError(f"{folder}: model expects {num_inputs} input channels; nnsdm predict reads one CT image per case")

    chosen = _parse_folds(folds, model_folder)
    checkpoints = [model_folder.fold_folder(f) / FINAL_CHECKPOINT for f in chosen]
    loaded = [read_checkpoint(p) for p in checkpoints]
    parameters = [c["network_weights"] for c in loaded]
    sdm_weights = [w for k, w in parameters[0].items() if k.startswith(SDM_HEAD_PREFIX) and k.endswith(".weight")]
    num_sdm = int(sdm_weights[0].shape[0]) if sdm_weights else 0
    result = LoadedModel(
        folder=folder, plans_manager=plans_manager, configuration_manager=configuration_manager,
        label_manager=label_manager, dataset_json=dataset_json, metadata=metadata, folds=chosen,
        parameters=parameters, trainer_name=str(loaded[0].get("trainer_name", "nnsdmTrainer")),
        mirror_axes=loaded[0].get("inference_allowed_mirroring_axes"), num_input_channels=num_inputs,
        num_sdm_channels=num_sdm, orientation=training_orientation(folder, metadata), checkpoints=checkpoints,
    )
    network = result.network()
    for path, params in zip(checkpoints, parameters):
        try:
            network.load_state_dict(params, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise NnsdmError(f"{path}: weights do not match the model's plans ({first[:200]})") from None
    return result


# --- one sliding window for logits and SDM -------------------------------------------------------------

class SegAndSDM(nn.Module):
    """The SDM network seen by nnU-Net's predictor: segmentation logits and SDM channels as one tensor.

    State dicts load into the wrapped network, so the predictor's per-fold ``load_state_dict`` works
    unchanged.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        network.return_sdm = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg, sdm = self.network(x)
        return torch.cat((seg, sdm.to(seg.dtype)), 1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)


class _WithExtraChannels:
    """A label manager whose ``num_segmentation_heads`` counts the SDM channels too (the predictor's
    output allocation reads only that); everything else is the real label manager's."""

    def __init__(self, label_manager, extra: int) -> None:
        self._label_manager = label_manager
        self._extra = extra

    @property
    def num_segmentation_heads(self) -> int:
        return self._label_manager.num_segmentation_heads + self._extra

    def __getattr__(self, name):
        return getattr(self._label_manager, name)


def make_predictor(model: LoadedModel, *, device: torch.device, tta: bool, step_size: float, with_sdm: bool,
                   cpu_precision: str = "fp32"):
    """nnU-Net's predictor for ``model`` (Gaussian sliding window, optional mirroring, all chosen folds).

    On a CPU the network gets :func:`nnsdm.device.use_cpu_fast_path` (``cpu_precision`` ``bf16`` or
    ``fp32``); on CUDA nnU-Net's own fp16 autocast applies.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a note about CPU devices
        predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=tta,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    network = model.network(with_sdm=with_sdm)
    if device.type == "cpu":
        use_cpu_fast_path(network, bf16=cpu_precision == "bf16")
    predictor.manual_initialization(network, model.plans_manager, model.configuration_manager,
                                    model.parameters, model.dataset_json, model.trainer_name, model.mirror_axes)
    if with_sdm:
        predictor.label_manager = _WithExtraChannels(model.label_manager, model.num_sdm_channels)
    return predictor


def sdm_to_input_grid(sdm: torch.Tensor | np.ndarray, properties: dict, plans_manager, configuration_manager) -> np.ndarray:
    """SDM channels on the preprocessed grid -> the (reoriented) input grid, as nnU-Net reverts probabilities.

    Resampled with the model's probability resampling, put back into the uncropped volume (+1 outside
    the crop: far outside every organ), untransposed, and clipped to [-1, 1] (half-precision rounding).
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    sdm = torch.as_tensor(sdm).float()
    spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    resampled = configuration_manager.resampling_fn_probabilities(
        sdm, properties["shape_after_cropping_and_before_resampling"], configuration_manager.spacing, spacing)
    resampled = np.asarray(resampled.cpu() if isinstance(resampled, torch.Tensor) else resampled, dtype=np.float32)
    full = np.ones((resampled.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
    full = insert_crop_into_image(full, resampled, properties["bbox_used_for_cropping"])
    full = full.transpose([0] + [i + 1 for i in plans_manager.transpose_backward])
    return np.clip(full, -1.0, 1.0)


# --- prediction ----------------------------------------------------------------------------------------

@dataclass
class CaseOutputs:
    """Where one case's results go."""

    labels: Path
    sdm: Path | None = None
    probabilities: Path | None = None
    properties: Path | None = None

    def all(self) -> list[Path]:
        return [p for p in (self.sdm, self.probabilities, self.properties, self.labels) if p is not None]


def case_outputs(case: Case, output: Path, *, save_sdm: bool, save_probabilities: bool) -> CaseOutputs:
    return CaseOutputs(
        labels=output / f"{case.name}.nii.gz",
        sdm=output / f"{case.name}{SDM_SUFFIX}.nii.gz" if save_sdm else None,
        probabilities=output / f"{case.name}.npz" if save_probabilities else None,
        properties=output / f"{case.name}.pkl" if save_probabilities else None,
    )


def predict_case(case: Case, model: LoadedModel, predictor, outputs: CaseOutputs, *,
                 keep: dict[int, int] | None) -> None:
    """Read, preprocess, predict, revert to the input grid, post-process and write one case.

    Extra outputs are written first and the label map last, each atomically: a case whose label map
    exists is complete.
    """
    import SimpleITK as sitk
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from nnsdm.postprocessing import keep_largest_components

    image = read_case(case)
    work, orientation = reorient(image, model.orientation)
    array = sitk.GetArrayFromImage(work).astype(np.float32, copy=False)[None]
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(array, None, nnunet_properties(work), model.plans_manager,
                                                    model.configuration_manager, model.dataset_json)
    del array
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    del data
    heads = model.label_manager.num_segmentation_heads
    sdm = None
    if outputs.sdm is not None:
        sdm = sdm_to_input_grid(logits[heads:], properties, model.plans_manager, model.configuration_manager)
    result = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits[:heads], model.plans_manager, model.configuration_manager, model.label_manager, properties,
        return_probabilities=outputs.probabilities is not None, num_threads_torch=default_num_processes)
    del logits
    segmentation, probabilities = result if outputs.probabilities is not None else (result, None)
    segmentation = orientation.undo(np.asarray(segmentation))
    if keep:
        segmentation = keep_largest_components(segmentation, labels=keep.keys(), keep=keep)

    if sdm is not None:
        write_image(channels_image(orientation.undo(sdm), image), outputs.sdm)
    if probabilities is not None:
        probabilities = orientation.undo(np.asarray(probabilities))
        with atomic_path(outputs.probabilities) as tmp:
            np.savez_compressed(tmp, probabilities=probabilities)
        with atomic_path(outputs.properties) as tmp:  # what nnU-Net's ensembling needs to write the result
            tmp.write_bytes(pickle.dumps(nnunet_properties(image)))
    write_image(label_image(segmentation, image), outputs.labels)


def _postprocess_rule(postprocess: str, model: LoadedModel) -> dict[int, int] | None:
    if postprocess not in POSTPROCESS_CHOICES:
        raise NnsdmError(f"--postprocess {postprocess}: choose none, largest or cv")
    if postprocess == "none":
        return None
    if model.label_manager.has_regions:
        raise NnsdmError(f"{model.folder}: --postprocess {postprocess} needs a label-based (not region-based) model")
    if postprocess == "largest":
        return keep_counts(model.dataset_json["labels"])
    return load_postprocessing(model.folder)


def predict(
    *,
    input: Path,
    output: Path,
    model: Path,
    folds: Sequence[int | str] | None = None,
    tta: bool = True,
    step_size: float = 0.5,
    device: str = "auto",
    postprocess: str = "none",
    save_sdm: bool = False,
    save_probabilities: bool = False,
    overwrite: bool = False,
    cpu_precision: str = "auto",
    progress: bool = True,
) -> list[Path]:
    """Segment every case of ``input`` into ``output/CASE.nii.gz``; return the label map paths of all cases.

    ``input``: a NIfTI file, a folder of NIfTI files, a DICOM series folder or a folder of DICOM series
    folders. Label maps have exactly the input's size, spacing, origin and direction. Cases whose
    outputs all exist are skipped unless ``overwrite``. Per-case time and memory go to
    ``output/efficiency.csv``. ``postprocess``: ``none`` (nnU-Net's output), ``largest`` (largest
    component per label, two for the kidneys) or ``cv`` (per label as cross-validation decided, see
    :func:`nnsdm.inference.cv_postprocessing.determine_postprocessing`). ``save_sdm`` also writes
    ``CASE_sdm.nii.gz`` (4D float32, one signed distance map per foreground class, negative inside);
    ``save_probabilities`` writes nnU-Net's ``CASE.npz`` (softmax probabilities, (classes, z, y, x))
    and ``CASE.pkl``. ``cpu_precision`` (CPU only): ``bf16`` runs the network under bfloat16 autocast
    (as nnU-Net runs under fp16 autocast on a GPU; about 10x faster here), ``fp32`` in full precision,
    ``auto`` picks bf16 where the CPU computes it natively.
    """
    from tqdm import tqdm

    if not 0 < float(step_size) <= 1:
        raise NnsdmError(f"--step-size {step_size}: must be in (0, 1]")
    if postprocess not in POSTPROCESS_CHOICES:
        raise NnsdmError(f"--postprocess {postprocess}: choose none, largest or cv")
    cpu_precision = resolve_cpu_precision(cpu_precision)
    torch_device = resolve_device(device)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise NnsdmError(f"{output}: output exists and is not a folder")
    cases = find_cases(Path(input))
    for case in cases:
        check_case(case)
    loaded = load_model(Path(model), folds=folds)
    if save_sdm and loaded.num_sdm_channels == 0:
        raise NnsdmError(f"{loaded.folder}: model has no SDM head (trained with sdm_weight 0); --save-sdm needs an SDM model")
    keep = _postprocess_rule(postprocess, loaded)

    plan = [(case, case_outputs(case, output, save_sdm=save_sdm, save_probabilities=save_probabilities)) for case in cases]
    inputs = {p.resolve() for c in cases for p in ([c.path] if c.kind == "nifti" else [Path(f) for f in c.files])}
    for case, outs in plan:
        clash = [p for p in outs.all() if p.resolve() in inputs]
        if clash:
            raise NnsdmError(f"{clash[0]}: output would overwrite an input file; choose another output folder")
    todo = [(c, o) for c, o in plan if overwrite or not all(p.is_file() for p in o.all())]
    if not todo:
        if progress:
            tqdm.write(f"all {len(cases)} case(s) already predicted in {output} (use overwrite to predict again)")
        return [o.labels for _, o in plan]
    output.mkdir(parents=True, exist_ok=True)
    predictor = make_predictor(loaded, device=torch_device, tta=tta, step_size=float(step_size), with_sdm=save_sdm,
                               cpu_precision=cpu_precision)
    if progress and len(todo) < len(plan):
        tqdm.write(f"skipping {len(plan) - len(todo)} case(s) already predicted in {output}")
    bar = tqdm(todo, desc="predict", unit="case", disable=not progress, dynamic_ncols=True)
    for case, outs in bar:
        bar.set_postfix(case=case.name)
        with CaseMonitor(case.name, torch_device) as monitor:
            predict_case(case, loaded, predictor, outs, keep=keep)
        update_efficiency_csv(output / EFFICIENCY_FILE, [monitor.result])
    return [o.labels for _, o in plan]

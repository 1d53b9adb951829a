"""``nnsdm predict``: segment CT images with a trained nnsdm model folder through nnU-Net's predictor.

nnU-Net does the work: its preprocessing (``preprocessor.run_case_npy``), its predictor (sliding
window with Gaussian weighting, mirroring test-time augmentation, fold ensemble) and its export
(``convert_predicted_logits_to_segmentation_with_correct_shape``: resampling back, uncropping,
untransposing). What is resampled back to the input grid is nnU-Net v2's logits by default, or, with
``resample="probabilities"``, the softmax probabilities as nnU-Net v1 did (:func:`revert_to_input_grid`).
nnsdm builds the network itself (:func:`nnsdm.network.build_network`, never nnU-Net's
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
from nnsdm.fileio import atomic_path, remove_stale_temporaries, write_image
from nnsdm.inference.cv_postprocessing import load_postprocessing
from nnsdm.locking import hold, lock_name
from nnsdm.inference.efficiency import EFFICIENCY_FILE, CaseMonitor, update_efficiency_csv
from nnsdm.inference.dicom_seg import SEG_SUFFIX
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
from nnsdm.inference.preview import CONTACT_SHEET, PREVIEW_SUFFIX
from nnsdm.inference.qc import QC_FILE, case_qc, read_qc_csv, update_qc_csv
from nnsdm.inference.results import (
    check_output_format,
    organ_names,
    record_statistics,
    statistics_done,
    write_case_extras,
    write_contact_sheet,
)
from nnsdm.inference.statistics import STATISTICS_FILE
from nnsdm.labels import keep_counts
from nnsdm.model_folder import ModelFolder
from nnsdm.orientation import majority_orientation

POSTPROCESS_CHOICES = ("none", "largest", "cv")
RESAMPLE_CHOICES = ("logits", "probabilities")
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
    """Where one case's results go (``None``: not asked for); ``statistics``: a row per organ is asked for."""

    labels: Path | None
    sdm: Path | None = None
    probabilities: Path | None = None
    properties: Path | None = None
    seg: Path | None = None
    preview: Path | None = None
    statistics: bool = False

    @property
    def main(self) -> Path:
        """The file written last, whose presence marks the case complete: the label map, else the SEG."""
        return self.labels if self.labels is not None else self.seg

    def all(self) -> list[Path]:
        """Every file of the case, the main one last."""
        extras = (self.sdm, self.probabilities, self.properties, self.preview, self.seg, self.labels)
        return [p for p in extras if p is not None and p != self.main] + [self.main]


def case_outputs(case: Case, output: Path, *, save_sdm: bool = False, save_probabilities: bool = False,
                 output_format: str = "nifti", statistics: bool = False, preview: bool = False) -> CaseOutputs:
    return CaseOutputs(
        labels=output / f"{case.name}.nii.gz" if output_format != "dicom-seg" else None,
        sdm=output / f"{case.name}{SDM_SUFFIX}.nii.gz" if save_sdm else None,
        probabilities=output / f"{case.name}.npz" if save_probabilities else None,
        properties=output / f"{case.name}.pkl" if save_probabilities else None,
        seg=output / f"{case.name}{SEG_SUFFIX}" if output_format != "nifti" else None,
        preview=output / f"{case.name}{PREVIEW_SUFFIX}" if preview else None,
        statistics=statistics,
    )


def check_resample(resample: str) -> None:
    """A clear error for a ``resample`` choice that does not exist."""
    if resample not in RESAMPLE_CHOICES:
        raise NnsdmError(f"--resample {resample}: choose {' or '.join(RESAMPLE_CHOICES)}")


class _ProbabilitiesIn:
    """A label manager for input that already holds probabilities: no second softmax on it."""

    def __init__(self, label_manager) -> None:
        self._label_manager = label_manager

    def apply_inference_nonlin(self, probabilities):
        return (torch.from_numpy(probabilities) if isinstance(probabilities, np.ndarray) else probabilities).float()

    def convert_logits_to_segmentation(self, probabilities):
        return self._label_manager.convert_probabilities_to_segmentation(probabilities)

    def __getattr__(self, name):
        return getattr(self._label_manager, name)


def revert_to_input_grid(logits: torch.Tensor, model: LoadedModel, properties: dict, *, resample: str = "logits",
                         return_probabilities: bool = False):
    """The segmentation (and probabilities) of preprocessed-grid ``logits`` on the case's own grid.

    nnU-Net's export does the work (resampling with the plan's ``resampling_fn_probabilities``,
    uncropping, untransposing). ``resample``: ``logits`` resamples the logits, then takes the argmax
    (nnU-Net v2); ``probabilities`` applies the softmax first and resamples the probabilities (nnU-Net
    v1). Where an organ's logits lead by less inside it than the background's lead outside it (measured
    on SDM models trained briefly, README "Demo"), interpolated logits put the boundary inside the organ
    and small organs come out shrunk; probabilities saturate on both sides and move it much less.
    """
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    check_resample(resample)
    label_manager = model.label_manager
    if resample == "probabilities":
        logits = label_manager.apply_inference_nonlin(logits)
        label_manager = _ProbabilitiesIn(label_manager)
    return convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, model.plans_manager, model.configuration_manager, label_manager, properties,
        return_probabilities=return_probabilities, num_threads_torch=default_num_processes)


def predict_case(case: Case, model: LoadedModel, predictor, outputs: CaseOutputs, *,
                 keep: dict[int, int] | None, qc: bool = False, resample: str = "logits") -> tuple:
    """Read, preprocess, predict, revert to the input grid, post-process and write one case.

    Extra outputs are written first and the main one (:attr:`CaseOutputs.main`) last, each atomically:
    a case whose main output exists is complete. Returns the case's organ statistics table when asked
    for (``outputs.statistics``, else ``None``) and its ``qc.csv`` rows with ``qc`` (else an empty list).
    """
    import SimpleITK as sitk

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
    if outputs.sdm is not None or qc:
        sdm = sdm_to_input_grid(logits[heads:], properties, model.plans_manager, model.configuration_manager)
    result = revert_to_input_grid(logits[:heads], model, properties, resample=resample,
                                  return_probabilities=outputs.probabilities is not None or qc)
    del logits
    segmentation, probabilities = result if outputs.probabilities is not None or qc else (result, None)
    segmentation = orientation.undo(np.asarray(segmentation))
    if keep:
        segmentation = keep_largest_components(segmentation, labels=keep.keys(), keep=keep)
    rows = []
    if qc:
        probabilities = orientation.undo(np.asarray(probabilities))
        organs = {int(v): k for k, v in model.dataset_json["labels"].items() if int(v) != 0}
        rows = case_qc(case.name, segmentation, orientation.undo(sdm), probabilities,
                       tuple(reversed(image.GetSpacing())), organs)

    if outputs.sdm is not None:
        write_image(channels_image(orientation.undo(sdm), image), outputs.sdm)
    if outputs.probabilities is not None:
        probabilities = probabilities if qc else orientation.undo(np.asarray(probabilities))
        with atomic_path(outputs.probabilities) as tmp:
            np.savez_compressed(tmp, probabilities=probabilities)
        with atomic_path(outputs.properties) as tmp:  # what nnU-Net's ensembling needs to write the result
            tmp.write_bytes(pickle.dumps(nnunet_properties(image)))
    table = write_case_extras(case, segmentation, image, seg=outputs.seg, preview=outputs.preview,
                              names=organ_names(model.dataset_json), folds=model.folds, statistics=outputs.statistics)
    if outputs.labels is not None:
        write_image(label_image(segmentation, image), outputs.labels)
    return table, rows


def _add_unscored(plan: list, todo: list, output: Path) -> list:
    """``todo`` plus the planned cases without rows in ``output/qc.csv`` (predicted before without ``qc``)."""
    scored = {row["case"] for row in read_qc_csv(output / QC_FILE)}
    waiting = {id(o) for _, o in todo}
    return [(c, o) for c, o in plan if id(o) in waiting or c.name not in scored]


def _check_sdm_options(model: LoadedModel, *, save_sdm: bool, qc: bool) -> None:
    for wanted, option in ((save_sdm, "--save-sdm"), (qc, "--qc")):
        if wanted and model.num_sdm_channels == 0:
            raise NnsdmError(f"{model.folder}: model has no SDM head (trained with sdm_weight 0); {option} needs an SDM model")
    if qc and model.label_manager.has_regions:
        raise NnsdmError(f"{model.folder}: --qc needs a label-based (not region-based) model")


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


def _plan(cases: list[Case], output: Path, overwrite: bool, **asked) -> tuple[list, list]:
    """Every case with its outputs, and those still to predict (an output missing, or ``overwrite``).

    Refuses outputs that would overwrite an input file.
    """
    plan = [(case, case_outputs(case, output, **asked)) for case in cases]
    inputs = {p.resolve() for c in cases for p in ([c.path] if c.kind == "nifti" else [Path(f) for f in c.files])}
    for case, outs in plan:
        clash = [p for p in outs.all() if p.resolve() in inputs]
        if clash:
            raise NnsdmError(f"{clash[0]}: output would overwrite an input file; choose another output folder")
    with_rows = statistics_done(output / STATISTICS_FILE, [c.name for c in cases]) if asked.get("statistics") else None
    todo = [(c, o) for c, o in plan if overwrite or not all(p.is_file() for p in o.all())
            or (with_rows is not None and c.name not in with_rows)]
    return plan, todo


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
    output_format: str = "nifti",
    statistics: bool = False,
    preview: bool = False,
    qc: bool = False,
    overwrite: bool = False,
    cpu_precision: str = "auto",
    resample: str = "logits",
    progress: bool = True,
) -> list[Path]:
    """Segment every case of ``input`` into ``output/CASE.nii.gz``; return each case's main output path.

    ``input``: a NIfTI file, a folder of NIfTI files, a DICOM series folder or a folder of DICOM series
    folders. Label maps have exactly the input's size, spacing, origin and direction. Cases whose
    outputs all exist are skipped unless ``overwrite``. Per-case time and memory go to
    ``output/efficiency.csv``. ``postprocess``: ``none`` (nnU-Net's output), ``largest`` (largest
    component per label, two for the kidneys) or ``cv`` (per label as cross-validation decided, see
    :func:`nnsdm.inference.cv_postprocessing.determine_postprocessing`). ``save_sdm`` also writes
    ``CASE_sdm.nii.gz`` (4D float32, one signed distance map per foreground class, negative inside);
    ``save_probabilities`` writes nnU-Net's ``CASE.npz`` (softmax probabilities, (classes, z, y, x))
    and ``CASE.pkl``. ``output_format``: ``nifti`` (the label map), ``dicom-seg`` (``CASE_seg.dcm``, a
    DICOM Segmentation of a DICOM series input, instead) or ``both``; ``statistics`` writes
    ``statistics.csv`` and ``summary.json``, ``preview`` ``CASE_preview.png`` and the contact sheet
    ``previews.png`` (see :mod:`nnsdm.inference.results`). ``cpu_precision`` (CPU only): ``bf16`` runs
    the network under bfloat16 autocast (as nnU-Net runs under fp16 autocast on a GPU; about 10x faster
    here), ``fp32`` in full precision, ``auto`` picks bf16 where the CPU computes it natively. ``qc`` (SDM
    models) scores every organ of every case in ``output/qc.csv`` (:mod:`nnsdm.inference.qc`: agreement of
    the SDM head with the segmentation, and a softmax-entropy baseline); a case without rows there is
    predicted again. ``resample``: what is taken back to the input grid, ``logits`` (nnU-Net v2, default)
    or ``probabilities`` (nnU-Net v1; keeps small organs of briefly trained SDM models from shrinking,
    see :func:`revert_to_input_grid`).
    """
    from tqdm import tqdm

    check_resample(resample)
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
    _check_sdm_options(loaded, save_sdm=save_sdm, qc=qc)
    keep = _postprocess_rule(postprocess, loaded)
    check_output_format(output_format, cases, organ_names(loaded.dataset_json))

    plan, todo = _plan(cases, output, overwrite, save_sdm=save_sdm, save_probabilities=save_probabilities,
                       output_format=output_format, statistics=statistics, preview=preview)
    if qc:
        todo = _add_unscored(plan, todo, output)
    if not todo:
        if progress:
            tqdm.write(f"all {len(cases)} case(s) already predicted in {output} (use overwrite to predict again)")
    else:
        with hold(output, lock_name("predict")):  # one writer per output folder
            remove_stale_temporaries(output, [p for _, o in todo for p in o.all()])  # left by an interrupted run
            _predict_todo(todo, loaded, output, torch_device, keep, tta=tta, step_size=step_size, save_sdm=save_sdm,
                          qc=qc, cpu_precision=cpu_precision, resample=resample, skipped=len(plan) - len(todo),
                          progress=progress)
    if preview and (todo or not (output / CONTACT_SHEET).is_file()):
        write_contact_sheet(output, [o.preview for _, o in plan])
    return [o.main for _, o in plan]


def _predict_todo(todo: list, loaded: LoadedModel, output: Path, torch_device, keep, *, tta: bool, step_size: float,
                  save_sdm: bool, qc: bool, cpu_precision: str, resample: str, skipped: int, progress: bool) -> None:
    from tqdm import tqdm

    predictor = make_predictor(loaded, device=torch_device, tta=tta, step_size=float(step_size), with_sdm=save_sdm or qc,
                               cpu_precision=cpu_precision)
    if progress and skipped:
        tqdm.write(f"skipping {skipped} case(s) already predicted in {output}")
    bar = tqdm(todo, desc="predict", unit="case", disable=not progress, dynamic_ncols=True)
    for case, outs in bar:
        bar.set_postfix(case=case.name)
        with CaseMonitor(case.name, torch_device) as monitor:
            table, rows = predict_case(case, loaded, predictor, outs, keep=keep, qc=qc, resample=resample)
        update_efficiency_csv(output / EFFICIENCY_FILE, [monitor.result])
        record_case_tables(output, case, outs, table, rows, qc=qc)


def record_case_tables(output: Path, case: Case, outs: CaseOutputs, table, rows: list, *, qc: bool) -> None:
    """Add a predicted case's organ statistics (when asked for) and QC rows to the output folder's tables."""
    if table is not None:
        record_statistics(output, case, outs.all(), table)
    if qc:
        update_qc_csv(output / QC_FILE, rows)

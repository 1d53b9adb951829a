"""A study as jobs: one training job per (fold, sdm_weight), prediction shards, and the final step.

The job records are prepared here (see :mod:`nnsdm.scaleout.records`); the launchers
(:mod:`nnsdm.scaleout.local`, :mod:`nnsdm.scaleout.slurm`) run them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

from nnsdm.errors import NnsdmError
from nnsdm.fileio import write_text
from nnsdm.scaleout.records import JOBS_FOLDER, JobRecord
from nnsdm.workspace import Workspace

SPLITS_SEED = 12345  # nnU-Net's seed for its 5-fold split


def _weight_text(weight: float) -> str:
    return f"{weight:g}"


def ensure_splits(workspace: Workspace, dataset: str) -> Path:
    """Write nnU-Net's ``splits_final.json`` now if missing (the same split nnU-Net would create).

    Done once by the submitter, so that parallel jobs never race to create it.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    base = workspace.preprocessed / dataset
    path = base / "splits_final.json"
    if path.is_file():
        return path
    plans = workspace.load_plans(dataset)
    data_folder = base / plans["configurations"]["3d_fullres"]["data_identifier"]
    if not data_folder.is_dir():
        raise NnsdmError(f"{data_folder}: preprocessed data not found (run `nnsdm plan` first)")
    keys = sorted(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))
    if len(keys) < 5:
        raise NnsdmError(f"{base}: {len(keys)} training case(s); five-fold cross-validation needs at least 5")
    write_text(path, json.dumps(generate_crossval_split(keys, seed=SPLITS_SEED, n_splits=5), indent=4))
    return path


def training_records(*, workspace: Workspace, folds: Sequence[int | str], sdm_weights: Sequence[float],
                     dataset: str | None, options: dict, finalize: bool = False) -> list[JobRecord]:
    """One training job per (fold, sdm_weight), plus the final postprocessing + report job if asked.

    ``options``: :class:`nnsdm.training.TrainingOptions` fields other than workspace, fold, dataset,
    sdm_weight, resume, gpus and epoch_callback; every combination is checked before anything is written.
    """
    from nnsdm.training import TrainingOptions, parse_fold

    name = workspace.dataset_name(dataset)
    parsed = list(dict.fromkeys(parse_fold(f) for f in folds))
    weights = list(dict.fromkeys(float(w) for w in sdm_weights))
    for w in weights:
        TrainingOptions(workspace=workspace, fold=parsed[0], dataset=name, sdm_weight=w, **options)  # one-line errors
    if any(f != "all" for f in parsed):
        ensure_splits(workspace, name)
    folder = workspace.root / JOBS_FOLDER
    submission = uuid.uuid4().hex
    records = []
    for w in weights:
        for f in parsed:
            spec = {"workspace": str(workspace.root), "dataset": name, "fold": f, "sdm_weight": w, **options}
            records.append(JobRecord(key=f"{name}_fold{f}_sdm{_weight_text(w)}", kind="train", spec=spec, folder=folder,
                                     submission=submission, label=f"fold {f}, sdm-weight {_weight_text(w)}"))
    if finalize:
        spec = {"workspace": str(workspace.root), "dataset": name, "training": [r.key for r in records]}
        records.append(JobRecord(key=f"{name}_finalize", kind="finalize", spec=spec, folder=folder,
                                 submission=submission, label="postprocessing + report"))
    return records


def run_finalize(record: JobRecord, control) -> None:
    """Once every training job's fold is finished: decide post-processing per model, write the report."""
    from nnsdm.inference import determine_postprocessing
    from nnsdm.report import write_report
    from nnsdm.scaleout.jobs import fold_finished, training_options
    from nnsdm.scaleout.records import load_record

    workspace = Workspace(record.spec["workspace"]).activate()
    models, missing = {}, []
    for key in record.spec["training"]:
        options = training_options(load_record(record.folder / f"{key}.job.json").spec)
        model = options.model_folder
        if not fold_finished(model, options.fold, validate=options.validate):
            missing.append(f"fold {options.fold} sdm-weight {_weight_text(options.sdm_weight)}")
        models[model.path] = model
    if missing:
        raise NnsdmError(f"{workspace.root}: training not finished for {', '.join(missing)}")
    for path in sorted(models):
        if models[path].folds(holding=("validation",)):
            determine_postprocessing(path, progress=False)
    write_report(workspace=workspace, dataset=record.spec["dataset"], progress=False)
    record.report(state="done", done=1, total=1)


def prediction_records(*, input: Path, output: Path, model: Path, shards: int, options: dict) -> list[JobRecord]:
    """One job per shard of the input's cases (checked and listed now, predicted by the jobs).

    ``options``: :func:`nnsdm.inference.predict`'s folds, tta, step_size, device, postprocess,
    save_sdm, save_probabilities, cpu_precision and resample.
    """
    from nnsdm.inference import find_cases, load_model
    from nnsdm.inference.predict import _postprocess_rule, check_resample

    if shards < 1:
        raise NnsdmError(f"--shards {shards}: must be >= 1")
    output = Path(output).resolve()
    if output.exists() and not output.is_dir():
        raise NnsdmError(f"{output}: output exists and is not a folder")
    if not 0 < float(options["step_size"]) <= 1:
        raise NnsdmError(f"--step-size {options['step_size']}: must be in (0, 1]")
    check_resample(options.get("resample", "logits"))
    cases = find_cases(Path(input))
    loaded = load_model(Path(model), folds=options.get("folds"))  # a broken model folder fails here, not in N jobs
    if options.get("save_sdm") and loaded.num_sdm_channels == 0:
        raise NnsdmError(f"{loaded.folder}: model has no SDM head (trained with sdm_weight 0); --save-sdm needs an SDM model")
    _postprocess_rule(options["postprocess"], loaded)
    shards = min(shards, len(cases))
    submission = uuid.uuid4().hex
    folder = output / JOBS_FOLDER
    spec = {"input": str(Path(input).resolve()), "output": str(output), "model": str(Path(model).resolve()),
            "shards": shards, **options}
    return [JobRecord(key=f"shard_{i:03d}", kind="predict", spec={**spec, "shard": i}, folder=folder,
                      submission=submission, label=f"shard {i + 1}/{shards}") for i in range(shards)]


def jobs_folder(path: Path) -> Path:
    """The job records of a workspace or a prediction output folder."""
    path = Path(path)
    return path if path.name == JOBS_FOLDER else path / JOBS_FOLDER


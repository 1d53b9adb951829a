"""``nnsdm demo``: the whole pipeline on the built-in synthetic CT, sized for a 2-core CPU.

Steps: synthetic CT for training and a separate held-out test set (other seeds), dataset check,
planning with the ``cpu-small`` preset, SDM training on every training case (fold ``all``: the held-out
set, not a cross-validation split, measures the model, so no training case is held back), prediction of
the held-out set, FLARE21 evaluation, and the report with the held-out set as its external set. With
``ablation`` the plain nnU-Net baseline (``sdm_weight`` 0) is trained on the same data with the same
seed and budget, predicts the same set, and the two are compared per organ with a paired Wilcoxon test.

Plan: the ``cpu-small`` preset (a 343k-parameter network, patch 24x64x64 on data resampled to at least
3x1.6x1.6 mm). On a CPU with native bfloat16 the trainer runs under bf16 autocast (as nnU-Net runs
under fp16 autocast on a GPU).

Training recipe: nnU-Net's trainer, loss, sampling and augmentation with two changes, both taken from
nnU-Net's own trainer variants (``nnsdm train --optimizer adamw --no-mirroring``): AdamW at 3e-3 with
nnU-Net's poly schedule (stepped every iteration) instead of SGD at 0.01, and no mirroring (so
prediction does not mirror either).
Why a budget of under 2,000 iterations of a tiny network on a CPU needs them is written once, in the
README's Demo section ("the recipe"). The paper's configuration (``nnsdm train``'s defaults) keeps
nnU-Net's SGD and mirroring.

Output folder (default ``./nnsdm_demo``)::

    data/phantom_train/             nnU-Net raw dataset of the training cases
    data/test/imagesTs/             held-out CT images (test_000_0000.nii.gz, ...)
    data/test/labelsTs/             their ground truth (test_000.nii.gz, ...)
    workspace/                      nnU-Net's raw, preprocessed and results folders (the trained models)
    predictions/, evaluation/       held-out predictions of the SDM model and their metrics
    predictions_baseline/, evaluation_baseline/, ablation.csv   with ablation
    report/report.html              the report (also report.md, CSVs, figures)
    summary.json                    held-out DSC and NSD per organ, timings, model folder, configuration

The demo refuses an existing non-empty folder; ``overwrite`` replaces a previous demo's folder (and
only that: a folder without the demo's marker file is never deleted). ``summary.json`` is written last,
so a folder without it holds an interrupted run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nnsdm.errors import NnsdmError
from nnsdm.labels import FLARE21_ORGANS


__all__ = ["run_demo", "DEFAULT_OUT", "DEFAULTS"]

DEFAULT_OUT = Path("nnsdm_demo")
MARKER = ".nnsdm-demo"
# The demo's configuration on a 2-core CPU (see the README's demo section for what it reaches there). The
# budget (epochs x iterations) is the same on every machine rather than fitted to its speed: the held-out
# accuracy depends on it (with 1,100-1,200 iterations spleen and the mean fell below the demo's bar).
DEFAULTS = {
    "train_cases": 80,
    "test_cases": 10,
    "seed": 0,
    "shape": (64, 160, 160),
    "spacing": (2.5, 0.8, 0.8),
    "epochs": 20,
    "iterations": 100,
    "learning_rate": 3e-3,
}
VAL_ITERATIONS = 4  # validation batches per epoch: only feed nnU-Net's pseudo Dice curve (fold 'all')
# What the held-out predictions resample back to the input grid (both models alike): softmax probabilities
# (nnU-Net v1), not logits (v2), which shrank the small organs of some SDM models by 10-17% (README "Demo").
RESAMPLE = "probabilities"


def _fmt_seconds(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}:{sec:02d}"


class _Stages:
    """Prints one line when a stage starts and one with its duration when it ends."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.stdout = sys.stdout  # kept: nnU-Net's output is redirected while it trains
        self.start = time.perf_counter()
        self.index = 0
        self.seconds: dict[str, float] = {}

    def say(self, text: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(text, file=self.stdout)
            self.stdout.flush()

    @contextlib.contextmanager
    def stage(self, name: str, what: str) -> Iterator[dict]:
        self.index += 1
        self.say(f"[{self.index}/{self.total}] {name}: {what}")
        t0 = time.perf_counter()
        done: dict = {"text": ""}
        yield done
        seconds = time.perf_counter() - t0
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        result = f"; {done['text']}" if done["text"] else ""
        self.say(f"      {name} done in {seconds:.1f} s{result} (elapsed {_fmt_seconds(time.perf_counter() - self.start)})")


def _epoch_line(stages: _Stages):
    """An ``epoch_callback`` for the trainer: one line per epoch with the loss, pseudo Dice per organ and time."""

    def report(epoch) -> None:
        dice = " ".join(f"{o} {d:.3f}" for o, d in zip(FLARE21_ORGANS, epoch.pseudo_dice))
        stages.say(f"      epoch {epoch.epoch}/{epoch.epochs}  loss {epoch.train_loss:+.3f}  pseudo Dice {dice}  "
                   f"({epoch.seconds:.1f} s)")

    return report


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NnsdmError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise NnsdmError(f"{out}: folder exists and is not empty (use --overwrite to replace a previous demo, "
                             "or choose another --out)")
        if not (out / MARKER).is_file():
            raise NnsdmError(f"{out}: not an nnsdm demo folder (no {MARKER}); refusing to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by nnsdm demo; `nnsdm demo --overwrite` may replace this folder\n", encoding="utf-8")


def _check(dataset: Path) -> None:
    from nnsdm.datasets import check_dataset

    problems = check_dataset(dataset, progress=False)
    if problems:
        raise NnsdmError(f"{problems[0]} ({len(problems)} problem(s) in the generated dataset {dataset})")


def _as_test_set(raw: Path) -> tuple[Path, Path]:
    """Turn a generated raw dataset into a held-out set: imagesTs/labelsTs with cases named test_NNN."""
    images, labels = raw / "imagesTs", raw / "labelsTs"
    os.replace(raw / "imagesTr", images)
    os.replace(raw / "labelsTr", labels)
    (raw / "dataset.json").unlink()
    for folder in (images, labels):
        for path in sorted(folder.iterdir()):
            path.rename(folder / path.name.replace("phantom_", "test_", 1))
    cases = json.loads((raw / "phantom_cases.json").read_text(encoding="utf-8"))
    renamed = {name.replace("phantom_", "test_", 1): info for name, info in cases.items()}
    (raw / "phantom_cases.json").write_text(json.dumps(renamed, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return images, labels


def _train(workspace, *, sdm_weight: float, seed: int, epochs: int, iterations: int, device: str,
           workers: int, learning_rate: float, stages: _Stages) -> Path:
    """Train fold 'all' with the demo's short-budget recipe (see the module docstring), one line per epoch.

    nnU-Net's own printed output is dropped here; the fold's ``training_log_*.txt`` keeps all of it.
    """
    import numpy as np
    import torch

    from nnsdm.training import train

    torch.manual_seed(seed)
    np.random.seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        model = train(workspace=workspace, fold="all", sdm_weight=sdm_weight, epochs=epochs,
                      iterations_per_epoch=iterations, val_iterations=VAL_ITERATIONS, save_every=epochs,
                      device=device, optimizer="adamw", learning_rate=learning_rate, mirroring=False,
                      validate=False, workers=workers, epoch_callback=_epoch_line(stages) if stages.enabled else None)
    return Path(model).resolve()


def _training_precision(model: Path) -> str | None:
    """The CPU precision the trainer recorded in the model's metadata (None on CUDA)."""
    from nnsdm.model_folder import ModelFolder

    return ModelFolder(model).metadata().get("training", {}).get("cpu_precision")


def _scores(summary) -> dict:
    organs = list(FLARE21_ORGANS)
    return {
        "dsc": {o: float(summary.loc[o, "dsc_mean"]) for o in organs},
        "nsd": {o: float(summary.loc[o, "nsd_mean"]) for o in organs},
        "mean_dsc": float(summary.loc["all", "dsc_mean"]),
        "mean_nsd": float(summary.loc["all", "nsd_mean"]),
    }


def _score_line(scores: dict) -> str:
    per_organ = ", ".join(f"{o} {scores['dsc'][o]:.3f}/{scores['nsd'][o]:.3f}" for o in FLARE21_ORGANS)
    return f"DSC/NSD {per_organ}; mean {scores['mean_dsc']:.3f}/{scores['mean_nsd']:.3f}"


def _check_options(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise NnsdmError(f"--{name.replace('_', '-')} {value}: must be a positive whole number")


@dataclass(frozen=True)
class _Settings:
    """The demo's checked options (see :func:`run_demo`)."""

    out: Path
    ablation: bool
    seeds: int
    train_cases: int
    test_cases: int
    seed: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    epochs: int
    iterations: int
    learning_rate: float
    tta: bool
    device: str
    workers: int
    processes: int | None
    progress: bool


def run_demo(
    *,
    out: Path = DEFAULT_OUT,
    ablation: bool = False,
    seeds: int = 1,
    overwrite: bool = False,
    train_cases: int = DEFAULTS["train_cases"],
    test_cases: int = DEFAULTS["test_cases"],
    seed: int = DEFAULTS["seed"],
    shape: tuple[int, int, int] = DEFAULTS["shape"],
    spacing: tuple[float, float, float] = DEFAULTS["spacing"],
    epochs: int = DEFAULTS["epochs"],
    iterations: int = DEFAULTS["iterations"],
    learning_rate: float = DEFAULTS["learning_rate"],
    tta: bool = False,
    device: str = "auto",
    workers: int | None = None,
    processes: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the demo pipeline into ``out`` and return the summary that is also written to ``out/summary.json``.

    ``epochs`` x ``iterations`` is the training budget (nnU-Net's poly learning-rate schedule runs over
    it; the same on every machine: the held-out accuracy depends on it, see :data:`DEFAULTS`), ``learning_rate``
    the initial rate of the demo's AdamW recipe (see the module docstring); ``tta``
    mirrors at prediction (only for a model trained with mirroring: the demo's is not); ``workers``:
    augmentation processes per data loader (default: CPU cores - 1, at least 1, at most 4); ``processes``:
    planning/preprocessing processes (default: nnsdm's). ``shape`` and ``spacing`` are the phantoms'
    nominal (z, y, x) grid. ``seeds`` K > 1 (with ``ablation``) trains both models K times on the same
    data and budget (training seeds ``seed``..``seed`` + K - 1; the workspace keeps the first seed's models)
    and writes ``ablation_seeds.csv`` (per organ mean +- sd over seeds; :mod:`nnsdm.report.seeds`) beside
    ``ablation.csv`` (the paired test over cases and seeds). The SDM model's predictions carry ``qc.csv``
    (``nnsdm predict --qc``). Summary keys: ``dsc``, ``nsd`` (held-out mean per organ), ``mean_dsc``,
    ``mean_nsd``, ``seconds``, ``model`` (absolute model folder for ``nnsdm predict --model``),
    ``report``, ``stages`` (seconds each), ``config``,
    ``machine`` (CPU features, cores, load); with ``ablation`` also ``baseline`` (the same
    scores for the sdm_weight 0 model) and ``ablation`` (rows of ablation.csv); with ``seeds`` > 1 also
    ``ablation_seeds`` (rows of ablation_seeds.csv).
    """
    settings = _settings(out=out, ablation=ablation, seeds=seeds, train_cases=train_cases, test_cases=test_cases, seed=seed,
                         shape=shape, spacing=spacing, epochs=epochs, iterations=iterations,
                         learning_rate=learning_rate, tta=tta, device=device, workers=workers, processes=processes,
                         progress=progress)
    _prepare_out(settings.out, overwrite)
    from nnsdm.fileio import write_text
    from nnsdm.report import write_report
    from nnsdm.workspace import Workspace

    stages = _Stages(6 + 4 * ablation + 6 * (seeds - 1), progress)
    load_start = os.getloadavg()
    workspace = Workspace(settings.out / "workspace")
    train_raw, test_images, test_labels = _make_data(settings, stages)
    planned = _plan(settings, stages, train_raw, workspace)
    extra = [_models(settings, stages, workspace, test_images, test_labels, seed=settings.seed + k)
             for k in range(1, seeds)]  # first, so that the workspace ends with the first seed's models
    results = _models(settings, stages, workspace, test_images, test_labels, seed=settings.seed)
    comparison = None
    if ablation:
        what = "paired Wilcoxon test" + (f" over cases and {seeds} seeds" if seeds > 1 else "")
        with stages.stage("compare", f"SDM model vs baseline on the held-out set, {what}") as done:
            comparison = _compare([results, *extra], settings.out)
            both = comparison[comparison["organ"] == "all"].set_index("metric")
            done["text"] = ", ".join(f"mean {m.upper()} {both.loc[m, 'sdm_mean']:.3f} vs {both.loc[m, 'baseline_mean']:.3f}"
                                     for m in ("dsc", "nsd"))
    with stages.stage("report", "tables and figures (held-out set as the external set)") as done:
        report = write_report(workspace=workspace, out=settings.out / "report", pred=settings.out / "predictions",
                              gt=test_labels, images=test_images, progress=progress)
        done["text"] = f"{report / 'report.html'}"
    result = _summary(settings, stages, planned, results, comparison, report, load_start)
    write_text(settings.out / "summary.json", json.dumps(result, indent=2) + "\n")
    _say_results(stages, result, results, settings.out, report)
    return result


def _settings(*, out: Path, seed: int, shape, spacing, learning_rate: float, device: str, workers: int | None,
              **options) -> _Settings:
    """Every option checked before any work (one-line errors); defaults filled in."""
    _check_options(**{k: options[k] for k in ("train_cases", "test_cases", "epochs", "iterations", "seeds")
                      if options[k] is not None})
    if options["seeds"] > 1 and not options["ablation"]:
        raise NnsdmError(f"--seeds {options['seeds']}: repeats the ablation; use it with --ablation")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise NnsdmError(f"--seed {seed}: must be a non-negative whole number")
    from nnsdm.device import resolve_device, usable_cores
    from nnsdm.phantom import check_grid

    resolve_device(device)
    if not learning_rate > 0:
        raise NnsdmError(f"--learning-rate {learning_rate}: must be positive")
    if workers is None:  # one core trains, the others augment
        workers = max(1, min(usable_cores() - 1, 4))
    shape, spacing = check_grid(shape, spacing)
    return _Settings(out=Path(out).expanduser().absolute(), seed=seed, shape=shape, spacing=spacing,
                     learning_rate=learning_rate, device=device, workers=workers, **options)


def _make_data(settings: _Settings, stages: _Stages) -> tuple[Path, Path, Path]:
    """Training phantoms (raw dataset) and the held-out set; returns the raw dataset, test images and labels."""
    from nnsdm.phantom import generate_dataset

    train_raw, test_raw = settings.out / "data" / "phantom_train", settings.out / "data" / "test"
    grid = f"nominal grid {'x'.join(map(str, settings.shape))} at {'x'.join(f'{s:g}' for s in settings.spacing)} mm"
    with stages.stage("data", f"{settings.train_cases} training + {settings.test_cases} held-out synthetic CT cases, "
                              f"{grid}") as done:
        grid_options = dict(shape=settings.shape, spacing=settings.spacing)
        generate_dataset(train_raw, cases=settings.train_cases, seed=settings.seed, **grid_options)
        generate_dataset(test_raw, cases=settings.test_cases, seed=settings.seed + 1000, **grid_options)
        _check(train_raw)
        _check(test_raw)
        test_images, test_labels = _as_test_set(test_raw)
        done["text"] = f"checked, no problems ({train_raw}, {test_raw})"
    return train_raw, test_images, test_labels


def _plan(settings: _Settings, stages: _Stages, train_raw: Path, workspace):
    from nnsdm.planning import plan

    with stages.stage("plan", "nnU-Net fingerprint, plan (cpu-small preset) and preprocessing") as done:
        planned = plan(train_raw, workspace=workspace, preset="cpu-small", num_processes=settings.processes, check=False)
        done["text"] = (f"spacing {'x'.join(f'{s:.2f}' for s in planned.spacing)} mm, patch "
                        f"{'x'.join(map(str, planned.patch_size))}, batch {planned.batch_size}, "
                        f"{len(planned.features_per_stage)} stages, {planned.parameters:,} parameters")
    return planned


def _models(settings: _Settings, stages: _Stages, workspace, test_images: Path, test_labels: Path, *,
            seed: int) -> dict:
    """The SDM model (and with the ablation the baseline) trained with one training seed, each predicting and
    scoring the held-out set; the first seed's results go to the demo folder, others to ``seeds/seed_S/``."""
    runs = [("SDM model", 1.0, "predictions", "evaluation")]
    if settings.ablation:
        runs.append(("baseline", 0.0, "predictions_baseline", "evaluation_baseline"))
    first = seed == settings.seed
    out = settings.out if first else settings.out / "seeds" / f"seed_{seed}"
    return {label: _model_run(settings, stages, workspace, test_images, test_labels, weight=weight,
                              label=label if first else f"{label}, seed {seed}", out=out, seed=seed,
                              pred_name=pred_name, eval_name=eval_name)
            for label, weight, pred_name, eval_name in runs}


def _model_run(settings: _Settings, stages: _Stages, workspace, test_images: Path, test_labels: Path, *,
               weight: float, label: str, out: Path, seed: int, pred_name: str, eval_name: str) -> dict:
    """Train one model, predict the held-out set (the SDM model with quality scores) and evaluate it."""
    from nnsdm.evaluation import evaluate_folder
    from nnsdm.inference import predict

    what = "nnU-Net + SDM head" if weight else "plain nnU-Net (sdm_weight 0)"
    with stages.stage(f"train {label}", f"{what}, fold all, {settings.epochs} epochs x {settings.iterations} "
                                        f"iterations, {settings.workers} augmentation worker(s)") as done:
        model = _train(workspace, sdm_weight=weight, seed=seed, epochs=settings.epochs,
                       iterations=settings.iterations, device=settings.device, workers=settings.workers,
                       learning_rate=settings.learning_rate, stages=stages)
        done["text"] = f"model {model}"
    with stages.stage(f"predict {label}", f"{settings.test_cases} held-out cases, "
                                          f"{'with' if settings.tta else 'no'} mirroring, {RESAMPLE} resampled back") as done:
        predict(input=test_images, output=out / pred_name, model=model, folds=["all"], tta=settings.tta,
                device=settings.device, qc=weight > 0, resample=RESAMPLE, progress=settings.progress)
        done["text"] = f"{out / pred_name}"
    with stages.stage(f"evaluate {label}", "DSC and NSD (1 mm) per organ, FLARE21 rules") as done:
        summary = evaluate_folder(pred=out / pred_name, gt=test_labels, out=out / eval_name, progress=settings.progress)
        scores = _scores(summary)
        done["text"] = _score_line(scores)
    return {"model": model, "scores": scores, "metrics": out / eval_name / "metrics.csv",
            "precision": _training_precision(model)}


def _summary(settings: _Settings, stages: _Stages, planned, results: dict, comparison, report: Path,
             load_start) -> dict:
    """The content of ``summary.json`` (see :func:`run_demo`)."""
    from nnsdm.device import cpu_features

    sdm = results["SDM model"]
    result = {
        **sdm["scores"],
        "seconds": round(time.perf_counter() - stages.start, 1),
        "model": str(sdm["model"]),
        "report": str(report / "report.html"),
        "stages": {k: round(v, 1) for k, v in stages.seconds.items()},
        "config": {"train_cases": settings.train_cases, "test_cases": settings.test_cases, "seed": settings.seed,
                   "shape": list(settings.shape), "spacing": list(settings.spacing), "fold": "all",
                   "epochs": settings.epochs, "iterations": settings.iterations,
                   "learning_rate": settings.learning_rate, "optimizer": "AdamW, poly schedule per iteration", "mirroring": False,
                   "seeds": settings.seeds,
                   "val_iterations": VAL_ITERATIONS, "tta": settings.tta, "resample": RESAMPLE, "device": settings.device,
                   "workers": settings.workers, "cpu_precision": sdm["precision"],
                   "preset": "cpu-small", "plan_spacing": planned.spacing, "patch_size": planned.patch_size,
                   "batch_size": planned.batch_size, "features_per_stage": planned.features_per_stage,
                   "parameters": planned.parameters},
        "machine": {"cpu": cpu_features(), "cpu_count": os.cpu_count(), "load_average_start": [round(v, 2) for v in load_start],
                    "load_average_end": [round(v, 2) for v in os.getloadavg()]},
    }
    if comparison is not None:
        result["baseline"] = {**results["baseline"]["scores"], "model": str(results["baseline"]["model"])}
        result["ablation"] = json.loads(comparison.to_json(orient="records"))
    if settings.seeds > 1:
        import pandas as pd

        result["ablation_seeds"] = json.loads(pd.read_csv(settings.out / "ablation_seeds.csv").to_json(orient="records"))
    return result


def _say_results(stages: _Stages, result: dict, results: dict, out: Path, report: Path) -> None:
    stages.say(f"held-out {_score_line(results['SDM model']['scores'])}")
    if "baseline" in results:
        stages.say(f"baseline {_score_line(results['baseline']['scores'])} (per organ tests in {out / 'ablation.csv'})")
    if "ablation_seeds" in result:
        stages.say(f"over {result['config']['seeds']} seeds (mean +- sd): {_seed_line(result['ablation_seeds'])} "
                   f"({out / 'ablation_seeds.csv'})")
    stages.say(f"done in {_fmt_seconds(result['seconds'])}; summary: {out / 'summary.json'}")
    stages.say(f"report: {report / 'report.html'}")


def _seed_line(rows: list[dict]) -> str:
    mean = {r["metric"]: r for r in rows if r["organ"] == "all"}
    return ", ".join(f"{m.upper()} SDM {mean[m]['sdm_mean']:.3f} +- {mean[m]['sdm_sd']:.3f} vs baseline "
                     f"{mean[m]['baseline_mean']:.3f} +- {mean[m]['baseline_sd']:.3f}" for m in ("dsc", "nsd"))


def _compare(runs: list[dict], out: Path):
    """SDM model vs baseline on the same held-out cases: ``ablation.csv`` (paired Wilcoxon test over cases and
    seeds) and, with several seeds, ``ablation_seeds.csv`` (per organ mean +- sd over seeds); returns the first."""
    import pandas as pd

    from nnsdm.fileio import atomic_path
    from nnsdm.report.seeds import paired_over_seeds, seed_summary

    sdm = [pd.read_csv(run["SDM model"]["metrics"]) for run in runs]
    baseline = [pd.read_csv(run["baseline"]["metrics"]) for run in runs]
    table = paired_over_seeds(sdm, baseline)
    with atomic_path(out / "ablation.csv") as tmp:
        table.to_csv(tmp, index=False)
    if len(runs) > 1:
        with atomic_path(out / "ablation_seeds.csv") as tmp:
            seed_summary(sdm, baseline).to_csv(tmp, index=False)
    return table

"""Cohort prediction in shards: each job loads the model once and predicts a fixed share of the cases.

Shard ``i`` of ``n`` takes the cases at positions ``i, i + n, i + 2n, ...`` of the input's cases sorted
by name, so a rerun with the same input and ``n`` gives every shard the same cases. A case whose
outputs all exist is skipped; every output is written under a temporary name and renamed when complete
(a cancelled shard leaves no partial file; leftovers of a killed one are removed when its case is
predicted again). A case that fails (unreadable or corrupt input, ...) is recorded with its one-line
error and the shard goes on with the next one.

At its end every shard merges what all shards have finished: ``OUTPUT/efficiency.csv`` (one row per
case) and ``OUTPUT/failed_cases.csv`` (case, error; removed when no case failed).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

from nnsdm.fileio import write_text
from nnsdm.scaleout.records import JobRecord, load_records

FAILURES_FILE = "failed_cases.csv"


def shard_cases(cases: Sequence, shard: int, shards: int) -> list:
    """The cases of shard ``shard`` (0-based) of ``shards``: every ``shards``-th case from position ``shard``."""
    return list(cases[shard::shards])


def remove_partial_files(outputs) -> None:
    """Delete temporary files a killed writer left for these outputs (``.NAME.*.tmp*`` beside each)."""
    for final in outputs.all():
        for tmp in final.parent.glob(f".{final.stem}.*.tmp*"):
            tmp.unlink(missing_ok=True)


def _shard_efficiency_file(record: JobRecord) -> Path:
    return record.folder / "efficiency" / f"{record.key}.csv"


def run_shard(record: JobRecord, control) -> None:
    """Predict this shard's cases (see the module docstring) and merge the results of all shards."""
    from nnsdm.inference.io import find_cases
    from nnsdm.inference.predict import case_outputs
    from nnsdm.inference.preview import PREVIEW_SUFFIX
    from nnsdm.locking import hold, lock_name

    spec = record.spec
    output = Path(spec["output"])
    mine = shard_cases(find_cases(Path(spec["input"])), spec["shard"], spec["shards"])
    qc = bool(spec.get("qc", False))
    plan = [(c, case_outputs(c, output, save_sdm=spec["save_sdm"], save_probabilities=spec["save_probabilities"],
                             output_format=spec.get("output_format", "nifti"), statistics=spec.get("statistics", False),
                             preview=spec.get("preview", False)))
            for c in mine]
    todo = [(c, o) for c, o in plan if not all(p.is_file() for p in o.all())]
    failed: dict[str, str] = {}
    record.report(state="running", done=len(plan) - len(todo), total=len(plan), failed_cases=failed)
    if todo:
        with hold(output, lock_name("predict", spec["shard"], spec["shards"])):  # one writer per shard
            _predict_shard(record, todo, failed, qc=qc)
    record.report(state="done", error=f"{len(failed)} case(s) failed" if failed else None)
    previews = []
    if spec.get("preview", False):  # the contact sheet shows every shard's cases
        previews = [output / f"{c.name}{PREVIEW_SUFFIX}" for c in find_cases(Path(spec["input"]))]
    merge_results(record.folder, output, previews=previews)


def _predict_shard(record: JobRecord, todo: list, failed: dict[str, str], *, qc: bool) -> None:
    """Predict ``todo`` (case, outputs) pairs; a case that fails is recorded in ``failed`` with its one-line error."""
    from nnsdm.device import resolve_cpu_precision, resolve_device
    from nnsdm.inference.efficiency import CaseMonitor, update_efficiency_csv
    from nnsdm.inference.io import check_case
    from nnsdm.inference.predict import _postprocess_rule, load_model, make_predictor, predict_case, record_case_tables
    from nnsdm.scaleout.jobs import one_line

    spec, output = record.spec, Path(record.spec["output"])
    device = resolve_device(spec["device"])
    model = load_model(Path(spec["model"]), folds=spec["folds"])
    keep = _postprocess_rule(spec["postprocess"], model)
    predictor = make_predictor(model, device=device, tta=spec["tta"], step_size=spec["step_size"],
                               with_sdm=spec["save_sdm"] or qc, cpu_precision=resolve_cpu_precision(spec["cpu_precision"]))
    for case, outs in todo:
        remove_partial_files(outs)
        try:
            check_case(case)
            with CaseMonitor(case.name, device) as monitor:
                table, rows = predict_case(case, model, predictor, outs, keep=keep, qc=qc,
                                           resample=spec.get("resample", "logits"))
            update_efficiency_csv(_shard_efficiency_file(record), [monitor.result])
            with _merge_lock(record.folder):  # the output's tables are shared by all shards
                record_case_tables(output, case, outs, table, rows, qc=qc)
        except Exception as exc:  # one bad case fails that case only
            failed[case.name] = one_line(exc)
        record.report(done=record.state.done + (case.name not in failed), failed_cases=failed)


@contextlib.contextmanager
def _merge_lock(folder: Path) -> Iterator[None]:
    """Serialise the merges of shards that end at the same time (the last one sees every shard's rows)."""
    with open(folder / "merge.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def merge_results(jobs_folder: Path, output: Path, *, previews: Sequence[Path] = ()) -> tuple[Path, Path | None]:
    """Write ``efficiency.csv`` from every shard's rows, ``failed_cases.csv`` from every shard's failures and
    the contact sheet of the ``previews`` written so far."""
    from nnsdm.inference.efficiency import COLUMNS, EFFICIENCY_FILE, CaseEfficiency, update_efficiency_csv
    from nnsdm.inference.results import write_contact_sheet

    with _merge_lock(jobs_folder):
        write_contact_sheet(output, list(previews))
        rows = []
        for part in sorted((jobs_folder / "efficiency").glob("*.csv")):
            with open(part, newline="", encoding="utf-8") as f:
                rows += [CaseEfficiency(**{k: (r[k] if r[k] != "" else None) for k in COLUMNS}) for r in csv.DictReader(f)]
        update_efficiency_csv(output / EFFICIENCY_FILE, rows)
        failures = {case: error for r in load_records(jobs_folder) if r.kind == "predict"
                    for case, error in r.state.failed_cases.items()}
        failures = {c: e for c, e in failures.items() if not (output / f"{c}.nii.gz").is_file()}
        path = output / FAILURES_FILE
        if not failures:
            path.unlink(missing_ok=True)
            return output / EFFICIENCY_FILE, None
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["case", "error"])
        writer.writerows(sorted(failures.items()))
        write_text(path, buffer.getvalue())
        return output / EFFICIENCY_FILE, path

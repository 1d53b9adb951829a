"""``nnsdm status``: where the jobs of a workspace or a prediction output stand, read from disk.

Also :func:`wait`, the progress bar over jobs behind ``--wait``.
"""

from __future__ import annotations

import time
from pathlib import Path

from nnsdm.errors import NnsdmError
from nnsdm.scaleout.records import FINAL_STATES, JobRecord, load_records, states
from nnsdm.scaleout.study import jobs_folder

COLUMNS = ("job", "id", "state", "progress", "pseudo Dice", "log")


def _progress(record: JobRecord) -> str:
    state = record.state
    if not state.total:
        return ""
    unit = {"train": "epoch", "predict": "cases"}.get(record.kind, "step")
    failed = f" ({len(state.failed_cases)} failed)" if state.failed_cases else ""
    return f"{unit} {state.done}/{state.total}{failed}"


def status_rows(path: Path) -> list[dict[str, str]]:
    """One row per job recorded for ``path`` (a workspace or a prediction output folder)."""
    folder = jobs_folder(path)
    records = load_records(folder)
    if not records:
        raise NnsdmError(f"{path}: no jobs recorded (no {folder.name}/ with job records)")
    rows = []
    for record, (state, error) in zip(records, states(records)):
        rows.append({"job": record.label or record.key, "id": f"{record.launcher} {record.job_id}".strip(),
                     "state": state, "progress": _progress(record),
                     "pseudo Dice": "" if record.state.pseudo_dice is None else f"{record.state.pseudo_dice:.4f}",
                     "log": record.log, "error": error or ""})
    return rows


def format_status(rows: list[dict[str, str]]) -> str:
    """A plain-text table; each error on its own line under its job."""
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    for row in rows:
        lines.append("  ".join(row[c].ljust(widths[c]) for c in COLUMNS).rstrip())
        if row["error"]:
            lines.append(f"    error: {row['error']}")
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def wait(records: list[JobRecord], *, poll_s: float = 3.0, progress: bool = True,
         timeout_s: float | None = None) -> dict[str, str]:
    """Block until every job has ended (done or failed), with a progress bar; return the final states.

    ``timeout_s``: give up with an ``NnsdmError`` after that long (the jobs go on).
    """
    from tqdm import tqdm

    from nnsdm.scaleout.records import load_record

    bar = tqdm(total=len(records), desc="jobs", unit="job", disable=not progress, dynamic_ncols=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        current = [load_record(r.job_file) for r in records]
        result = {r.key: s for r, (s, _) in zip(current, states(current))}
        ended = sum(s in FINAL_STATES for s in result.values())
        bar.update(ended - bar.n)
        bar.set_postfix_str(", ".join(f"{sum(v == s for v in result.values())} {s}" for s in sorted(set(result.values()))))
        if ended == len(records):
            bar.close()
            return result
        if deadline is not None and time.monotonic() > deadline:
            bar.close()
            raise NnsdmError(f"{records[0].folder}: jobs still running after {timeout_s:.0f} s ({result})")
        time.sleep(poll_s)

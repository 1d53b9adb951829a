"""The report's quality-control section: the organs ``nnsdm predict --qc`` trusts least, worst first.

Shown for an external set whose prediction folder holds ``qc.csv``: a table of the lowest-scoring
(case, organ) pairs with both scores, the flag and, where the ground truth is known, the true DSC and
NSD; and a figure of the worst cases: each case's own preview (``nnsdm predict --preview``) where the
prediction folder has one, else the report's image / ground truth / prediction overlay.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from nnsdm.evaluation import find_file
from nnsdm.inference.qc import QC_FILE, QC_THRESHOLD
from nnsdm.report import figures
from nnsdm.report.render import Heading, Paragraph, Table

__all__ = ["add_quality_control", "worst_first", "find_preview"]

ROWS = 12  # organs listed
CASES = 3  # cases shown


def worst_first(qc: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """``qc.csv`` rows sorted by ``qc`` (lowest first, then the baseline), with true ``dsc``/``nsd`` when given."""
    table = qc.copy()
    table["case"] = table["case"].astype(str)
    if metrics is not None and {"case", "organ", "dsc", "nsd"} <= set(metrics.columns):
        truth = metrics[["case", "organ", "dsc", "nsd"]].astype({"case": str})
        table = table.merge(truth, on=["case", "organ"], how="left")
    return table.sort_values(["qc", "qc_baseline", "case", "organ"], kind="stable").reset_index(drop=True)


def find_preview(pred: Path, case: str) -> Path | None:
    """A per-case preview PNG in the prediction folder (``CASE_preview.png``, ``previews/CASE*.png``), if any."""
    for pattern in (f"{case}_preview.png", f"{case}.png", f"previews/{case}.png", f"previews/{case}_*.png",
                    f"preview/{case}.png", f"preview/{case}_*.png"):
        found = sorted(Path(pred).glob(pattern))
        if found:
            return found[0]
    return None


def _display(table: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({"Case": table["case"], "Organ": table["organ"], "QC (SDM)": table["qc"].map("{:.3f}".format),
                          "QC baseline (entropy)": table["qc_baseline"].map(lambda v: "—" if pd.isna(v) else f"{v:.3f}"),
                          "Flagged": table["flagged"].map(lambda v: "yes" if int(v) else "")})
    for col, name in (("dsc", "True DSC"), ("nsd", "True NSD")):
        if col in table.columns:
            shown[name] = table[col].map(lambda v: "—" if pd.isna(v) else f"{v:.3f}")
    return shown


def add_quality_control(report, pred: Path, *, metrics: pd.DataFrame | None, lookup: Mapping[tuple, object],
                        images: Path | None) -> None:
    """The section, appended to ``report`` (a :class:`nnsdm.report.builder.ReportBuilder`); nothing when ``pred``
    has no ``qc.csv``. ``lookup``: (case,) -> the external set's job (ground truth and prediction paths)."""
    path = Path(pred) / QC_FILE
    if not path.is_file():
        return
    table = worst_first(pd.read_csv(path), metrics)
    report.csv(table, "external_qc.csv")
    report.add(Heading("Quality control", 3), Paragraph(
        f"From `{path}` (`nnsdm predict --qc`): per case and organ, *QC (SDM)* is the agreement of the SDM head's "
        "zero level set with the segmentation (√(Dice × NSD at 2 mm) of `sdm < 0` and the label; 1 = the two "
        "opinions agree) and *QC baseline* one minus the softmax's mean normalised entropy around the organ. "
        f"Organs below {QC_THRESHOLD:.2f} are flagged: {int(table['flagged'].sum())} of {len(table)} here. "
        "Lowest scores first."), Table(_display(table.head(ROWS)), "Least trusted organs"))
    cases = list(dict.fromkeys(table["case"]))[:CASES]
    previews = {case: find_preview(Path(pred), case) for case in cases}
    if cases and all(previews.values()):
        for case in cases:
            report.figure(f"qc_preview_{case}", f"Preview of {case} (lowest QC {table[table['case'] == case]['qc'].min():.3f}).",
                          lambda out, source=previews[case]: shutil.copyfile(source, out))
        return
    examples = []
    for case in cases:
        job = lookup.get((case,))
        if job is not None:
            rows = table[table["case"] == case]
            mean_dsc = float(rows["dsc"].mean()) if "dsc" in rows.columns else float("nan")
            image = find_file(Path(images), f"{case}_0000") if images is not None else None
            examples.append(figures.Example(f"QC {rows['qc'].iloc[0]:.2f} ({rows['organ'].iloc[0]})", case, mean_dsc,
                                            job.gt, job.pred, image))
    if examples:
        report.figure("qc_worst", "The cases with the lowest QC scores (their least trusted organ named; true mean DSC "
                                  "over organs): image, ground truth and prediction on the axial slice with most organ.",
                      lambda out: figures.qualitative_figure(examples, out, title="Lowest QC scores",
                                                             ct=report.ct if images is not None else False))

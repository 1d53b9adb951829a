"""Kill anywhere, lose nothing: ``kill -9`` at chosen moments of train, predict, evaluate and report, then rerun.

Each kill point waits for an observable moment (a log line, a temporary file, a folder) and sends
SIGKILL, the one signal no code can react to, as the OOM killer or a lost node would. Afterwards every
file under a final name must be complete, and rerunning (``train --continue``) must finish the job.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from nnsdm.checkpoints import read_checkpoint

pytestmark = pytest.mark.slow
EPOCHS = 2
TRAIN = ["--fold", "1", "--epochs", str(EPOCHS), "--iterations-per-epoch", "2", "--val-iterations", "1",
         "--save-every", "1", "--device", "cpu", "--workers", "0", "--validation-no-tta"]


def _start(args: list, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "nnsdm", *map(str, args)], stdout=out, stderr=subprocess.STDOUT)


def _kill_when(process: subprocess.Popen, moment, timeout: float = 240, poll: float = 0.002) -> bool:
    """SIGKILL ``process`` as soon as ``moment()`` is true; False if it ended first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if moment():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(poll)
    process.kill()
    process.wait()
    return False


def _complete_checkpoints(fold: Path) -> list[str]:
    """The checkpoints under final names, each fully readable (else read_checkpoint raises)."""
    names = sorted(p.name for p in fold.glob("checkpoint_*.pth"))
    for name in names:
        read_checkpoint(fold / name, for_training=True)
    return names


def test_train_killed_anywhere_resumes_to_the_same_end(copy_planned, tmp_path):
    workspace = copy_planned(tmp_path / "ws")
    fold = workspace.results / workspace.dataset_name() / "nnsdmTrainer__nnUNetPlans__3d_fullres" / "fold_1"
    log = tmp_path / "train.log"
    args = ["train", "--workspace", workspace.root, *TRAIN]
    text = lambda: log.read_text(errors="replace") if log.exists() else ""  # noqa: E731

    moments = {
        "inside epoch 1": lambda: "Epoch 1" in text() and (fold / "checkpoint_latest.pth").exists(),
        "while a checkpoint is written": lambda: any(fold.glob("*.pth.tmp")),
        "during final validation": lambda: (fold / "validation").is_dir(),
    }
    killed = []
    for k, (name, moment) in enumerate(moments.items()):
        start = len(text())
        process = _start(args + (["--continue"] if k else []), log)
        assert _kill_when(process, moment), f"the run ended before the kill point '{name}':\n{text()[start:][-3000:]}"
        killed.append(name)
        assert "Traceback" not in text()[start:]
        _complete_checkpoints(fold)  # whatever is under a final name is whole

    process = _start(args + ["--continue"], log)
    assert process.wait(timeout=300) == 0, text()[-3000:]
    assert _complete_checkpoints(fold) == ["checkpoint_best.pth", "checkpoint_final.pth"]
    final = read_checkpoint(fold / "checkpoint_final.pth", for_training=True)
    assert final["current_epoch"] == EPOCHS and len(final["logging"]["train_losses"]) == EPOCHS
    assert (fold / "validation" / "summary.json").is_file()
    assert not [p.name for p in fold.rglob("*") if ".tmp" in p.name]
    assert killed == list(moments)


def test_predict_killed_while_writing_then_rerun_completes(trained_model, phantom_dataset, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("phantom_000_0000.nii.gz", "phantom_001_0000.nii.gz"):
        shutil.copy(phantom_dataset / "imagesTr" / name, images / name)
    out = tmp_path / "out"
    args = ["predict", "-i", images, "-o", out, "--model", trained_model, "--device", "cpu", "--no-tta"]
    log = tmp_path / "predict.log"
    # while the first label map is written (its hidden temporary exists), else right after it
    writing = lambda: any(out.glob(".phantom_00*.tmp*")) or (out / "phantom_000.nii.gz").exists()  # noqa: E731
    assert _kill_when(_start(args, log), writing, poll=0.001)
    assert not (out / "phantom_001.nii.gz").exists()
    for label in out.glob("[!.]*.nii.gz"):  # every label map under its final name is whole
        assert sitk.ReadImage(str(label)).GetSize() == sitk.ReadImage(str(images / label.name.replace(".nii.gz", "_0000.nii.gz"))).GetSize()
    assert _start(args, log).wait(timeout=300) == 0, log.read_text()[-3000:]
    assert sorted(p.name for p in out.glob("[!.]*.nii.gz")) == ["phantom_000.nii.gz", "phantom_001.nii.gz"]
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name or p.name.endswith(".lock")]


def test_evaluate_and_report_killed_then_rerun_complete(trained_model, planned_workspace, phantom_dataset, tmp_path):
    gt = phantom_dataset / "labelsTr"
    pred = tmp_path / "pred"
    pred.mkdir()
    for label in sorted(gt.glob("*.nii.gz"))[:3]:
        os.symlink(label, pred / label.name)
    log = tmp_path / "log"
    evaluate = ["evaluate", "--pred", pred, "--gt", gt, "--out", tmp_path / "eval"]
    report = ["report", "--workspace", planned_workspace[0].root, "--out", tmp_path / "report"]
    scoring = lambda: "evaluate:" in log.read_text(errors="replace")  # noqa: E731
    writing = lambda: any(tmp_path.glob(".report.*"))  # noqa: E731
    for args, moment, final in ((evaluate, scoring, tmp_path / "eval" / "summary.csv"), (report, writing, tmp_path / "report")):
        assert _kill_when(_start(args, log), moment, poll=0.001), f"ended before the kill: {log.read_text()[-2000:]}"
        assert not final.exists()  # nothing under the final name yet
        assert _start(args, log).wait(timeout=300) == 0, log.read_text()[-3000:]
    assert (tmp_path / "eval" / "summary.csv").is_file() and (tmp_path / "report" / "report.html").is_file()

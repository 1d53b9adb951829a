"""Scaling out: training folds and prediction shards as jobs, on a real one-node SLURM cluster and locally.

The SLURM tests need the cluster that ``scripts/slurm-cluster.sh start`` runs (``.ci/run`` starts it);
they skip with the reason when ``sinfo`` does not answer. Jobs run on tiny phantoms with tiny budgets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnsdm.cli import main
from nnsdm.errors import NnsdmError
from nnsdm.scaleout.records import JobRecord, load_record, load_records, states
from nnsdm.scaleout.shards import shard_cases
from nnsdm.scaleout.slurm import parse_extra, parse_time
from nnsdm.scaleout.status import wait
from nnsdm.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ["--epochs", "2", "--iterations-per-epoch", "1", "--val-iterations", "1", "--validation-no-tta",
          "--device", "cpu", "--workers", "0", "--save-every", "50"]
SLURM = ["--launcher", "slurm", "--slurm-cpus-per-job", "1"]
TIMEOUT_S = 900


def _sinfo_problem() -> str | None:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed ({exc})"
    if out.returncode != 0 or not re.search(r"idle|mixed|allocated", out.stdout):
        return f"sinfo failed or no usable node ({(out.stderr or out.stdout).strip()[:200]})"
    return None


@pytest.fixture(scope="module")
def slurm():
    """A usable SLURM cluster and submitit, else skip (start one with scripts/slurm-cluster.sh start)."""
    pytest.importorskip("submitit", reason="submitit not installed (pip install 'nnsdm[slurm]')")
    problem = _sinfo_problem()
    if problem:
        pytest.skip(f"SLURM not available: {problem}; start a local cluster with scripts/slurm-cluster.sh start")


def _model(workspace: Workspace, trainer: str = "nnsdmTrainer") -> Path:
    return workspace.results / workspace.dataset_name() / f"{trainer}__nnUNetPlans__3d_fullres"


def _epochs_in_logs(fold_folder: Path) -> list[int]:
    """Every "Epoch N" line nnU-Net wrote in the fold's training logs (one log per run)."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(fold_folder.glob("training_log_*.txt")))
    return sorted(int(n) for n in re.findall(r": Epoch (\d+) ?\n", text))


def _cli(*argv: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """The real ``nnsdm`` command in its own process (as a user runs it; the process ends when it returns)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "nnsdm", *argv], capture_output=True, text=True, env=env, timeout=timeout)


def _wait_until(condition, timeout: float = TIMEOUT_S, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("condition not met in time")


def _started(record: JobRecord):
    """The job's state once it left "pending", else None."""
    state = load_record(record.job_file).state
    return state if state.state != "pending" else None


# --- without a cluster ---------------------------------------------------------------------------------

def test_shards_are_deterministic_and_cover_every_case_once():
    cases = [f"case_{i:02d}" for i in range(11)]
    parts = [shard_cases(cases, i, 3) for i in range(3)]
    assert parts == [shard_cases(cases, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == cases
    assert [len(p) for p in parts] == [4, 4, 3]


def test_slurm_time_and_sbatch_options_parse_or_fail_in_one_line():
    assert [parse_time(t) for t in ("90", "1:30:00", "2-00:00:00", "10:30", "1-12", "0:30")] == [90, 90, 2880, 11, 2160, 1]
    assert parse_extra(["account=lab", "--qos=high", "constraint=a100&nvlink"]) == {
        "account": "lab", "qos": "high", "constraint": "a100&nvlink"}
    with pytest.raises(NnsdmError, match="--slurm-time 1h"):
        parse_time("1h")
    with pytest.raises(NnsdmError, match="--slurm-option account: expected KEY=VALUE"):
        parse_extra(["account"])


def test_splits_are_written_up_front_as_nnunet_would(copy_planned, tmp_path):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from nnsdm.scaleout.study import ensure_splits

    workspace = copy_planned(tmp_path / "ws")
    name = workspace.dataset_name()
    (workspace.preprocessed / name / "splits_final.json").unlink(missing_ok=True)
    path = ensure_splits(workspace, name)
    ids = sorted(p.name[: -len(".pkl")] for p in (workspace.preprocessed / name / "nnUNetPlans_3d_fullres").glob("*.pkl"))
    assert json.loads(path.read_text()) == generate_crossval_split(ids, seed=12345, n_splits=5)


def test_status_reads_disk_and_flags_a_job_that_vanished(tmp_path, capsys):
    folder = tmp_path / "out" / "nnsdm_jobs"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    records = [JobRecord(key=f"shard_{i:03d}", kind="predict", spec={}, folder=folder, launcher="local",
                         job_id=f"local-{i}", submission="s1", label=f"shard {i + 1}/2", log=f"/logs/{i}.log") for i in range(2)]
    for record in records:
        record.save_submission()
    records[0].report(state="done", done=3, total=3)
    records[1].report(state="running", done=1, total=2)
    state = json.loads(records[1].state_file.read_text())
    records[1].state_file.write_text(json.dumps({**state, "pid": gone.pid}))  # that process has ended
    assert main(["status", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"shard 1/2\s+local local-0\s+done\s+cases 3/3", out)
    assert re.search(r"shard 2/2\s+local local-1\s+failed\s+cases 1/2", out)
    assert "job ended without a final report" in out and "1 done, 1 failed" in out
    resubmitted = load_record(records[1].job_file)
    resubmitted.submission = "s2"
    resubmitted.save_submission()
    assert [s for s, _ in states(load_records(folder))] == ["done", "pending"]  # an older run's report does not count


# --- on the cluster ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_fold_cv_on_slurm_matches_the_local_launcher(slurm, copy_planned, tmp_path):
    on_slurm = copy_planned(tmp_path / "slurm")
    local = copy_planned(tmp_path / "local")
    result = _cli("train", "--workspace", str(on_slurm.root), "--fold", "0", "1", *BUDGET, *SLURM, "--wait")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"submitted fold 0, sdm-weight 1: SLURM job \d+_0", result.stdout)
    assert main(["train", "--workspace", str(local.root), "--fold", "0", "1", *BUDGET, "--launcher", "local"]) == 0

    from nnsdm.checkpoints import read_checkpoint

    for fold in (0, 1):
        a, b = _model(on_slurm) / f"fold_{fold}", _model(local) / f"fold_{fold}"
        assert read_checkpoint(a / "checkpoint_final.pth")["current_epoch"] == read_checkpoint(b / "checkpoint_final.pth")["current_epoch"] == 2
        names = lambda f: sorted(p.name for p in (f / "validation").iterdir())  # noqa: E731
        assert names(a) == names(b) and "summary.json" in names(a) and any(n.endswith(".nii.gz") for n in names(a))
        assert _epochs_in_logs(a) == _epochs_in_logs(b) == [0, 1]
    status = _cli("status", "--workspace", str(on_slurm.root))  # the submitting process is gone
    assert status.returncode == 0 and status.stdout.count("done") >= 2 and "epoch 2/2" in status.stdout
    # idempotent: the same command again finds both folds finished and trains nothing
    assert main(["train", "--workspace", str(local.root), "--fold", "0", "1", *BUDGET, "--launcher", "local"]) == 0
    assert _epochs_in_logs(_model(local) / "fold_0") == [0, 1]


@pytest.mark.slow
def test_preempted_training_job_is_requeued_and_trains_every_epoch_once(slurm, copy_planned, tmp_path):
    workspace = copy_planned(tmp_path / "ws")
    epochs = 30  # about a second each here: long enough to signal the job while it runs
    budget = [w if w != "2" else str(epochs) for w in BUDGET]
    # a 6-minute time limit with SLURM's warning 300 s before it (sent 30-60 s into each run, as SLURM checks
    # every 30 s): on a slow machine the training outlasts it and each run is requeued at an epoch boundary;
    # the last run has 5 minutes for its final validation
    assert main(["train", "--workspace", str(workspace.root), "--fold", "0", *budget, *SLURM,
                 "--slurm-time", "6", "--slurm-signal-delay", "300"]) == 0
    record = load_records(workspace.root / "nnsdm_jobs")[0]
    # and, so that a fast machine sees one too, a preemption (SLURM's SIGUSR2 to the running job) as soon as it
    # runs: the job defers it to the end of its first epoch, so the requeue comes before the last epoch
    started = _wait_until(lambda: _started(record))
    assert started.state == "running", started  # a fold that is already finished would end here as "done"
    subprocess.run(["scancel", "--signal=USR2", record.job_id], check=False)  # pending after a requeue: no-op
    fold = _model(workspace) / "fold_0"
    # SLURM signals every process of the job: one more request during the final validation (its worker pools
    # must not die of it) is ignored, and the validation finishes
    _wait_until(lambda: (fold / "validation").is_dir(), poll=0.02)
    subprocess.run(["scancel", "--signal=USR2", record.job_id], check=False)
    final = wait([record], progress=False, timeout_s=TIMEOUT_S)
    done = load_record(record.job_file)
    assert final == {record.key: "done"}, done.state
    assert done.state.attempts >= 2 and done.state.done == epochs
    assert _epochs_in_logs(fold) == list(range(epochs))  # each epoch trained exactly once over all runs
    assert len(list(fold.glob("training_log_*.txt"))) >= 2
    assert "Requeued job" in Path(done.log).read_text(encoding="utf-8")  # submitit's own log line
    from nnsdm.checkpoints import read_checkpoint

    assert read_checkpoint(fold / "checkpoint_final.pth")["current_epoch"] == epochs
    assert (fold / "validation" / "summary.json").is_file()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, phantom_dataset):
    """Eight good cases and, in a second folder, the same eight plus one corrupt file."""
    root = tmp_path_factory.mktemp("cohort")
    good, mixed = root / "good", root / "mixed"
    good.mkdir()
    images = sorted((phantom_dataset / "imagesTr").glob("*_0000.nii.gz"))
    for i in range(8):
        image = sitk.ReadImage(str(images[i % len(images)]))
        if i >= len(images):
            image = sitk.Flip(image, [False, True, False])  # a different case
        sitk.WriteImage(image, str(good / f"scan_{i:02d}_0000.nii.gz"))
    shutil.copytree(good, mixed)
    (mixed / "scan_corrupt_0000.nii.gz").write_bytes((good / "scan_00_0000.nii.gz").read_bytes()[:300])
    return good, mixed


@pytest.mark.slow
def test_cancelled_shard_then_rerun_predicts_every_case_once_and_reports_the_corrupt_one(
        slurm, trained_model, cohort, tmp_path):
    from nnsdm.inference import predict

    good, mixed = cohort
    reference = tmp_path / "reference"
    predict(input=good, output=reference, model=trained_model, tta=False, device="cpu", progress=False)
    out = tmp_path / "out"
    command = ["predict", "-i", str(mixed), "-o", str(out), "--model", str(trained_model), "--no-tta", "--device", "cpu",
               "--preview", *SLURM, "--shards", "2"]
    assert main(command) == 0
    records = load_records(out / "nnsdm_jobs")
    assert [r.spec["shard"] for r in records] == [0, 1]
    victim = records[0]
    _wait_until(lambda: load_record(victim.job_file).state.done >= 1)
    subprocess.run(["scancel", victim.job_id], check=True)
    wait(records, progress=False, timeout_s=TIMEOUT_S)
    cancelled = load_record(victim.job_file)
    assert cancelled.state.state == "failed" and cancelled.state.done < cancelled.state.total, cancelled.state
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}

    rerun = _cli(*command, "--wait")
    assert rerun.returncode == 1  # the corrupt case failed; everything else is done
    failed_lines = [l for l in rerun.stderr.splitlines() if "scan_corrupt" in l]
    assert len(failed_lines) == 1 and "scan_corrupt_0000.nii.gz" in failed_lines[0]
    failures = (out / "failed_cases.csv").read_text(encoding="utf-8").splitlines()
    assert len(failures) == 2 and failures[1].startswith("scan_corrupt,")
    labels = sorted(p.name for p in out.glob("*.nii.gz"))
    assert labels == sorted(p.name for p in reference.glob("*.nii.gz"))  # every good case, nothing for the corrupt one
    for name in labels:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(reference / name)))
        np.testing.assert_array_equal(a, b)
    assert {n: (out / n).stat().st_mtime_ns for n in first} == first  # finished cases were not predicted again
    rows = (out / "efficiency.csv").read_text(encoding="utf-8").splitlines()
    assert sorted(r.split(",")[0] for r in rows[1:]) == [n[: -len(".nii.gz")] for n in labels]
    from PIL import Image

    previews = sorted(p.name for p in out.glob("*_preview.png"))
    assert previews == [n.replace(".nii.gz", "_preview.png") for n in labels]
    with Image.open(out / "previews.png") as sheet, Image.open(out / previews[0]) as one:  # room for every case's tile
        assert sheet.width * sheet.height >= len(previews) * 600 * round(one.height * 600 / one.width)
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers
    assert main(["status", str(out)]) == 0

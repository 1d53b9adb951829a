"""One writer per folder: a second writer is refused naming the holder; a dead holder never blocks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nnsdm.cli import main
from nnsdm.errors import NnsdmError
from nnsdm.locking import LockHeld, _acquire_exclusive, hold, holder, lock_name, lock_path

HOLD_SCRIPT = """
import sys, time
from nnsdm.locking import hold
with hold(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holding_process(folder: Path, name: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(folder), name], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    process = _holding_process(tmp_path, "train")
    try:
        with pytest.raises(LockHeld) as exc, hold(tmp_path, "train"):
            pass
        message = str(exc.value)
        assert message.startswith(f"{lock_path(tmp_path, 'train')}: in use by pid {process.pid} on {socket.gethostname()}")
        assert "\n" not in message and isinstance(exc.value, NnsdmError)
    finally:
        process.kill()
        process.wait()


def test_a_killed_holder_is_taken_over(tmp_path):
    process = _holding_process(tmp_path, "predict")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert holder(tmp_path, "predict")["pid"] == process.pid  # its lock file is still there ...
    with hold(tmp_path, "predict") as path:  # ... and does not block
        assert holder(tmp_path, "predict")["pid"] == os.getpid()
    assert not path.exists()


def test_shards_of_one_prediction_hold_their_own_locks(tmp_path):
    names = [lock_name("predict", shard=k, shards=3) for k in range(3)]
    assert names == ["predict-shard-0-of-3", "predict-shard-1-of-3", "predict-shard-2-of-3"]
    with hold(tmp_path, names[0]), hold(tmp_path, names[1]), hold(tmp_path, names[2]):
        with pytest.raises(LockHeld), hold(tmp_path, names[1]):
            pass
    with pytest.raises(NnsdmError, match="shard index"):
        lock_name("predict", shard=3, shards=3)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("who, taken_over", [
    ("dead process on this host", True), ("live process on this host", False), ("process on another host", False),
    ("reused pid", True),
])
def test_without_flock_a_dead_holder_on_this_host_is_taken_over(tmp_path, who, taken_over):
    """The fallback for file systems without flock: decided from the pid, host and process start in the file."""
    info = {"pid": os.getppid(), "host": socket.gethostname(), "started": "earlier", "command": "nnsdm train"}
    if who == "dead process on this host":
        info["pid"] = _dead_pid()
    elif who == "process on another host":
        info["host"] = "elsewhere.example"
    elif who == "reused pid":
        info["process_start"] = "1"  # the live pid was started at another time: not the holder
    path = lock_path(tmp_path, "train")
    path.write_text(json.dumps(info))
    if taken_over:
        os.close(_acquire_exclusive(path, "train"))
    else:
        with pytest.raises(LockHeld, match=f"in use by pid {info['pid']} on {info['host']}"):
            _acquire_exclusive(path, "train")


def test_train_and_predict_refuse_a_second_writer(planned_workspace, trained_model, phantom_dataset, tmp_path, capsys):
    workspace, _ = planned_workspace
    fold = trained_model / "fold_0"
    before = sorted(fold.iterdir())
    with hold(fold, "train"):
        code = main(["train", "--workspace", str(workspace.root), "--fold", "0", "--epochs", "1", "--device", "cpu",
                     "--iterations-per-epoch", "1", "--no-validation"])
        assert code == 1
        err = capsys.readouterr().err
        assert err.startswith(f"nnsdm: error: {lock_path(fold, 'train')}: in use by pid {os.getpid()}")
    assert sorted(fold.iterdir()) == before  # refused before nnU-Net's trainer even opened its log
    out = tmp_path / "out"
    image = phantom_dataset / "imagesTr" / "phantom_000_0000.nii.gz"
    with hold(out, "predict"):
        assert main(["predict", "-i", str(image), "-o", str(out), "--model", str(trained_model), "--device", "cpu"]) == 1
        assert f"{lock_path(out, 'predict')}: in use by pid {os.getpid()}" in capsys.readouterr().err
    assert list(out.iterdir()) == []

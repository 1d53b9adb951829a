"""Operating-system faults and option mistakes: one line naming the path or option, conventional exit codes, nothing half-written."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnsdm.cli import main

PHANTOM = ["--cases", "2", "--shape", "16x48x48", "--spacing", "8x6x6"]


def nnsdm(*args: str, timeout: float = 300, wrap: list[str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed command in a fresh process (as a user would), optionally inside ``wrap``."""
    command = [*(wrap or []), sys.executable, "-m", "nnsdm", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


def message(stderr: str) -> str:
    """The one message line of a run's stderr (progress bars may precede it), checking there is only one."""
    lines = [line for line in stderr.splitlines() if line.startswith("nnsdm: ")]
    assert len(lines) == 1 and "Traceback" not in stderr and stderr.rstrip().endswith(lines[0]), stderr[-3000:]
    return lines[0]


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    err = message(result.stderr)
    assert err.startswith("nnsdm: error: "), err
    for needle in needles:
        assert needle in err, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_size_limit_is_one_line_and_leaves_nothing(tmp_path):
    """``ulimit -f`` (RLIMIT_FSIZE) reached while writing: EFBIG, as a disk quota or a full disk would fail."""
    out = tmp_path / "ds"
    result = nnsdm("phantom", out, *PHANTOM, preexec_fn=_file_size_limit(1024))
    assert_one_line_error(result, "File too large")
    assert not out.exists() and leftovers(tmp_path) == []


def _in_tmpfs(size: str, read_only: bool = False) -> list[str] | None:
    """A command prefix running in a private mount namespace with a tiny tmpfs on /mnt (None where not allowed)."""
    if shutil.which("unshare") is None:
        return None
    ro = " && mount -o remount,ro /mnt" if read_only else ""
    script = f'mount -t tmpfs -o size={size} tmpfs /mnt{ro} && exec "$@"'
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", "true"], capture_output=True, timeout=30)
    return ["unshare", "-rm", "sh", "-c", script, "sh"] if probe.returncode == 0 else None


def test_full_disk_is_one_line_and_leaves_nothing():
    wrap = _in_tmpfs("48k")
    if wrap is None:
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    listing = "import os; print(sorted(os.listdir('/mnt')))"
    result = nnsdm("phantom", "/mnt/ds", *PHANTOM, wrap=wrap)
    assert_one_line_error(result, "No space left on device", "/mnt/")
    # the same namespace trick shows what was left behind on the tmpfs: nothing
    after = subprocess.run([*wrap, "sh", "-c", f'{sys.executable} -m nnsdm phantom /mnt/ds {" ".join(PHANTOM)} 2>/dev/null;'
                            f' {sys.executable} -c "{listing}"'], capture_output=True, text=True, timeout=300)
    assert after.stdout.strip() == "[]"


def test_read_only_folder_is_one_line():
    wrap = _in_tmpfs("1m", read_only=True)
    if wrap is None:
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    result = nnsdm("phantom", "/mnt/ds", *PHANTOM, wrap=wrap)
    assert_one_line_error(result, "/mnt", "Read-only file system")


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_permission_denied_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = nnsdm("phantom", locked / "ds", *PHANTOM)
    assert_one_line_error(result, str(locked), "Permission denied")


def test_outputs_get_the_usual_permissions_not_private_temp_ones(tmp_path):
    from nnsdm.fileio import atomic_dir, write_text

    write_text(tmp_path / "a.json", "{}")
    with atomic_dir(tmp_path / "folder"):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~mask


def test_output_below_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = nnsdm("phantom", tmp_path / "file" / "ds", *PHANTOM)
    assert_one_line_error(result, str(tmp_path / "file"))


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signals_exit_with_conventional_codes_and_one_line(tmp_path, sig, code, word):
    out = tmp_path / "ds"
    process = subprocess.Popen([sys.executable, "-m", "nnsdm", "phantom", out, "--cases", "200", "--shape", "16x48x48"],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(".ds.*")) and time.monotonic() < deadline:  # writing has started
        time.sleep(0.05)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code
    assert message(err).startswith(f"nnsdm: {word}")
    assert not out.exists() and leftovers(tmp_path) == []


# --- options -------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", [["--gpus", "0"], ["--gpus", "-1"], ["--val-iterations", "0"], ["--epochs", "0"],
                                    ["--save-every", "0"], ["--gpus", "two"]])
def test_train_refuses_non_positive_counts(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--workspace", str(tmp_path), *option])
    assert exc.value.code == 2
    assert f"{option[1]!r}" in capsys.readouterr().err


def test_several_gpus_on_the_cpu_is_refused_not_switched_to_cuda(tmp_path, capsys):
    assert main(["train", "--workspace", str(tmp_path), "--gpus", "2", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nnsdm: error: --gpus 2 with --device cpu") and err.count("\n") == 1
    assert not (tmp_path / "nnUNet_results").exists()


def test_predict_folds_that_are_not_folds_is_one_line(trained_model, phantom_dataset, tmp_path, capsys):
    image = phantom_dataset / "imagesTr" / "phantom_000_0000.nii.gz"
    code = main(["predict", "-i", str(image), "-o", str(tmp_path / "out"), "--model", str(trained_model), "--folds", "x"])
    assert code == 1
    err = capsys.readouterr().err
    assert err == "nnsdm: error: --folds x: not a fold (use numbers like 0 1 2 or 'all')\n"


def test_a_short_image_write_on_a_full_disk_never_gets_the_final_name():
    """ITK's NIfTI writer only prints "wrote only 0 of N bytes" on a full disk; the file must not be renamed."""
    wrap = _in_tmpfs("16k")
    if wrap is None:
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    script = ("import os, numpy as np, SimpleITK as sitk\n"
              "from nnsdm.errors import NnsdmError\nfrom nnsdm.fileio import write_image\n"
              "try:\n    write_image(sitk.GetImageFromArray(np.random.rand(40, 64, 64).astype(np.float32)), '/mnt/x.nii.gz')\n"
              "except NnsdmError as exc:\n    print(exc)\nprint(sorted(os.listdir('/mnt')))\n")
    result = subprocess.run([*wrap, sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines() == ["/mnt/x.nii.gz: cannot write image (short write: disk full?)", "[]"], result.stderr


POOL_SCRIPT = """
import argparse, sys
from multiprocessing import Pool
import nnsdm.cli

def square(x):
    return x * x

def command(args):
    with Pool(2) as pool:  # leaving the block terminates the workers with SIGTERM
        print(sum(pool.map(square, range(10))))

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.set_defaults(func=command)
    nnsdm.cli.build_parser = lambda: parser
    sys.exit(nnsdm.cli.main([]))
"""


def test_pool_workers_ended_by_sigterm_stay_quiet(tmp_path):
    """Forked workers inherit the SIGTERM handler; they must die as by default, not print a traceback."""
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "285", "")

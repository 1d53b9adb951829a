"""The command line: version, help on every subcommand, one-line errors, and the dataset commands end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nnsdm import __version__
from nnsdm.cli import build_parser, main


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"nnsdm {__version__}"


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nnsdm {command}") and "--help" in out


def test_the_installed_entry_point_runs_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nnsdm", "check", str(tmp_path / "nope")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"nnsdm: error: {tmp_path / 'nope'}: dataset folder not found"
    assert "Traceback" not in result.stderr


def test_phantom_check_convert_round_trip(tmp_path, capsys):
    flare = tmp_path / "flare"
    assert main(["phantom", str(flare), "--cases", "2", "--seed", "3", "--shape", "16x48x48", "--spacing", "8x6x6",
                 "--naming", "flare21"]) == 0
    assert sorted(p.name for p in (flare / "TrainingImg").iterdir()) == ["train_000_0000.nii.gz", "train_001_0000.nii.gz"]
    raw = tmp_path / "raw"
    assert main(["convert-flare21", str(flare), str(raw)]) == 0
    assert main(["check", str(raw)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{raw}: OK")


def test_check_prints_one_line_per_problem_and_exits_1(tmp_path, capsys):
    raw = tmp_path / "raw"
    assert main(["phantom", str(raw), "--cases", "2", "--shape", "16x48x48", "--spacing", "8x6x6"]) == 0
    (raw / "labelsTr" / "phantom_000.nii.gz").unlink()
    (raw / "imagesTr" / "phantom_001_0000.nii.gz").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["check", str(raw)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert any("phantom_000_0000.nii.gz" in line for line in lines)
    assert any("phantom_001_0000.nii.gz" in line for line in lines)


def test_phantom_refuses_to_overwrite_and_bad_arguments(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert main(["phantom", str(out), "--cases", "1", "--shape", "16x48x48", "--spacing", "8x6x6"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "user data"
    assert main(["phantom", str(tmp_path / "x"), "--cases", "0"]) == 1
    assert not (tmp_path / "x").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["phantom", str(tmp_path / "y"), "--shape", "12x12"])
    assert exc.value.code == 2
    err = capsys.readouterr().err  # one line, no usage block
    assert err.count("\n") == 1 and err.startswith("nnsdm phantom: error: argument --shape") and "nnsdm phantom --help" in err

"""convert_flare21 turns the FLARE21 release layout into a valid nnU-Net raw dataset without touching it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers_images import ct, make_flare21_release, write

from nnsdm.datasets import check_dataset, convert_flare21
from nnsdm.labels import FLARE21_DATASET_LABELS
from nnsdm.errors import NnsdmError


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time (ns) of every file under root."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return make_flare21_release(tmp_path / "FLARE21", n_train=3, n_validation=2, n_test=1)


@pytest.mark.parametrize("mode", ["link", "copy"])
def test_conversion_gives_a_valid_dataset_and_leaves_the_source_alone(release, tmp_path, mode):
    before = snapshot(release)
    out = convert_flare21(release, tmp_path / "raw" / "Dataset021_FLARE21", mode=mode, progress=False)
    assert out == tmp_path / "raw" / "Dataset021_FLARE21"
    assert snapshot(release) == before

    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"train_00{i}_0000.nii.gz" for i in (1, 2, 3)]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"train_00{i}.nii.gz" for i in (1, 2, 3)]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [
        "test_001_0000.nii.gz", "validation_001_0000.nii.gz", "validation_002_0000.nii.gz"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
    assert meta["labels"] == FLARE21_DATASET_LABELS
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz" and meta["name"] == "FLARE21"
    assert check_dataset(out, progress=False) == []

    for name, source in [("imagesTr/train_002_0000.nii.gz", "TrainingImg/train_002_0000.nii.gz"),
                         ("labelsTr/train_002.nii.gz", "TrainingMask/train_002.nii.gz"),
                         ("imagesTs/validation_001_0000.nii.gz", "ValidationImg/validation_001_0000.nii.gz")]:
        placed = out / name
        assert placed.read_bytes() == (release / source).read_bytes()
        if mode == "link":
            target = Path(os.readlink(placed))
            assert target.is_absolute() and target == (release / source).resolve()
        else:
            assert not placed.is_symlink()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_links_point_through_a_linked_source_to_the_real_files(release, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(release)
    out = convert_flare21(alias, tmp_path / "out", progress=False)
    target = Path(os.readlink(out / "imagesTr" / "train_001_0000.nii.gz"))
    assert target == (release / "TrainingImg" / "train_001_0000.nii.gz").resolve()


def test_relative_paths_give_absolute_links(release, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = convert_flare21(Path("FLARE21"), Path("out"), progress=False)
    assert Path(os.readlink(out / "labelsTr" / "train_003.nii.gz")).is_absolute()
    monkeypatch.chdir("/")
    assert check_dataset(tmp_path / "out", progress=False) == []


def test_validation_and_test_folders_are_optional(tmp_path):
    src = make_flare21_release(tmp_path / "src", n_train=2, n_validation=0)
    out = convert_flare21(src, tmp_path / "out", progress=False)
    assert not (out / "imagesTs").exists()
    assert check_dataset(out, progress=False) == []


def test_existing_output_needs_overwrite(release, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(NnsdmError, match="not empty"):
        convert_flare21(release, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    convert_flare21(release, out, mode="copy", overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and check_dataset(out, progress=False) == []


def test_missing_training_images_folder_is_named(tmp_path):
    (tmp_path / "src" / "imagesTr").mkdir(parents=True)
    with pytest.raises(NnsdmError, match="TrainingImg") as err:
        convert_flare21(tmp_path / "src", tmp_path / "out", progress=False)
    assert str(err.value).startswith(f"{tmp_path / 'src'}: ")
    assert not (tmp_path / "out").exists()


def test_image_without_mask_is_named(release, tmp_path):
    (release / "TrainingMask" / "train_002.nii.gz").unlink()
    with pytest.raises(NnsdmError) as err:
        convert_flare21(release, tmp_path / "out", progress=False)
    assert str(err.value).startswith(str(release / "TrainingImg" / "train_002_0000.nii.gz"))
    assert "no mask" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_mask_without_image_is_named(release, tmp_path):
    write(release / "TrainingMask" / "train_009.nii.gz", np.zeros((8, 16, 16), np.uint8))
    with pytest.raises(NnsdmError, match="mask without image") as err:
        convert_flare21(release, tmp_path / "out", progress=False)
    assert str(err.value).startswith(str(release / "TrainingMask" / "train_009.nii.gz"))


def test_misnamed_image_is_named(release, tmp_path):
    bad = write(release / "TrainingImg" / "train_004.nii.gz", ct())
    with pytest.raises(NnsdmError, match="unexpected file name") as err:
        convert_flare21(release, tmp_path / "out", progress=False)
    assert str(err.value).startswith(str(bad))


def test_output_must_not_replace_the_source(release):
    before = snapshot(release)
    for out in (release, release.parent):
        with pytest.raises(NnsdmError, match="must not be the source"):
            convert_flare21(release, out, overwrite=True, progress=False)
    assert snapshot(release) == before


def test_bad_mode(release, tmp_path):
    with pytest.raises(NnsdmError, match="mode 'move'"):
        convert_flare21(release, tmp_path / "out", mode="move", progress=False)


def test_failure_midway_leaves_no_output(release, tmp_path, monkeypatch):
    """An interrupted conversion leaves neither a half-filled output nor a temporary folder."""
    import shutil

    calls = []

    def failing_copy(src, dst, *args, **kwargs):
        calls.append(src)
        if len(calls) == 3:
            raise OSError("disk full")
        return shutil.copyfile(src, dst)

    monkeypatch.setattr("nnsdm.datasets.flare21.shutil.copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        convert_flare21(release, tmp_path / "out", mode="copy", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FLARE21"]


def test_link_mode_copies_where_links_are_refused(release, tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError("operation not permitted")

    monkeypatch.setattr("nnsdm.datasets.flare21.os.symlink", no_links)
    out = convert_flare21(release, tmp_path / "out", mode="link", progress=False)
    placed = out / "labelsTr" / "train_001.nii.gz"
    assert not placed.is_symlink()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(placed))).max() == 4
    assert check_dataset(out, progress=False) == []

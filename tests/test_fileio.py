"""Atomic output and image reading: results appear complete or not at all; bad files are one-line errors."""

from __future__ import annotations

import locale

import numpy as np
import pytest
import SimpleITK as sitk

from nnsdm.errors import NnsdmError
from nnsdm.fileio import as_array, atomic_dir, atomic_path, quiet_itk, read_image, write_image, write_text


def test_atomic_path_renames_a_finished_file_and_keeps_the_suffix(tmp_path):
    final = tmp_path / "sub" / "image.nii.gz"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.endswith(".tmp.nii.gz") and not final.exists()
        tmp.write_bytes(b"done")
    assert final.read_bytes() == b"done"
    assert [p.name for p in final.parent.iterdir()] == ["image.nii.gz"]


def test_atomic_path_leaves_nothing_and_keeps_the_old_file_on_an_exception(tmp_path):
    final = tmp_path / "table.csv"
    final.write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new.csv") as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_atomic_dir_refuses_a_non_empty_folder_unless_told_and_leaves_nothing_on_an_exception(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("a")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with pytest.raises(NnsdmError, match="out: output folder exists and is not empty"):
        with atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("b")
            raise RuntimeError("interrupted")
    assert [p.name for p in out.iterdir()] == ["a.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert [p.name for p in out.iterdir()] == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_and_read_text_and_images(tmp_path):
    write_text(tmp_path / "note.txt", "héllo")
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "héllo"
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    write_image(image, tmp_path / "image.nii.gz")
    read = read_image(tmp_path / "image.nii.gz")
    np.testing.assert_array_equal(as_array(read), array)
    assert read.GetSpacing() == pytest.approx((0.8, 0.8, 2.5))


def test_missing_and_unreadable_images_are_one_line_errors(tmp_path):
    with pytest.raises(NnsdmError, match="nope.nii.gz: file not found"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    with pytest.raises(NnsdmError, match=r"junk.nii.gz: unreadable image \(") as error:
        read_image(tmp_path / "junk.nii.gz")
    assert "\n" not in str(error.value)


def test_quiet_itk_restores_warnings_and_locale():
    before = (sitk.ProcessObject.GetGlobalWarningDisplay(), locale.setlocale(locale.LC_ALL))
    with quiet_itk():
        assert not sitk.ProcessObject.GetGlobalWarningDisplay()
        locale.setlocale(locale.LC_ALL, "C")
    assert (sitk.ProcessObject.GetGlobalWarningDisplay(), locale.setlocale(locale.LC_ALL)) == before

"""Atomic output: everything nnsdm writes appears complete or not at all.

Outputs are written to a hidden temporary name beside the final path and renamed when complete, so an
interrupted run never leaves a half-written file, and an existing file is only replaced by a finished one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nnsdm.errors import NnsdmError


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary file path beside ``final``; rename it to ``final`` if the block succeeds.

    ``suffix`` defaults to the final name's full suffix (``.nii.gz`` stays ``.nii.gz``) so that writers
    that choose a format by extension (SimpleITK, matplotlib) keep working.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; move it to ``final`` if the block succeeds.

    Refuses an existing non-empty ``final`` unless ``overwrite``.
    """
    final = Path(final)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise NnsdmError(f"{final}: output folder exists and is not empty (choose another or remove it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_image(image, path: str | os.PathLike, *, compress: bool = True) -> None:
    """Write a SimpleITK image atomically (``.nii.gz`` compressed by default)."""
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)


def read_image(path: str | os.PathLike):
    """Read a SimpleITK image, turning any reader failure into a one-line ``NnsdmError``."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise NnsdmError(f"{path}: file not found")
    try:
        return sitk.ReadImage(str(path))
    except Exception as exc:  # SimpleITK raises RuntimeError with a multi-line message
        first = str(exc).strip().splitlines()
        reason = next((line for line in first if "rror" in line or "annot" in line), first[-1] if first else "")
        raise NnsdmError(f"{path}: unreadable image ({reason.strip()[:200]})") from None


class quiet_itk:
    """Hide ITK's warnings (GDCM prints one for every folder that holds no series) and keep the locale.

    GDCM's series scan resets the process locale to "C", after which Python's default text encoding is
    ASCII for everything that runs later in the process; the locale is restored on exit.
    """

    def __enter__(self):
        import locale

        import SimpleITK as sitk

        self._old = sitk.ProcessObject.GetGlobalWarningDisplay()
        self._locale = locale.setlocale(locale.LC_ALL)
        sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def __exit__(self, *exc):
        import locale

        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(self._old)
        locale.setlocale(locale.LC_ALL, self._locale)
        return False


def as_array(image) -> np.ndarray:
    """Voxel array of a SimpleITK image in (z, y, x) order."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)

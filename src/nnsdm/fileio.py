"""Atomic output: everything nnsdm writes appears complete or not at all.

Outputs are written to a hidden temporary name beside the final path and renamed when complete, so an
interrupted run never leaves a half-written file, and an existing file is only replaced by a finished one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from nnsdm.errors import NnsdmError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _name_final(exc: OSError, tmp: Path, final: Path) -> None:
    """Make an operating-system error name the final path the user asked for, not the hidden temporary one."""
    if exc.errno is None:  # not from the operating system (e.g. OSError("message")): its message says it all
        return
    name = "" if exc.filename is None else str(exc.filename)
    if not name:
        exc.filename = str(final)
    elif name == str(tmp) or name.startswith(f"{tmp}{os.sep}"):
        exc.filename = str(final) + name[len(str(tmp)):]


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
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{suffix}", dir=final.parent)
    except OSError as exc:  # it names a random temporary name: name the folder instead
        exc.filename = str(final.parent)
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide shared outputs from the user's group
        os.replace(tmp, final)
    except OSError as exc:
        _name_final(exc, tmp, final)
        raise
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
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:  # it names a random temporary name: name the folder instead
        exc.filename = str(final.parent)
        raise
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide shared outputs from the user's group
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        _name_final(exc, tmp, final)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike, finals: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """Remove what interrupted writers left in ``folder``: :func:`atomic_path`/:func:`atomic_dir` temporaries
    (``.NAME.*.tmp*``) and checkpoint temporaries (``*.pth.tmp``); with ``finals``, only those of these
    final paths. Returns what was removed.

    Only for outputs whose lock the caller holds (:mod:`nnsdm.locking`): a running writer's temporary
    would look the same.
    """
    folder = Path(folder)
    if finals is None:
        stale = [p for p in folder.glob(".*.tmp*") if ".tmp" in p.name[1:]] + list(folder.glob("*.pth.tmp"))
    else:
        stems = {Path(f).stem for f in finals}
        stale = [p for p in folder.glob(".*.tmp*") if ".tmp" in p.name[1:] and p.name[1:].rsplit(".tmp", 1)[0].rsplit(".", 1)[0] in stems]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_image(image, path: str | os.PathLike, *, compress: bool = True) -> None:
    """Write a SimpleITK image atomically (``.nii.gz`` compressed by default)."""
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as exc:  # ITK reports a failed write as a multi-line RuntimeError
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = next((line for line in reversed(lines) if "rror" in line or "annot" in line), lines[-1] if lines else "")
            raise NnsdmError(f"{path}: cannot write image ({reason[:200]})") from None
        if not _nifti_complete(tmp):  # ITK's NIfTI writer only prints a full disk's short write
            raise NnsdmError(f"{path}: cannot write image (short write: disk full?)")


def _nifti_complete(path: Path) -> bool:
    """Whether a NIfTI-1 file written here holds all the voxel bytes its header announces (other files: True)."""
    import gzip
    import struct

    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return True
    try:
        with (gzip.open if name.endswith(".gz") else open)(path, "rb") as f:
            head = f.read(348)
        order = "<" if struct.unpack("<i", head[:4])[0] == 348 else ">"
        dims = struct.unpack(order + "8h", head[40:56])
        bitpix, offset = struct.unpack(order + "h", head[72:74])[0], struct.unpack(order + "f", head[108:112])[0]
        expected = int(offset) + int(np.prod([max(1, d) for d in dims[1:dims[0] + 1]])) * bitpix // 8
        with open(path, "rb") as f:
            if name.endswith(".gz"):
                f.seek(-4, 2)
                return int.from_bytes(f.read(4), "little") == expected % 2**32
            return os.fstat(f.fileno()).st_size >= expected
    except (OSError, EOFError, struct.error, ValueError):
        return False


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

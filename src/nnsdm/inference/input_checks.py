"""Checks that an input to ``nnsdm predict`` is a CT volume the model can segment, from headers only.

A model trained on CT learns Hounsfield units on a regular 3D grid. Inputs that break this are refused
with one line saying which rule they break, before any voxel is decompressed, rather than segmented
into a plausible-looking but wrong label map:

* geometry: voxel spacing zero, negative or not finite (ITK silently reads such a NIfTI header as 1 mm),
  a direction matrix that is not a rotation, more voxels than :data:`MAX_VOXELS`;
* DICOM series: Modality other than CT; no Rescale Slope/Intercept or a rescale type other than
  Hounsfield units (the stored values are then not HU); slices with different orientations or pixel
  spacings; two slices at one position; missing slices or uneven slice spacing (the reader would
  stack them as if evenly spaced); gantry tilt (slices sheared along the table, which the reader does
  not undo): resample such series to a regular, untilted grid first;
* voxel values: NaN or infinity in a floating-point NIfTI (SimpleITK reads NaN as 0), checked by
  :func:`nnsdm.datasets.check.non_finite_voxels` once the case is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnsdm.errors import NnsdmError

#: Largest volume accepted (about 4 GiB as float32, a 512x512x4096 CT); larger headers are broken or not CT.
MAX_VOXELS = 2**30
#: Slice steps may differ from their median by this fraction (scanner rounding), no more.
SLICE_STEP_TOLERANCE = 0.05
#: Largest angle between the slice normal and the step from slice to slice (degrees) that is not a tilt.
MAX_TILT_DEGREES = 0.5
_HU_RESCALE_TYPES = ("", "HU", "US")  # US: "unspecified", which CT scanners write for HU


def check_geometry(size: Sequence[int], spacing: Sequence[float], direction: Sequence[float], where: Path) -> None:
    """Refuse a grid nnU-Net cannot resample correctly (sizes and spacings in x, y, z order)."""
    voxels = math.prod(int(s) for s in size)
    if voxels > MAX_VOXELS:
        raise NnsdmError(f"{where}: {'x'.join(map(str, size))} = {voxels:,} voxels, more than the {MAX_VOXELS:,} "
                         "a CT volume has (broken header?)")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise NnsdmError(f"{where}: voxel spacing {_fmt(spacing)} mm is not positive and finite")
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-3):
        raise NnsdmError(f"{where}: direction matrix {_fmt(direction)} is not a rotation (axes not orthonormal)")


def nifti_pixdim(path: Path) -> tuple[float, float, float] | None:
    """The spacing a NIfTI-1/2 header stores (pixdim[1:4]), read from its raw bytes; ``None`` if not NIfTI.

    Read directly because both ITK and nibabel replace 0 (nibabel only 0, ITK also NaN) by 1 on reading.
    Only the header is decompressed.
    """
    import gzip
    import struct

    try:
        with (gzip.open if Path(path).name.lower().endswith(".gz") else open)(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError):
        return None
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            return struct.unpack(order + "3f", head[80:92])
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            return struct.unpack(order + "3d", head[112:136])
    return None


def check_nifti_header(path: Path) -> None:
    """Refuse a NIfTI whose stored spacing is 0 or not finite (ITK would silently use 1 mm)."""
    pixdim = nifti_pixdim(path)
    if pixdim is not None and not all(math.isfinite(p) and p != 0 for p in pixdim):
        raise NnsdmError(f"{path}: voxel spacing (NIfTI pixdim) {_fmt(pixdim)} is not positive and finite; "
                         "ITK would assume 1 mm")


def unread_dicom_files(folder: Path, series: Sequence[str]) -> list[Path]:
    """Files in ``folder`` that look like DICOM (``.dcm``, or the ``DICM`` marker) but are not in ``series``.

    GDCM's series scan silently skips a file it cannot parse, so a damaged slice would otherwise vanish
    from the volume (unnoticed when it is the first or the last).
    """
    taken = {Path(f).name for f in series}
    dropped = []
    for path in sorted(Path(folder).iterdir()):
        if path.name in taken or path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() == ".dcm":
            dropped.append(path)
            continue
        try:
            with open(path, "rb") as f:
                f.seek(128)
                if f.read(4) == b"DICM":
                    dropped.append(path)
        except OSError:
            continue
    return dropped


def _tag(reader, key: str) -> str | None:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None


def _numbers(text: str | None, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in (text or "").split("\\")])
    except ValueError:
        return None
    return values if values.size == count and np.all(np.isfinite(values)) else None


def _slice_headers(files: Sequence[str], where: Path) -> list[dict]:
    import SimpleITK as sitk

    headers = []
    reader = sitk.ImageFileReader()
    for name in files:
        reader.SetFileName(str(name))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise NnsdmError(f"{name}: unreadable DICOM header") from None
        headers.append({key: _tag(reader, tag) for key, tag in (
            ("modality", "0008|0060"), ("intercept", "0028|1052"), ("slope", "0028|1053"), ("rescale_type", "0028|1054"),
            ("position", "0020|0032"), ("orientation", "0020|0037"), ("pixel_spacing", "0028|0030"),
            ("rows", "0028|0010"), ("columns", "0028|0011"))} | {"file": name})
    return headers


def _check_ct(first: dict, where: Path) -> None:
    modality = (first["modality"] or "").upper()
    if modality != "CT":
        raise NnsdmError(f"{where}: DICOM Modality is {modality or 'missing'}, not CT; nnsdm models segment CT scans")
    slope, intercept = _numbers(first["slope"], 1), _numbers(first["intercept"], 1)
    if slope is None or intercept is None or slope[0] == 0:
        raise NnsdmError(f"{where}: no Hounsfield rescale (Rescale Slope/Intercept missing or invalid): "
                         "the stored values are not HU")
    if (first["rescale_type"] or "").upper() not in _HU_RESCALE_TYPES:
        raise NnsdmError(f"{where}: rescale type {first['rescale_type']}, not Hounsfield units (HU)")


def check_dicom_series(files: Sequence[str], where: Path) -> None:
    """Refuse a DICOM series that is not CT in HU on a regular, untilted grid (see the module docstring)."""
    headers = _slice_headers(files, where)
    first = headers[0]
    _check_ct(first, where)
    rows, columns = _numbers(first["rows"], 1), _numbers(first["columns"], 1)
    if rows is not None and columns is not None and rows[0] * columns[0] * len(files) > MAX_VOXELS:
        raise NnsdmError(f"{where}: {len(files)} slices of {int(rows[0])}x{int(columns[0])}, more voxels than a CT volume has")
    if len(headers) < 2:
        return  # one multi-frame file: the reader checks its frames' geometry itself
    orientations = {h["orientation"] for h in headers}
    spacings = {h["pixel_spacing"] for h in headers}
    if len(orientations) > 1 or len(spacings) > 1:
        what = "orientations" if len(orientations) > 1 else "pixel spacings"
        raise NnsdmError(f"{where}: slices with different {what}; not one volume")
    orientation = _numbers(first["orientation"], 6)
    spacing = _numbers(first["pixel_spacing"], 2)
    positions = [_numbers(h["position"], 3) for h in headers]
    if orientation is None or spacing is None or any(p is None for p in positions):
        raise NnsdmError(f"{where}: slice position, orientation or pixel spacing missing; cannot build a 3D grid")
    if not np.all(spacing > 0):
        raise NnsdmError(f"{where}: pixel spacing {_fmt(spacing)} mm is not positive")
    _check_slice_steps(np.array(positions), orientation, where)


def _check_slice_steps(positions: np.ndarray, orientation: np.ndarray, where: Path) -> None:
    normal = np.cross(orientation[:3], orientation[3:])
    if not np.isclose(np.linalg.norm(normal), 1, atol=1e-3):
        raise NnsdmError(f"{where}: image orientation {_fmt(orientation)} is not two orthonormal directions")
    along = positions @ normal
    order = np.argsort(along)
    steps = np.diff(along[order])
    if np.any(steps <= 1e-3):
        raise NnsdmError(f"{where}: two slices at the same position ({along[order][np.argmin(steps)]:.2f} mm along the normal)")
    median = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - median)))
    if abs(steps[worst] - median) > SLICE_STEP_TOLERANCE * median:
        missing = round(steps[worst] / median) - 1
        hint = f"{missing} slice(s) missing?" if missing >= 1 and np.isclose(steps[worst], (missing + 1) * median, rtol=0.05) \
            else "uneven slice spacing"
        raise NnsdmError(f"{where}: slice step {steps[worst]:.2f} mm between {along[order][worst]:.2f} and "
                         f"{along[order][worst + 1]:.2f} mm, others {median:.2f} mm ({hint}); the series is not one regular volume")
    offsets = np.diff(positions[order], axis=0)
    cosine = np.clip(np.abs(offsets @ normal) / np.linalg.norm(offsets, axis=1), 0, 1)
    tilt = float(np.degrees(np.arccos(cosine.min())))
    if tilt > MAX_TILT_DEGREES:
        raise NnsdmError(f"{where}: gantry tilt of {tilt:.1f} degrees (slices sheared along the table); "
                         "resample the series to an untilted grid first")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"

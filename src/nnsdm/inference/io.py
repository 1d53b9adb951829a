"""Inputs and outputs of ``nnsdm predict``: finding cases, reading CT volumes, orientation, writing results.

An input is a NIfTI file, a folder of NIfTI files (nnU-Net ``CASE_0000`` naming or plain names; only
channel 0 is read, the models have one CT input channel), a DICOM series folder, or a folder of DICOM
series folders. Every case is checked before any prediction starts (headers only), so a bad file
stops the run before hours of work rather than after.

Orientation: nnU-Net does not reorient images; it assumes the test images are stored like the
training images. nnsdm reorients each input to the model's training orientation (a DICOM orientation
code such as ``LPS``, see :func:`nnsdm.inference.predict.training_orientation`) with a pure axis
permutation and flip, predicts, and maps the result back, so an image stored in another axis order
(a DICOM series versus a NIfTI export, say) gets the same anatomy and the output keeps the input's grid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnsdm.errors import NnsdmError
from nnsdm.fileio import quiet_itk as _quiet_itk
from nnsdm.fileio import read_image
from nnsdm.orientation import orientation_code

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One image to segment: ``name`` names its outputs (``name.nii.gz``)."""

    name: str
    kind: str  # "nifti" or "dicom"
    path: Path  # the NIfTI file or the DICOM series folder
    files: tuple[str, ...] = ()  # the series' slice files (DICOM only)


def _nifti_stem(path: Path) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _nifti_case(path: Path) -> Case | None:
    """The case of a NIfTI file: ``X_0000.nii.gz`` -> ``X``; ``None`` for other channels (``X_0001``)."""
    stem = _nifti_stem(path)
    if stem is None:
        return None
    match = _CHANNEL.match(stem)
    if match:
        if int(match["channel"]) != 0:
            return None
        stem = match["case"]
    return Case(stem, "nifti", path)


def dicom_series(folder: Path) -> dict[str, tuple[str, ...]]:
    """The DICOM series directly in ``folder``: series instance UID -> slice files (sorted by position)."""
    with _quiet_itk():
        try:
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        except RuntimeError:
            return {}
        return {uid: tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}


def _dicom_case(folder: Path, name: str) -> Case | None:
    series = dicom_series(folder)
    if not series:
        return None
    if len(series) > 1:
        found = ", ".join(f"{uid or '(empty UID)'} ({len(files)} files)" for uid, files in series.items())
        raise NnsdmError(f"{folder}: holds {len(series)} DICOM series ({found}); put each series in its own folder")
    (files,) = series.values()
    return Case(name, "dicom", folder, files)


def find_cases(input: Path) -> list[Case]:
    """The cases of an input file or folder (see the module docstring), sorted by name.

    Raises ``NnsdmError`` naming the input when it is missing, empty or holds nothing readable, or when
    two inputs would write the same output.
    """
    input = Path(input)
    if not input.exists():
        raise NnsdmError(f"{input}: input not found")
    if input.is_file():
        stem = _nifti_stem(input)
        if stem is None:
            raise NnsdmError(f"{input}: not a NIfTI file (.nii or .nii.gz) nor a DICOM series folder")
        case = _nifti_case(input)
        if case is None:
            raise NnsdmError(f"{input}: channel {stem[-4:]} of a case; give its CT image ({stem[:-5]}_0000{input.name[len(stem):]})")
        return [case]
    if not input.is_dir():
        raise NnsdmError(f"{input}: neither a file nor a folder")
    entries = sorted(input.iterdir())
    niftis = [c for p in entries if p.is_file() and not p.name.startswith(".") and (c := _nifti_case(p)) is not None]
    if niftis:
        cases = niftis
    else:
        single = _dicom_case(input, Path(os.path.abspath(input)).name)
        if single is not None:
            return [single]
        cases = [c for p in entries if p.is_dir() and not p.name.startswith(".") and (c := _dicom_case(p, p.name))]
    if not cases:
        what = "is empty" if not entries else "holds no NIfTI file (.nii, .nii.gz) and no DICOM series"
        raise NnsdmError(f"{input}: input folder {what}")
    names: dict[str, Path] = {}
    for case in cases:
        if case.name in names:
            raise NnsdmError(f"{case.path}: same case name {case.name!r} as {names[case.name]}")
        names[case.name] = case.path
    return sorted(cases, key=lambda c: c.name)


def _check_volume(size: Sequence[int], components: int, where: Path) -> None:
    dims = len(size)
    shape = "x".join(str(s) for s in size)
    if dims != 3:
        raise NnsdmError(f"{where}: not a 3D image ({dims}D, size {shape})")
    if components != 1:
        raise NnsdmError(f"{where}: {components} values per voxel; expected a single-channel CT image")
    if min(size) < 2:
        raise NnsdmError(f"{where}: a single slice (size {shape}); expected a 3D volume")


def check_case(case: Case) -> None:
    """Check a case's header (3D, one channel, readable, NIfTI complete) without decoding its voxels."""
    first = case.path if case.kind == "nifti" else Path(case.files[0])
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(first))
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError:
        read_image(first)  # raises the one-line error
        raise NnsdmError(f"{first}: unreadable image header") from None
    size = reader.GetSize()
    if case.kind == "dicom" and len(case.files) > 1:  # one file per slice (else one multi-frame file)
        size = (*size[:2], len(case.files))
    _check_volume(size, reader.GetNumberOfComponents(), case.path)
    if case.kind == "nifti":
        from nnsdm.datasets.check import incomplete_voxel_data

        problem = incomplete_voxel_data(case.path, reader)
        if problem:
            raise NnsdmError(f"{case.path}: {problem}")


def read_case(case: Case) -> sitk.Image:
    """The case's 3D image as SimpleITK reads it (DICOM: the whole series, slices sorted by position)."""
    if case.kind == "nifti":
        image = read_image(case.path)
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(list(case.files))
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise NnsdmError(f"{case.path}: unreadable DICOM series ({(lines[-1] if lines else '')[:200]})") from None
    _check_volume(image.GetSize(), image.GetNumberOfComponentsPerPixel(), case.path)
    return image


# --- orientation -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reorientation:
    """A pure axis permutation and flip of a (z, y, x) grid, as SimpleITK's ``DICOMOrient`` does it."""

    axes: tuple[int, int, int]  # numpy transpose order, (z, y, x) axes
    flips: tuple[int, ...]  # numpy axes flipped after the transpose

    @property
    def identity(self) -> bool:
        return self.axes == (0, 1, 2) and not self.flips

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Map an array on the reoriented grid (with optional leading channel axes) back to the input grid."""
        lead = array.ndim - 3
        if self.flips:
            array = np.flip(array, tuple(lead + a for a in self.flips))
        inverse = np.argsort(self.axes)
        return np.ascontiguousarray(array.transpose(*range(lead), *(lead + int(a) for a in inverse)))


def reorient(image: sitk.Image, code: str | None) -> tuple[sitk.Image, Reorientation]:
    """The image permuted and flipped to orientation ``code`` (``None``: unchanged), and how to undo it."""
    if code is None or orientation_code(image) == code:
        return image, Reorientation((0, 1, 2), ())
    orienter = sitk.DICOMOrientImageFilter()
    orienter.SetDesiredCoordinateOrientation(code)
    out = orienter.Execute(image)
    order, flips = orienter.GetPermuteOrder(), orienter.GetFlipAxes()  # in SimpleITK's (x, y, z) order
    axes = tuple(2 - int(order[2 - j]) for j in range(3))
    return out, Reorientation(axes, tuple(2 - i for i in range(3) if flips[i]))


def nnunet_properties(image: sitk.Image) -> dict:
    """The properties dict nnU-Net's SimpleITKIO makes for a 3D image (spacing in (z, y, x) order)."""
    return {
        "sitk_stuff": {"spacing": image.GetSpacing(), "origin": image.GetOrigin(), "direction": image.GetDirection()},
        "spacing": [abs(float(s)) for s in reversed(image.GetSpacing())],
    }


# --- outputs -----------------------------------------------------------------------------------------

def label_image(labels: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 label image (uint16 beyond 255 labels) with exactly the reference's size, spacing, origin and direction."""
    labels = np.asarray(labels)
    dtype = np.uint8 if labels.size == 0 or int(labels.max()) < 256 else np.uint16
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=dtype))
    image.CopyInformation(reference)
    return image


def channels_image(channels: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A 4D float32 image, one 3D volume per channel on the reference's grid.

    SimpleITK reads it back as an array of shape ``(channels, z, y, x)``; the first three axes carry the
    reference's spacing, origin and direction (the fourth: spacing 1, origin 0).
    """
    volumes = []
    for volume in np.asarray(channels, dtype=np.float32):
        image = sitk.GetImageFromArray(np.ascontiguousarray(volume))
        image.CopyInformation(reference)
        volumes.append(image)
    return sitk.JoinSeries(volumes)

"""DICOM Segmentation objects for DICOM inputs, written with highdicom, that viewers show on the source series.

One binary segment per organ found in the case, numbered 1, 2, ... in label order; an organ the model
did not find gets no segment (a segment without any pixel is meaningless to a viewer, and DICOM
numbers segments without gaps), and a case without any organ gets no SEG at all. Each segment carries
its SNOMED CT code from pydicom's code dictionary (label name ``liver`` -> ``codes.SCT.Liver``),
category "Anatomical Structure", and the algorithm identification (nnsdm, its version, the model's
folds).

Geometry: the SEG is on the source grid, one frame per source slice and organ where the organ is
present, each frame referencing its source image (SOP instance UID) and carrying that image's own
position and orientation; the source images are listed in the series' own order (Instance Number).
Patient, study and frame of reference are those of the source, so PACS, OHIF and 3D Slicer file the
SEG in the source's study and overlay it on the source series.

A source series without Study, Series or SOP Instance UIDs (de-identified by blanking them) cannot be
referenced; such a series is refused by :func:`check_seg_source` before any prediction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnsdm.errors import NnsdmError
from nnsdm.fileio import atomic_path

SEG_SUFFIX = "_seg.dcm"
SEG_SERIES_NUMBER = 9000  # series number of the SEG series (viewers list it after the source series)
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")
_HEADER_TAGS = [*_REQUIRED_UIDS, "InstanceNumber", "NumberOfFrames", "ImagePositionPatient", "Rows", "Columns"]


def snomed_code(name: str):
    """The SNOMED CT code of an organ name from pydicom's code dictionary (``"liver"`` -> Liver, 10200004).

    Words become the dictionary's keyword (``"inferior vena cava"`` -> ``InferiorVenaCava``); a plural falls back to
    the singular (``"kidneys"`` -> Kidney).

    Raises ``NnsdmError`` for a name the dictionary does not know.
    """
    from pydicom.sr.codedict import codes

    keyword = "".join(part.capitalize() for part in str(name).replace("_", " ").replace("-", " ").split())
    for candidate in (keyword, keyword[:-1] if keyword.endswith("s") else keyword):  # "kidneys": Kidney
        try:
            return getattr(codes.SCT, candidate)
        except AttributeError:
            pass
    raise NnsdmError(f"label {name!r}: no SNOMED CT concept named {keyword!r} in pydicom's code dictionary; "
                     "rename the label in the model's dataset.json to write a DICOM SEG")


def check_seg_source(files: Sequence[str | os.PathLike], label_names: Mapping[int, str]) -> None:
    """Check that a DICOM series can be referenced by a SEG and every label has a SNOMED CT code.

    Reads headers only; raises ``NnsdmError`` naming the first file without a needed UID, a multi-frame
    file, or the label without a code.
    """
    import pydicom

    for name in label_names.values():
        snomed_code(name)
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        missing = [tag for tag in _REQUIRED_UIDS if not str(header.get(tag, "") or "").strip()]
        if missing:
            raise NnsdmError(f"{path}: no {', '.join(missing)} (a de-identified series without UIDs); "
                             "a DICOM SEG cannot reference it")
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise NnsdmError(f"{path}: a multi-frame image; DICOM SEG output supports series of single-frame slices")


def read_source_headers(files: Sequence[str | os.PathLike]) -> list:
    """The source slices' headers (no pixel data), in the given order."""
    import pydicom

    return [pydicom.dcmread(path, stop_before_pixels=True) for path in files]


def _segment_descriptions(present: Sequence[tuple[int, str]], folds: Sequence[int | str]):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from nnsdm import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name="nnsdm", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters={"folds": ",".join(str(f) for f in folds)})
    return [hd.seg.SegmentDescription(
        segment_number=number, segment_label=name, segmented_property_category=codes.cid7150.AnatomicalStructure,
        segmented_property_type=snomed_code(name), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_id=f"nnsdm label {label} ({name})", tracking_uid=hd.UID())
        for number, (label, name) in enumerate(present, start=1)]


def _check_grid(labels: np.ndarray, image: sitk.Image, headers: Sequence) -> None:
    """The label array must be the image's array, and the image's slices the given files in order."""
    expected = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    if labels.shape != tuple(reversed(image.GetSize())) or labels.shape != expected:
        raise NnsdmError(f"label array {labels.shape} does not match the series ({'x'.join(map(str, expected))} "
                         "slices x rows x columns)")
    for index, header in enumerate(headers):
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        if not np.allclose(position, [float(v) for v in header.ImagePositionPatient], atol=1e-3):
            raise NnsdmError(f"{header.filename}: slice {index} of the image is not this file (position "
                             f"{tuple(round(p, 3) for p in position)})")


def dicom_seg(labels: np.ndarray, image: sitk.Image, files: Sequence[str | os.PathLike],
              label_names: Mapping[int, str], *, folds: Sequence[int | str] = ()):
    """A highdicom ``Segmentation`` of ``labels`` (on ``image``'s grid, read from ``files`` in that order).

    ``label_names``: label value -> organ name (the model's dataset.json without background). Returns
    ``None`` when no labelled organ is present.
    """
    import highdicom as hd

    from nnsdm import __version__

    labels = np.asarray(labels)
    headers = read_source_headers(files)
    _check_grid(labels, image, headers)
    present = [(label, name) for label, name in sorted(label_names.items()) if np.any(labels == label)]
    if not present:
        return None
    order = sorted(range(len(headers)), key=lambda i: (int(headers[i].get("InstanceNumber") or 0), i))
    mask = np.stack([labels[order] == label for label, _ in present], axis=-1).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=[headers[i] for i in order], pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(present, folds),
        series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="nnsdm", manufacturer_model_name="nnsdm", software_versions=__version__,
        device_serial_number="none", content_label="NNSDM",
        content_description=f"nnsdm automatic organ segmentation (folds {','.join(str(f) for f in folds)})",
        series_description="nnsdm organ segmentation")


def write_dicom_seg(labels: np.ndarray, image: sitk.Image, files: Sequence[str | os.PathLike], path: Path,
                    label_names: Mapping[int, str], *, folds: Sequence[int | str] = ()) -> bool:
    """Write :func:`dicom_seg` to ``path`` atomically; ``False`` (nothing written) when no organ is present."""
    seg = dicom_seg(labels, image, files, label_names, folds=folds)
    if seg is None:
        return False
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return True

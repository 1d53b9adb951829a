"""DICOM SEG output: written with highdicom, read back with highdicom and pydicom, checked against the labels.

The real series (../shared/data/real-ct/dicom-series, with its pseudo-labels) has blank UIDs; it is
refused as it is and used through a copy with UIDs filled in. Phantom series written here cover slices
stored against the instance order, slices stepping against the normal, and coronal and sagittal
orientations; their organs are defined in patient millimetres, so each SEG frame is checked against the
organ shapes at the frame's own position, independently of how nnsdm orders the slices.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers_dicom import (check_seg_against_labels, copy_real_series_with_uids, phantom_image, physical_points,
                           seg_volume_on_grid, write_ct_series)
from pydicom.sr.codedict import codes

from nnsdm import __version__
from nnsdm.errors import NnsdmError
from nnsdm.inference.dicom_seg import check_seg_source, write_dicom_seg
from nnsdm.inference.io import find_cases, read_case
from nnsdm.labels import FLARE21_LABELS

NAMES = FLARE21_LABELS  # the model's dataset.json labels in these tests
# phantom organs: (label, centre offset from the volume centre in LPS mm, radii in mm); no kidney
ORGANS = [(1, (-8.0, -4.0, 6.0), (10.3, 8.1, 9.2)), (3, (11.0, 6.0, -7.0), (5.3, 6.2, 7.1)), (4, (2.0, 9.0, 0.0), (4.1, 3.3, 5.2))]


def phantom_labels(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    labels = np.zeros(points.shape[:-1], dtype=np.uint8)
    for label, offset, radii in ORGANS:
        inside = (((points - centre - np.asarray(offset)) / np.asarray(radii)) ** 2).sum(-1) <= 1
        labels[inside & (labels == 0)] = label
    return labels


def frames_in_patient_space(ds: pydicom.Dataset, centre: np.ndarray) -> None:
    """Every SEG frame equals the phantom organ evaluated at that frame's own pixel positions."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        ipp = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        points = ipp + (c * col_spacing)[..., None] * iop[:3] + (r * row_spacing)[..., None] * iop[3:]
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        label = {s.SegmentNumber: s.SegmentLabel for s in ds.SegmentSequence}[number]
        expected = phantom_labels(points, centre) == {v: k for k, v in NAMES.items()}[label]
        np.testing.assert_array_equal(frame > 0, expected)


def test_real_series_with_blank_uids_is_refused(real_ct):
    files = sorted((real_ct / "dicom-series").iterdir())
    with pytest.raises(NnsdmError, match=r"dicom-series/CT\.[0-9.]+: no StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID"):
        check_seg_source(files, NAMES)


def test_real_series_seg_matches_labels(real_ct, tmp_path):
    copy_real_series_with_uids(real_ct / "dicom-series", tmp_path / "series")
    (case,) = find_cases(tmp_path / "series")
    check_seg_source(case.files, NAMES)
    image = read_case(case)
    label_image = sitk.ReadImage(str(real_ct / "dicom-series-labels" / "tsex_dicom.nii.gz"))
    assert label_image.GetSize() == image.GetSize()
    np.testing.assert_allclose(label_image.GetOrigin(), image.GetOrigin(), atol=1e-3)
    labels = sitk.GetArrayFromImage(label_image)
    out = tmp_path / "out" / "tsex_seg.dcm"
    assert write_dicom_seg(labels, image, case.files, out, NAMES, folds=[0, 1])
    ds = check_seg_against_labels(out, case.files, labels, NAMES)
    assert len(ds.SegmentSequence) == 3  # no kidney in this field of view: no kidney segment
    # highdicom's own geometry of the SEG puts every organ voxel where the label map has it
    volume = seg_volume_on_grid(out, image)
    for number, label in enumerate((1, 3, 4)):
        np.testing.assert_array_equal(volume[..., number], labels == label)
    for segment, name in zip(ds.SegmentSequence, ("Liver", "Spleen", "Pancreas")):
        code = segment.SegmentedPropertyTypeCodeSequence[0]
        expected = getattr(codes.SCT, name)
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (expected.value, "SCT", name)
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodeMeaning) == ("91723000", "Anatomical Structure")
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("nnsdm", __version__)
        assert algorithm.AlgorithmParameters == "folds=0,1"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
    # the real series is listed head to feet by instance number, the reverse of its z order
    assert int(pydicom.dcmread(case.files[0], stop_before_pixels=True).InstanceNumber) == 286


@pytest.mark.parametrize("orientation, reverse_instances, flip_slices", [
    ("axial", True, False), ("axial", False, True), ("coronal", False, False), ("sagittal", True, True)])
def test_phantom_series_seg_in_patient_space(tmp_path, orientation, reverse_instances, flip_slices):
    image = phantom_image(orientation, flip_slices=flip_slices)
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    hu = np.where(phantom_labels(physical_points(image), centre) > 0, 60, -100).astype(np.int16)
    written = sitk.GetImageFromArray(hu)
    written.CopyInformation(image)
    write_ct_series(written, tmp_path / "series", reverse_instances=reverse_instances)

    (case,) = find_cases(tmp_path / "series")
    read = read_case(case)
    labels = phantom_labels(physical_points(read), centre)  # on the grid as nnsdm reads the series
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read) == 60, labels > 0)
    out = tmp_path / "seg.dcm"
    assert write_dicom_seg(labels, read, case.files, out, NAMES, folds=["all"])
    ds = check_seg_against_labels(out, case.files, labels, NAMES)
    frames_in_patient_space(ds, centre)
    volume = seg_volume_on_grid(out, read)
    for number, label in enumerate(label for label in NAMES if np.any(labels == label)):
        np.testing.assert_array_equal(volume[..., number], labels == label)


def test_no_organ_writes_no_seg(tmp_path):
    image = phantom_image("axial")
    write_ct_series(image, tmp_path / "series")
    (case,) = find_cases(tmp_path / "series")
    read = read_case(case)
    labels = np.zeros(tuple(reversed(read.GetSize())), dtype=np.uint8)
    assert not write_dicom_seg(labels, read, case.files, tmp_path / "seg.dcm", NAMES)
    assert not (tmp_path / "seg.dcm").exists()


def test_label_without_snomed_code_is_refused(tmp_path):
    files = write_ct_series(phantom_image("axial", shape=(3, 4, 4)), tmp_path / "series")
    with pytest.raises(NnsdmError, match="label 'blob': no SNOMED CT concept named 'Blob'"):
        check_seg_source(files, {1: "liver", 2: "blob"})


def test_snomed_codes_come_from_pydicom():
    from nnsdm.inference.dicom_seg import snomed_code

    assert snomed_code("liver") == codes.SCT.Liver and snomed_code("Liver").value == "10200004"
    assert snomed_code("kidneys") == codes.SCT.Kidney
    assert snomed_code("inferior_vena_cava") == codes.SCT.InferiorVenaCava

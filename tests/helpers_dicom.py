"""DICOM CT series for tests, written with pydicom from scratch (uncompressed, one slice per file).

A copy of a real series with identifiers filled in, phantom series in any orientation, and series with
exactly the (possibly wrong) tags an input-check test asks for: slice order in the files, instance
numbering and orientation are exactly what a test asks for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SLICE = 24  # pixels per side of the phantom series


def _new_ct_slice():
    """An empty CT image dataset with file meta information and a fresh SOP instance UID."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    return ds


def write_series(folder: Path, *, slices: int = 8, step: float = 2.5, positions=None, modality: str = "CT",
                 rescale: bool = True, rescale_type: str | None = None, orientation=(1, 0, 0, 0, 1, 0),
                 pixel_spacing=(1.5, 1.5)) -> Path:
    """A CT-like DICOM series written with pydicom, one file per slice, with exactly the tags asked for."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    positions = positions if positions is not None else [(0.0, 0.0, k * step) for k in range(slices)]
    rng = np.random.default_rng(0)
    for k, position in enumerate(positions):
        ds = _new_ct_slice()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, study
        ds.Modality, ds.PatientID, ds.InstanceNumber = modality, "phantom", k + 1
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = step
        ds.Rows = ds.Columns = SLICE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if rescale:
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        if rescale_type is not None:
            ds.RescaleType = rescale_type
        ds.PixelData = rng.integers(0, 2000, (SLICE, SLICE), dtype=np.int16).tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)
    return folder


PATIENT = {"PatientName": "Test^Patient", "PatientID": "NNSDM-TEST-001", "PatientBirthDate": "19600101",
           "PatientSex": "O", "AccessionNumber": "ACC123", "StudyID": "S42"}

# (row direction, column direction) of the slices: the direction cosines of the image's x and y axes (LPS)
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
}


def copy_real_series_with_uids(source: Path, out: Path) -> list[Path]:
    """Copy a real series whose UIDs are blank, filling Study/Series/SOP UIDs and patient identifiers.

    Pixel data stays as stored (compressed); SOP Instance UIDs are the files' media storage UIDs.
    """
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    written = []
    for path in sorted(Path(source).iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study, series, 3
        for key, value in PATIENT.items():
            setattr(ds, key, value)
        ds.save_as(out / path.name, enforce_file_format=True)
        written.append(out / path.name)
    return written


def phantom_image(orientation: str, *, shape=(10, 24, 20), spacing=(4.0, 3.0, 2.5), flip_slices: bool = False):
    """An int16 CT image (z, y, x array) with a slice orientation from :data:`ORIENTATIONS`.

    ``flip_slices`` steps the slices against the slice normal (row x column direction).
    """
    row, col = (np.asarray(v, dtype=float) for v in ORIENTATIONS[orientation])
    normal = np.cross(row, col) * (-1 if flip_slices else 1)
    image = sitk.Image([int(s) for s in reversed(shape)], sitk.sitkInt16)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    image.SetDirection(tuple(np.stack([row, col, normal], axis=1).ravel()))
    image.SetOrigin((-30.0, -40.0, 20.0))
    return image


def physical_points(image: sitk.Image) -> np.ndarray:
    """Physical (LPS mm) coordinates of every voxel centre, shape (z, y, x, 3)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float) * np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return index @ direction.T + np.asarray(image.GetOrigin())


def write_ct_series(image: sitk.Image, out: Path, *, reverse_instances: bool = False) -> list[Path]:
    """Write a 3D int16 image as a CT series, one file per slice (z index order), with fresh UIDs.

    Instance numbers follow the z index, or run against it with ``reverse_instances``.
    """
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sx, sy, _ = image.GetSpacing()
    paths = []
    for k in range(array.shape[0]):
        ds = _new_ct_slice()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        for key, value in PATIENT.items():
            setattr(ds, key, value)
        ds.Modality, ds.SeriesNumber, ds.StudyDate, ds.StudyTime = "CT", 2, "20260101", "120000"
        ds.ReferringPhysicianName, ds.Manufacturer, ds.PositionReferenceIndicator = "", "phantom", ""
        ds.InstanceNumber = array.shape[0] - k if reverse_instances else k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing, ds.SliceThickness = [f"{sy:g}", f"{sx:g}"], f"{image.GetSpacing()[2]:g}"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.PixelData = np.ascontiguousarray(array[k]).tobytes()
        path = out / f"slice_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def check_seg_against_labels(path: Path, files, labels: np.ndarray, names: dict[int, str]):
    """Read the SEG back with pydicom and highdicom and check it against the source series ``files``.

    Per segment, the mask of each source slice equals ``labels`` (z index i <-> files[i]); segments are
    the organs present; referenced instances are exactly the source slices in instance-number order;
    study, frame of reference and patient identifiers are the source's. Returns the pydicom dataset.
    """
    import highdicom as hd
    import pydicom

    ds, seg = pydicom.dcmread(path), hd.seg.segread(path)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uids = [h.SOPInstanceUID for h in headers]
    present = [label for label in names if np.any(labels == label)]
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [names[label] for label in present]
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=list(range(1, len(present) + 1)))
    assert masks.shape == (*labels.shape, len(present))
    for number, label in enumerate(present):
        np.testing.assert_array_equal(masks[..., number] > 0, labels == label, err_msg=names[label])
    # the referenced instances are exactly the source slices, listed in instance number order
    referenced = [item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    by_instance = [h.SOPInstanceUID for h in sorted(headers, key=lambda h: int(h.InstanceNumber))]
    assert referenced == by_instance
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
    for key in ("StudyInstanceUID", "FrameOfReferenceUID", *PATIENT):
        assert str(ds[key].value) == str(headers[0][key].value), key
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    return ds


def seg_volume_on_grid(path: Path, image: sitk.Image) -> np.ndarray:
    """The SEG as highdicom's own volume, moved onto ``image``'s (z, y, x) grid through both affines.

    Returns a boolean array (z, y, x, segments); fails unless the SEG's grid is the image's grid up to a
    permutation and flip of the axes.
    """
    import highdicom as hd

    volume = hd.seg.segread(path).get_volume(combine_segments=False)
    steps = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    to_patient = np.eye(4)
    to_patient[:3, :3], to_patient[:3, 3] = steps[:, ::-1], image.GetOrigin()  # (k, j, i) index -> LPS
    seg_to_image = np.linalg.inv(to_patient) @ np.asarray(volume.affine)
    matrix, offset = np.round(seg_to_image[:3, :3]).astype(int), np.round(seg_to_image[:3, 3]).astype(int)
    assert np.allclose(seg_to_image[:3], np.c_[matrix, offset], atol=1e-3), seg_to_image
    axes = np.argmax(np.abs(matrix), axis=1)  # image axis a is the SEG volume's axis axes[a]
    signs = matrix[np.arange(3), axes]
    array = np.transpose(volume.array > 0, (*axes, 3))
    start = offset.copy()
    for a in range(3):
        if signs[a] < 0:
            array, start[a] = np.flip(array, a), offset[a] - array.shape[a] + 1
    shape = tuple(reversed(image.GetSize()))
    assert np.all(start >= 0) and np.all(start + array.shape[:3] <= shape), (start, array.shape, shape)
    out = np.zeros((*shape, array.shape[-1]), dtype=bool)
    out[start[0]:start[0] + array.shape[0], start[1]:start[1] + array.shape[1], start[2]:start[2] + array.shape[2]] = array
    return out

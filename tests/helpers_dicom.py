"""Phantom DICOM series written with pydicom, with exactly the tags a test asks for."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SLICE = 24  # pixels per side of the phantom series


def write_series(folder: Path, *, slices: int = 8, step: float = 2.5, positions=None, modality: str = "CT",
                 rescale: bool = True, rescale_type: str | None = None, orientation=(1, 0, 0, 0, 1, 0),
                 pixel_spacing=(1.5, 1.5)) -> Path:
    """A CT-like DICOM series written with pydicom, one file per slice, with exactly the tags asked for."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    positions = positions if positions is not None else [(0.0, 0.0, k * step) for k in range(slices)]
    rng = np.random.default_rng(0)
    for k, position in enumerate(positions):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
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

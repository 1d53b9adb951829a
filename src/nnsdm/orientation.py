"""Orientation of 3D images: DICOM orientation codes and the majority orientation of a set of files.

A model records the orientation of most of its training images (``nnsdm.json``); ``nnsdm predict``
reorients inputs stored otherwise to it (:func:`nnsdm.inference.io.reorient`) and maps the result back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from nnsdm.fileio import quiet_itk


def orientation_code(image_or_direction) -> str:
    """DICOM orientation code (``LPS``, ``RAS``, ...) of a SimpleITK image or its direction cosines."""
    direction = image_or_direction.GetDirection() if hasattr(image_or_direction, "GetDirection") else image_or_direction
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(float(d) for d in direction))


def majority_orientation(files: Sequence[Path]) -> str | None:
    """The most common orientation code of 3D image files (headers only); ``None`` if none is readable.

    Used for a model's training orientation (its ground-truth files); ``nnsdm.json`` may record it.
    """
    from collections import Counter

    codes: Counter = Counter()
    reader = sitk.ImageFileReader()
    for path in files:
        reader.SetFileName(str(path))
        try:
            with quiet_itk():
                reader.ReadImageInformation()
        except RuntimeError:
            continue
        if reader.GetDimension() == 3:
            codes[orientation_code(reader.GetDirection())] += 1
    return codes.most_common(1)[0][0] if codes else None

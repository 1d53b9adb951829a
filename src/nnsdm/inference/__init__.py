"""Inference on real inputs (``nnsdm predict``): NIfTI or DICOM in, label maps on the input's grid out.

* :func:`predict` segments a file or folder with a trained model folder (nnU-Net's sliding window,
  mirroring and fold ensemble), optionally with signed distance maps, probabilities and post-processing,
  and records time and memory per case in ``efficiency.csv``;
* :func:`determine_postprocessing` decides per label, from the cross-validation, whether keeping the
  largest component helps (``predict(postprocess="cv")`` uses it);
* :func:`flare21_memory` is the FLARE21 GPU-memory statistic.
"""

from nnsdm.inference.cv_postprocessing import determine_postprocessing, load_postprocessing
from nnsdm.inference.efficiency import flare21_memory
from nnsdm.inference.io import find_cases
from nnsdm.inference.predict import load_model, predict
from nnsdm.labels import keep_counts

__all__ = ["predict", "determine_postprocessing", "load_postprocessing", "keep_counts", "flare21_memory",
           "find_cases", "load_model"]

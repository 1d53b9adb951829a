"""Dataset tools: validate an nnU-Net v2 raw dataset, convert the FLARE21 release layout."""

from nnsdm.datasets.check import Problem, check_dataset
from nnsdm.datasets.flare21 import convert_flare21

__all__ = ["Problem", "check_dataset", "convert_flare21"]

"""nnsdm: signed-distance-map multi-task training for nnU-Net v2 (FLARE21 "nnUNet with Signed Distance Map")."""

import os
import sys

__version__ = "0.1.0"

# Training on a CPU runs torch's OpenMP threads beside nnU-Net's augmentation workers. Under OpenMP's
# passive wait policy a thread waiting at a barrier sleeps and leaves its core to a worker instead of
# spinning on it, so an fp32 training step can use every core (nnsdm.device.cpu_training_threads). The
# OpenMP runtime reads the policy once, when torch loads it, so it is set here, before nnsdm imports torch;
# a policy the user set is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
OMP_PASSIVE_WAIT = "torch" not in sys.modules and os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"

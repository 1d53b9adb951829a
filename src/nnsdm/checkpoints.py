"""Reading nnU-Net checkpoints with one-line errors (shared by training, export and inference)."""

from __future__ import annotations

from pathlib import Path

import torch

from nnsdm.errors import NnsdmError

FINAL_CHECKPOINT = "checkpoint_final.pth"
TRAINING_KEYS = frozenset({"optimizer_state", "current_epoch", "logging"})


def read_checkpoint(path: Path, *, device: torch.device | str = "cpu", for_training: bool = False) -> dict:
    """Load an nnU-Net checkpoint; a missing, corrupt or foreign file becomes a one-line ``NnsdmError``.

    ``for_training`` also requires what ``--continue`` needs (optimiser state, epoch, logs).
    """
    path = Path(path)
    if not path.is_file():
        raise NnsdmError(f"{path}: checkpoint not found (fold not trained or training not finished)")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # truncated zip, pickle errors, ...
        raise NnsdmError(f"{path}: corrupt checkpoint ({type(exc).__name__})") from None
    required = {"network_weights"} | (TRAINING_KEYS if for_training else set())
    if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
        raise NnsdmError(f"{path}: not an nnU-Net checkpoint (no {', '.join(sorted(required))})")
    return checkpoint

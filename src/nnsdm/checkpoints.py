"""Reading nnU-Net checkpoints safely, with one-line errors (the one reader for training, export, inference, report).

A checkpoint is a pickle, and unpickling may call any Python function it names: a model folder from
elsewhere could run code on the machine that loads it. Every checkpoint is therefore read with
``torch.load(weights_only=True)``, which only rebuilds tensors, plain containers and the globals allowed
below: exactly what nnU-Net 2.8.1's ``save_checkpoint`` writes besides tensors (``torch.device`` in
``init_args`` is allowed by torch itself) and numpy's numeric scalars, which its logger keeps (losses,
Dice per epoch, ``_best_ema``). Anything else is refused before it is built.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from nnsdm.errors import NnsdmError

FINAL_CHECKPOINT = "checkpoint_final.pth"
TRAINING_KEYS = frozenset({"optimizer_state", "current_epoch", "logging"})

_NUMERIC_DTYPES = tuple(
    getattr(np.dtypes, f"{kind}DType")
    for kind in ("Bool", "Float16", "Float32", "Float64", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16",
                 "UInt32", "UInt64")
)
#: The only globals a checkpoint may name besides torch's own defaults: numpy scalars of numeric dtypes
#: (numpy 1.x wrote the scalar constructor as ``numpy.core.multiarray.scalar``).
CHECKPOINT_GLOBALS = [
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    *_NUMERIC_DTYPES,
]
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>|unrecognized function <?([\w. ]+)")


def _refusal(exc: Exception) -> str:
    """The object a refused checkpoint tried to build, from torch's multi-paragraph message."""
    match = _GLOBAL.search(str(exc))
    what = next(g for g in match.groups() if g) if match else None
    if what:
        return f"refused: it holds a pickled object that is not model data ({what})"
    return f"corrupt, or pickled objects that are not model data ({str(exc).strip().splitlines()[-1][:120]})"


def _damaged_member(path: Path) -> str | None:
    """Why the checkpoint's zip archive is damaged, or None. torch does not verify the CRC-32 of the
    tensors it reads, so a flipped byte would silently load as a different weight; this reads every
    member once (about 1 s per GB)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return None  # not a zip (a legacy torch.save file, or garbage): torch.load gives the reason
    except (OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zipfile.LargeZipFile) as exc:
        return f"damaged archive: {type(exc).__name__}"
    return f"checksum mismatch in {bad}" if bad else None


def read_checkpoint(path: Path, *, device: torch.device | str = "cpu", for_training: bool = False) -> dict:
    """Load an nnU-Net checkpoint; a missing, corrupt, foreign or unsafe file becomes a one-line ``NnsdmError``.

    ``for_training`` also requires what ``--continue`` needs (optimiser state, epoch, logs).
    """
    path = Path(path)
    if not path.is_file():
        raise NnsdmError(f"{path}: checkpoint not found (fold not trained or training not finished)")
    damaged = _damaged_member(path)
    if damaged:
        raise NnsdmError(f"{path}: corrupt checkpoint ({damaged})")
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except OSError as exc:
        raise NnsdmError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    except Exception as exc:  # truncated zip, pickle errors, objects outside the allow-list
        if type(exc).__name__ == "UnpicklingError" and "Weights only load failed" in str(exc):
            raise NnsdmError(f"{path}: {_refusal(exc)}") from None
        raise NnsdmError(f"{path}: corrupt checkpoint ({type(exc).__name__})") from None
    required = {"network_weights"} | (TRAINING_KEYS if for_training else set())
    if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
        raise NnsdmError(f"{path}: not an nnU-Net checkpoint (no {', '.join(sorted(required))})")
    if not isinstance(checkpoint["network_weights"], dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint["network_weights"].items()):
        raise NnsdmError(f"{path}: not an nnU-Net checkpoint (network_weights is not a state dict)")
    return checkpoint

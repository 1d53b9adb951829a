"""A training budget that fits a time limit: epochs chosen from this machine's measured training step.

``nnsdm demo`` promises to finish within minutes on a 2-core CPU, and CPUs of that kind differ several-fold
in speed (with or without native bfloat16, AVX512 or only AVX2). So before training, the demo times the
real training step (its network, precision, thread count, loss and optimiser) on a synthetic batch, and
trains for as many epochs as fit the time limit, between a floor whose accuracy was checked and the
demo's full budget. The step is timed without augmentation workers running: on 2 cores the trainer's one
torch thread and the worker each have a core (:func:`nnsdm.training.cpu_training_threads`), so the
worker's augmentation and SDM targets, which take less time than the step, do not lengthen an iteration.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

__all__ = ["Budget", "synthetic_batch", "measure_step_seconds", "choose_epochs"]

EPOCH_OVERHEAD_S = 2.0  # per epoch: checkpoint, progress plots, logging


@dataclass(frozen=True)
class Budget:
    """What the budget was chosen from, as written to the demo's ``summary.json``."""

    epochs: int
    step_seconds: float
    estimated_epoch_seconds: float
    estimated_training_seconds: float
    time_limit_seconds: float
    min_epochs: int
    max_epochs: int

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def synthetic_batch(trainer) -> dict:
    """A batch shaped like the trainer's (image, then one segmentation and one SDM target per output scale)."""
    patch = list(trainer.configuration_manager.patch_size)
    data = torch.randn(trainer.batch_size, trainer.num_input_channels, *patch)
    with torch.no_grad():
        outputs = trainer.network(data)
    seg = [torch.zeros(o.shape[0], 1, *o.shape[2:]) for o in outputs]
    weights = getattr(trainer.loss, "ds_weights", None)
    sdm = [torch.zeros(s.shape) if w else torch.zeros(0) for s, w in zip(getattr(outputs, "sdm", []), weights or [])]
    return {"data": data, "target": seg + sdm}


def measure_step_seconds(trainer, *, repeats: int = 3) -> float:
    """Median seconds of ``repeats`` training steps (after one warm-up) of an initialised trainer on a synthetic batch.

    The network's weights and the optimiser state change, so use a trainer built for this measurement.
    """
    batch = synthetic_batch(trainer)
    trainer.network.train()
    trainer.train_step(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - t0)
    return float(sorted(times)[len(times) // 2])


def choose_epochs(step_seconds: float, *, iterations: int, val_iterations: int, time_limit_s: float,
                  min_epochs: int, max_epochs: int) -> Budget:
    """The most epochs whose estimated training time fits ``time_limit_s``, within ``[min_epochs, max_epochs]``.

    An epoch is estimated as ``iterations`` steps, ``val_iterations`` forward passes (a third of a step
    each) and :data:`EPOCH_OVERHEAD_S`.
    """
    epoch_s = iterations * step_seconds + val_iterations * step_seconds / 3 + EPOCH_OVERHEAD_S
    fitting = math.floor(time_limit_s / epoch_s)
    epochs = int(min(max_epochs, max(min_epochs, fitting)))
    return Budget(epochs=epochs, step_seconds=step_seconds, estimated_epoch_seconds=epoch_s,
                  estimated_training_seconds=epochs * epoch_s, time_limit_seconds=float(time_limit_s),
                  min_epochs=min_epochs, max_epochs=max_epochs)

"""FLARE21 evaluation: the metrics (:mod:`nnsdm.evaluation.metrics`) and the evaluate job (:mod:`nnsdm.evaluation.jobs`).

``from nnsdm.evaluation import dice, normalized_surface_dice, evaluate_folder`` and the rest of the
public API (each submodule's ``__all__``) are re-exported here.
"""

from nnsdm.evaluation import jobs, metrics
from nnsdm.evaluation.jobs import *  # noqa: F401,F403
from nnsdm.evaluation.metrics import *  # noqa: F401,F403

__all__ = [*metrics.__all__, *jobs.__all__]

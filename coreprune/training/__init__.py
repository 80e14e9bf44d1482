"""Training utilities: ``fit`` (SGD + Nesterov, cosine/step schedule, CUDA AMP when
available), ``evaluate`` and ``set_seed``."""

from .metrics import evaluate
from .schedules import SCHEDULES, lr_factor
from .seeding import set_seed
from .trainer import TrainHistory, fit

__all__ = ["SCHEDULES", "TrainHistory", "evaluate", "fit", "lr_factor", "set_seed"]

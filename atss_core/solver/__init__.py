"""Optimizer and learning-rate schedule (``SOLVER.*`` of the config)."""
from .build import make_lr_scheduler, make_optimizer, param_hyperparameters
from .lr_scheduler import WarmupMultiStepLR, warmup_multistep_factor

__all__ = [
    "make_lr_scheduler",
    "make_optimizer",
    "param_hyperparameters",
    "WarmupMultiStepLR",
    "warmup_multistep_factor",
]

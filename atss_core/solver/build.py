"""Optimizer and learning-rate schedule from the config (``SOLVER.*``)."""
import logging

import torch

from .lr_scheduler import WarmupMultiStepLR

logger = logging.getLogger(__name__)

# Parameters whose name contains this are the offset convolutions of deformable
# convolutions (DCNv2); they train with SOLVER.DCONV_OFFSETS_LR_FACTOR.
DCONV_OFFSET_KEY = ".offset."


def _is_bias(name):
    return name.rsplit(".", 1)[-1] == "bias"


def param_hyperparameters(cfg, name):
    """``(lr, weight_decay)`` of the trainable parameter called ``name``.

    Weights get ``BASE_LR`` and ``WEIGHT_DECAY``; biases get
    ``BASE_LR * BIAS_LR_FACTOR`` and ``WEIGHT_DECAY_BIAS``; deformable-conv offset
    layers (names containing ``.offset.``) further multiply their lr by
    ``DCONV_OFFSETS_LR_FACTOR``.
    """
    solver = cfg.SOLVER
    lr = solver.BASE_LR
    weight_decay = solver.WEIGHT_DECAY
    if _is_bias(name):
        lr = solver.BASE_LR * solver.BIAS_LR_FACTOR
        weight_decay = solver.WEIGHT_DECAY_BIAS
    if DCONV_OFFSET_KEY in name:
        lr *= solver.DCONV_OFFSETS_LR_FACTOR
    return lr, weight_decay


def make_optimizer(cfg, model):
    """SGD with momentum ``SOLVER.MOMENTUM`` over the trainable parameters of
    ``model`` (those with ``requires_grad``; frozen ones are left out).

    Each parameter gets the lr / weight decay of :func:`param_hyperparameters`,
    as in the reference. Parameters that share them share one param group (the
    update is the same as with one group per parameter, with fewer kernel
    launches). Group 0 holds the plain weights, so its lr is ``BASE_LR`` times the
    schedule; every group has a ``"name"`` entry for logging.
    """
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, weight_decay = param_hyperparameters(cfg, name)
        kind = "bias" if _is_bias(name) else "weight"
        if DCONV_OFFSET_KEY in name:
            kind = "offset_" + kind
        if kind not in groups:
            groups[kind] = {"name": kind, "params": [], "lr": lr, "weight_decay": weight_decay}
        groups[kind]["params"].append(param)
    if not groups:
        raise ValueError(
            "the model has no trainable parameters (all have requires_grad=False); check "
            "MODEL.BACKBONE.FREEZE_CONV_BODY_AT"
        )
    order = {"weight": 0, "bias": 1, "offset_weight": 2, "offset_bias": 3}
    param_groups = sorted(groups.values(), key=lambda g: order[g["name"]])
    for group in param_groups:
        logger.info(
            "optimizer group %s: %d tensors, lr %g, weight decay %g",
            group["name"], len(group["params"]), group["lr"], group["weight_decay"],
        )
    return torch.optim.SGD(param_groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


def make_lr_scheduler(cfg, optimizer):
    """:class:`WarmupMultiStepLR` with ``SOLVER.STEPS``, ``GAMMA`` and the warmup
    settings; step it once per iteration."""
    solver = cfg.SOLVER
    return WarmupMultiStepLR(
        optimizer,
        solver.STEPS,
        solver.GAMMA,
        warmup_factor=solver.WARMUP_FACTOR,
        warmup_iters=solver.WARMUP_ITERS,
        warmup_method=solver.WARMUP_METHOD,
    )

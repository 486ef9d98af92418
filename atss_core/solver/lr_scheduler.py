"""Learning-rate schedule of the reference: warmup, then step decay.

The schedule is indexed by iterations, not epochs: call ``scheduler.step()``
once per training iteration, after ``optimizer.step()``. The learning rate of
iteration ``i`` (1-based, as in the log lines) is ``lr_at(i - 1)``.
"""
import bisect

import torch

WARMUP_METHODS = ("constant", "linear")


def warmup_multistep_factor(step, milestones, gamma, warmup_factor, warmup_iters, warmup_method):
    """Multiplier of the base learning rate after ``step`` scheduler steps.

    ``gamma ** (number of milestones <= step)`` times a warmup factor that, for
    ``step < warmup_iters``, is ``warmup_factor`` ("constant") or
    ``warmup_factor * (1 - alpha) + alpha`` with ``alpha = step / warmup_iters``
    ("linear"), and 1 afterwards.
    """
    factor = 1.0
    if step < warmup_iters:
        if warmup_method == "constant":
            factor = warmup_factor
        else:
            alpha = step / warmup_iters
            factor = warmup_factor * (1.0 - alpha) + alpha
    return factor * gamma ** bisect.bisect_right(milestones, step)


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """Step decay by ``gamma`` at each of ``milestones`` (iterations), after a
    warmup of ``warmup_iters`` iterations.

    Every param group keeps its own base learning rate (its ``initial_lr``), so
    the bias / deformable-offset factors of :func:`atss_core.solver.make_optimizer`
    hold throughout.

    The state (what checkpoints store) is only the position in the schedule,
    ``last_epoch``; the schedule itself (base learning rates, milestones, warmup)
    is the one this scheduler was built with, i.e. the current config, so a
    resumed run can extend or change it.
    """

    def __init__(self, optimizer, milestones, gamma=0.1, warmup_factor=1.0 / 3,
                 warmup_iters=500, warmup_method="linear", last_epoch=-1):
        milestones = list(milestones)
        if milestones != sorted(milestones):
            raise ValueError(f"milestones (SOLVER.STEPS) must be increasing, got {tuple(milestones)}")
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(
                f"warmup_method (SOLVER.WARMUP_METHOD) must be 'constant' or 'linear', got {warmup_method!r}"
            )
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters (SOLVER.WARMUP_ITERS) must be >= 0, got {warmup_iters}")
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def factor(self, step):
        """Multiplier of the base learning rates after ``step`` scheduler steps."""
        return warmup_multistep_factor(
            step, self.milestones, self.gamma, self.warmup_factor, self.warmup_iters, self.warmup_method
        )

    def get_lr(self):
        factor = self.factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def state_dict(self):
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict):
        """Move to ``state_dict["last_epoch"]`` and set the param groups' learning
        rates to this schedule's values there."""
        self.last_epoch = int(state_dict["last_epoch"])
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

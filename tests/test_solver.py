"""Optimizer parameter groups and the warmup / multi-step learning-rate schedule."""
import math
import os

import pytest
import torch
from torch import nn

from atss_core.config import cfg as default_cfg
from atss_core.solver import WarmupMultiStepLR, make_lr_scheduler, make_optimizer, warmup_multistep_factor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.offset = nn.Conv2d(4, 18, 3)  # named like a deformable conv's offset layer
        self.norm = nn.GroupNorm(2, 18)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.head = _Head()
        for p in self.stem.parameters():
            p.requires_grad_(False)


def _cfg(**solver):
    cfg = default_cfg.clone()
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def _groups_by_param(optimizer):
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def test_param_groups_follow_the_reference_rules():
    cfg = _cfg(BASE_LR=0.01, BIAS_LR_FACTOR=2.0, WEIGHT_DECAY=1e-4, WEIGHT_DECAY_BIAS=0.0,
               DCONV_OFFSETS_LR_FACTOR=0.1, MOMENTUM=0.9)
    model = _Net()
    optimizer = make_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD)
    by_param = _groups_by_param(optimizer)
    expected = {
        "head.conv.weight": (0.01, 1e-4),
        "head.conv.bias": (0.02, 0.0),
        "head.norm.weight": (0.01, 1e-4),
        "head.norm.bias": (0.02, 0.0),
        "head.offset.weight": (0.001, 1e-4),
        "head.offset.bias": (0.002, 0.0),
    }
    names = dict(model.named_parameters())
    assert set(by_param) == {id(names[n]) for n in expected}, "frozen stem must be left out"
    for name, (lr, wd) in expected.items():
        group = by_param[id(names[name])]
        assert group["lr"] == pytest.approx(lr), name
        assert group["weight_decay"] == pytest.approx(wd), name
        assert group["momentum"] == 0.9
    assert optimizer.param_groups[0]["name"] == "weight"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_grouped_update_equals_one_group_per_parameter():
    cfg = _cfg(BASE_LR=0.05, BIAS_LR_FACTOR=2.0, WEIGHT_DECAY=1e-3, WEIGHT_DECAY_BIAS=1e-2,
               DCONV_OFFSETS_LR_FACTOR=0.5, MOMENTUM=0.9)
    torch.manual_seed(0)
    ours = _Net()
    reference = _Net()
    reference.load_state_dict(ours.state_dict())
    opt = make_optimizer(cfg, ours)
    # One group per parameter, as the reference builds them.
    per_param = []
    for name, p in reference.named_parameters():
        if not p.requires_grad:
            continue
        lr, wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
        if name.endswith("bias"):
            lr, wd = cfg.SOLVER.BASE_LR * cfg.SOLVER.BIAS_LR_FACTOR, cfg.SOLVER.WEIGHT_DECAY_BIAS
        if ".offset." in name:
            lr *= cfg.SOLVER.DCONV_OFFSETS_LR_FACTOR
        per_param.append({"params": [p], "lr": lr, "weight_decay": wd})
    ref_opt = torch.optim.SGD(per_param, lr, momentum=cfg.SOLVER.MOMENTUM)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        for model, optimizer in ((ours, opt), (reference, ref_opt)):
            out = model.head.norm(model.head.offset(model.head.conv(model.stem(x))))
            optimizer.zero_grad()
            out.square().mean().backward()
            optimizer.step()
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)


def test_no_trainable_parameters_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(default_cfg, model)


def _lrs(scheduler, optimizer, iterations):
    """lr used at each 1-based training iteration (scheduler stepped after each)."""
    wanted = set(iterations)
    out = {}
    for it in range(1, max(iterations) + 1):
        if it in wanted:
            out[it] = [g["lr"] for g in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
    return out


def _sgd(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_constant_warmup():
    optimizer = _sgd(0.1)
    scheduler = WarmupMultiStepLR(optimizer, (10,), gamma=0.1, warmup_factor=0.25, warmup_iters=4,
                                  warmup_method="constant")
    lrs = _lrs(scheduler, optimizer, [1, 4, 5, 10, 11, 12])
    assert [lrs[i][0] for i in (1, 4, 5, 10, 11, 12)] == pytest.approx(
        [0.025, 0.025, 0.1, 0.1, 0.01, 0.01]
    )


def test_linear_warmup_formula():
    optimizer = _sgd(1.0)
    warmup_factor, warmup_iters = 1.0 / 3, 500
    scheduler = WarmupMultiStepLR(optimizer, (1000,), warmup_factor=warmup_factor,
                                  warmup_iters=warmup_iters, warmup_method="linear")
    lrs = _lrs(scheduler, optimizer, [1, 2, 251, 500, 501, 502])
    for it in (1, 2, 251, 500):
        alpha = (it - 1) / warmup_iters
        assert lrs[it][0] == pytest.approx(warmup_factor * (1 - alpha) + alpha), it
    assert lrs[1][0] == pytest.approx(1.0 / 3)
    assert lrs[251][0] == pytest.approx(1.0 / 3 * 0.5 + 0.5)
    assert lrs[501][0] == lrs[502][0] == pytest.approx(1.0)


def test_milestones_decay_from_the_step_after_each_milestone():
    for step in range(0, 40):
        assert warmup_multistep_factor(step, [10, 20, 30], 0.5, 1.0, 0, "linear") == pytest.approx(
            0.5 ** sum(step >= m for m in (10, 20, 30))
        )
    # Warmup and decay multiply when a milestone falls inside the warmup.
    assert warmup_multistep_factor(3, [2], 0.1, 0.5, 5, "constant") == pytest.approx(0.05)


def test_reference_lr_of_the_1x_config():
    cfg = default_cfg.clone()
    cfg.merge_from_file(os.path.join(REPO, "configs", "atss", "atss_R_50_FPN_1x.yaml"))
    model = nn.Conv2d(1, 1, 1)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    checks = [1, 500, 501, 60000, 60001, 80000, 80001, 90000]
    lrs = _lrs(scheduler, optimizer, checks)
    expected_weight = {1: 0.01 / 3, 500: 0.01 / 3, 501: 0.01, 60000: 0.01, 60001: 0.001,
                       80000: 0.001, 80001: 0.0001, 90000: 0.0001}
    for it, lr in expected_weight.items():
        weight_lr, bias_lr = lrs[it]
        assert math.isclose(weight_lr, lr, rel_tol=1e-9), (it, weight_lr, lr)
        assert math.isclose(bias_lr, 2 * lr, rel_tol=1e-9), (it, bias_lr, 2 * lr)


def test_scheduler_state_resumes_the_schedule():
    optimizer = _sgd(1.0)
    kwargs = dict(milestones=(6,), gamma=0.1, warmup_factor=0.1, warmup_iters=4, warmup_method="linear")
    scheduler = WarmupMultiStepLR(optimizer, **kwargs)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    reference = [g["lr"] for g in optimizer.param_groups]

    fresh_optimizer = _sgd(1.0)
    fresh = WarmupMultiStepLR(fresh_optimizer, **kwargs)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 3
    assert [g["lr"] for g in fresh_optimizer.param_groups] == reference
    for _ in range(5):
        for opt, sch in ((optimizer, scheduler), (fresh_optimizer, fresh)):
            opt.step()
            sch.step()
        assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(milestones=(20, 10)), "increasing"),
        (dict(milestones=(10,), warmup_method="cosine"), "constant' or 'linear"),
        (dict(milestones=(10,), warmup_iters=-1), "WARMUP_ITERS"),
    ],
)
def test_invalid_schedules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupMultiStepLR(_sgd(), **kwargs)


def test_resuming_takes_the_schedule_from_the_config():
    """A checkpointed scheduler restores its position only: a run resumed with
    new STEPS / BASE_LR follows them (and the optimizer state loaded before the
    scheduler does not bring the old learning rate back)."""
    optimizer = _sgd(1.0)
    scheduler = WarmupMultiStepLR(optimizer, (10,), warmup_iters=0)
    for _ in range(8):
        optimizer.step()
        scheduler.step()
    optimizer_state, scheduler_state = optimizer.state_dict(), scheduler.state_dict()
    assert scheduler_state == {"last_epoch": 8}

    resumed_optimizer = _sgd(0.5)  # new BASE_LR
    resumed = WarmupMultiStepLR(resumed_optimizer, (9,), gamma=0.5, warmup_iters=0)  # new STEPS
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed.load_state_dict(scheduler_state)
    assert resumed.last_epoch == 8
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    assert resumed.get_last_lr() == pytest.approx([0.5])
    resumed_optimizer.step()
    resumed.step()
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(0.25)

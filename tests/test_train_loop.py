"""The training loop, logging helpers and train_net argument handling on a toy
model (no data set needed; each test takes well under a second)."""
import copy
import importlib.util
import json
import logging
import math
import os

import pytest
import torch
from torch import nn

from atss_core.config import ConfigError, cfg as default_cfg
from atss_core.engine import trainer as trainer_module
from atss_core.engine.trainer import (
    DivergenceError,
    NonFiniteLossError,
    do_train,
    make_grad_scaler,
    validate_training_config,
)
from atss_core.solver import WarmupMultiStepLR
from atss_core.utils.amp import autocast_dtype
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.image_list import to_image_list
from atss_core.utils.checkpoint import DetectronCheckpointer
from atss_core.utils.logger import setup_logger
from atss_core.utils.metric_logger import MetricLogger, SmoothedValue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ToyDetector(nn.Module):
    """Returns two loss terms from a linear layer on the mean pixel."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, images, targets):
        x = images.tensors.mean(dim=(2, 3))
        pred = self.linear(x).squeeze(1)
        goal = torch.stack([t.bbox.sum() for t in targets]) / 100.0
        return {"loss_b": pred.abs().mean() * 0.1, "loss_a": ((pred - goal) ** 2).mean()}


def toy_batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n):
        images = to_image_list([torch.rand(3, 8, 8, generator=g) for _ in range(2)])
        targets = [BoxList(torch.tensor([[0.0, 0.0, 4.0 + i, 5.0]]), (8, 8)) for _ in range(2)]
        batches.append((images, targets, (2 * i, 2 * i + 1)))
    return batches


class RecordingCheckpointer:
    def __init__(self, model):
        self.model = model
        self.saves = []

    def save(self, name, **extra):
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.saves.append((name, extra, state))


def make_toy(lr=0.1):
    torch.manual_seed(0)
    model = ToyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = WarmupMultiStepLR(optimizer, (3,), warmup_factor=0.5, warmup_iters=2)
    return model, optimizer, scheduler, RecordingCheckpointer(model)


def run_toy(batches, start_iter=0, max_iter=None, **kwargs):
    model, optimizer, scheduler, checkpointer = make_toy()
    options = dict(checkpoint_period=2, log_period=2)
    options.update(kwargs)
    do_train(model, batches, optimizer, scheduler, checkpointer, torch.device("cpu"),
             start_iter=start_iter, max_iter=max_iter or start_iter + len(batches), **options)
    return model, optimizer, scheduler, checkpointer


@pytest.fixture
def trainer_log(caplog, monkeypatch):
    # setup_logger (called by other tests in this process) stops propagation.
    monkeypatch.setattr(logging.getLogger("atss_core"), "propagate", True)
    caplog.set_level(logging.INFO, logger="atss_core")
    return caplog


def test_checkpoints_log_lines_and_metrics(tmp_path, trainer_log):
    metrics = tmp_path / "train_metrics.jsonl"
    model, optimizer, scheduler, checkpointer = run_toy(toy_batches(5), metrics_path=str(metrics))

    assert [(name, extra["iteration"]) for name, extra, _ in checkpointer.saves] == [
        ("model_0000002", 2), ("model_0000004", 4), ("model_final", 5)
    ]
    assert scheduler.last_epoch == 5
    log_lines = [r.getMessage() for r in trainer_log.records if r.getMessage().startswith("iter: ")]
    assert [line.split("  ")[0] for line in log_lines] == ["iter: 2/5", "iter: 4/5", "iter: 5/5"]
    fields = [part.split(":")[0] for part in log_lines[-1].split("  ")]
    assert fields == ["iter", "eta", "loss", "loss_a", "loss_b", "time", "data", "lr", "max mem"]

    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    # lr used at iteration i is the schedule after i - 1 steps (warmup 0.5 -> 1, decay at 3).
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.075, 0.1, 0.01, 0.01])
    for r in rows:
        assert r["loss"] == pytest.approx(r["loss_a"] + r["loss_b"])
        assert math.isfinite(r["loss"]) and r["time"] > 0 and r["data_time"] >= 0

    # The first row's losses are those of the initial model on the first batch.
    fresh, _, _, _ = make_toy()
    images, targets, _ = toy_batches(1)[0]
    expected = fresh(images, targets)
    assert rows[0]["loss_a"] == pytest.approx(expected["loss_a"].item(), rel=1e-6)


def test_resumed_loop_equals_uninterrupted_loop():
    batches = toy_batches(6)
    full, full_opt, _, _ = run_toy(batches)

    first, first_opt, first_sched, _ = run_toy(batches[:3])
    model, optimizer, scheduler, checkpointer = make_toy()
    model.load_state_dict(first.state_dict())
    optimizer.load_state_dict(first_opt.state_dict())
    scheduler.load_state_dict(first_sched.state_dict())
    do_train(model, batches[3:], optimizer, scheduler, checkpointer, torch.device("cpu"),
             start_iter=3, max_iter=6, checkpoint_period=2, log_period=2)
    # Iteration 6 is the last: saved once, as model_final.
    assert [name for name, _, _ in checkpointer.saves] == ["model_0000004", "model_final"]
    for a, b in zip(model.state_dict().values(), full.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert optimizer.param_groups[0]["lr"] == full_opt.param_groups[0]["lr"]


class NaNAt:
    """Forward hook that makes the named loss NaN at the given call."""

    def __init__(self, call, term):
        self.call, self.term, self.calls = call, term, 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.calls == self.call:
            output = dict(output)
            output[self.term] = output[self.term] * float("nan")
        return output


def test_non_finite_loss_stops_before_the_next_save(trainer_log, tmp_path):
    model, optimizer, scheduler, checkpointer = make_toy()
    model.register_forward_hook(NaNAt(3, "loss_b"))
    metrics = tmp_path / "train_metrics.jsonl"
    with pytest.raises(NonFiniteLossError) as error:
        do_train(model, toy_batches(8), optimizer, scheduler, checkpointer, torch.device("cpu"),
                 start_iter=0, max_iter=8, checkpoint_period=2, log_period=100, metrics_path=str(metrics))
    message = str(error.value)
    assert "iteration 3" in message and "loss_b=nan" in message and "loss_a" not in message
    # Found at iteration 4 (a checkpoint boundary) before saving it.
    assert [name for name, _, _ in checkpointer.saves] == ["model_0000002"]
    assert all(torch.isfinite(v).all() for v in checkpointer.saves[0][2].values())
    assert any("non-finite loss at iteration 3" in r.getMessage() for r in trainer_log.records)
    # The finite iterations are recorded, the bad one and those after it are not.
    assert [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()] == [1, 2]


class ScaleAt:
    """Forward hook that multiplies the named loss by ``factor`` at the given calls."""

    def __init__(self, calls, term, factor):
        self.at, self.term, self.factor, self.calls = set(calls), term, factor, 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.calls in self.at:
            output = dict(output)
            output[self.term] = output[self.term] * self.factor
        return output


def folder_checkpointer(model, optimizer, scheduler, folder):
    return DetectronCheckpointer(None, model, optimizer, scheduler, save_dir=str(folder))


@pytest.mark.parametrize("explode_at, good, repointed", [
    # Iteration 5 is the first on model_0000004's weights: 4 is not known good.
    (5, "model_0000002.pth", True),
    # Iteration 5 ran sane on model_0000004's weights: 4 is good and stays last.
    (6, "model_0000004.pth", False),
])
def test_exploding_loss_stops_and_last_checkpoint_names_the_last_good_one(
        tmp_path, trainer_log, explode_at, good, repointed):
    model, optimizer, scheduler, _ = make_toy()
    model.register_forward_hook(ScaleAt([explode_at], "loss_a", 1e6))
    checkpointer = folder_checkpointer(model, optimizer, scheduler, tmp_path)
    metrics = tmp_path / "train_metrics.jsonl"
    with pytest.raises(DivergenceError) as error:
        do_train(model, toy_batches(10), optimizer, scheduler, checkpointer, torch.device("cpu"),
                 start_iter=0, max_iter=10, checkpoint_period=2, log_period=1, metrics_path=str(metrics))
    assert isinstance(error.value, NonFiniteLossError), "existing handlers catch it"
    message = str(error.value)
    assert message.startswith(f"the loss exploded at iteration {explode_at}: ")
    assert "times the median" in message and "averaged over processes" in message
    saved = sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth"))
    assert saved == ["model_0000002.pth", "model_0000004.pth"], "nothing saved after the explosion"
    assert (tmp_path / "last_good_checkpoint").read_text() == good
    assert (tmp_path / "last_checkpoint").read_text() == good
    if repointed:
        assert (f"model_0000004.pth was saved as the loss went bad and may hold diverged weights (it is "
                f"kept): OUTPUT_DIR/last_checkpoint now names {good}") in message
    else:
        assert f"The last checkpoint saved while the loss was sane is {good}" in message
    assert any(r.getMessage() == message for r in trainer_log.records)
    # The exploding iteration is recorded (finite), none after it.
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, explode_at + 1))
    assert rows[-1]["loss"] > 1e4 * rows[0]["loss"]


def test_noisy_loss_is_not_divergence_and_the_check_can_be_disabled():
    # 30x the usual loss on two iterations: noise, not divergence.
    model, optimizer, scheduler, checkpointer = make_toy()
    model.register_forward_hook(ScaleAt([4, 6], "loss_a", 30.0))
    do_train(model, toy_batches(8), optimizer, scheduler, checkpointer, torch.device("cpu"),
             start_iter=0, max_iter=8, checkpoint_period=2, log_period=3)
    # divergence_factor 0: only non-finite losses stop a run.
    model, optimizer, scheduler, checkpointer = make_toy()
    model.register_forward_hook(ScaleAt([5], "loss_a", 1e6))
    do_train(model, toy_batches(8), optimizer, scheduler, checkpointer, torch.device("cpu"),
             start_iter=0, max_iter=8, checkpoint_period=2, log_period=3, divergence_factor=0)


def test_checkpoints_carry_the_loss_history_that_checks_a_resumed_run():
    model, optimizer, scheduler, checkpointer = run_toy(toy_batches(4), log_period=1)
    history = checkpointer.saves[-1][1]["loss_history"]
    assert len(history) == 4 and all(h > 0 for h in history)
    # Resumed with that history, an exploding first iteration stops the run
    # (without it, the first iterations would set the baseline).
    resumed, optimizer, scheduler, saves = make_toy()
    resumed.load_state_dict(model.state_dict())
    resumed.register_forward_hook(ScaleAt([1], "loss_a", 1e6))
    with pytest.raises(DivergenceError, match="exploded at iteration 5: .* of the 4 iterations before it"):
        do_train(resumed, toy_batches(4), optimizer, scheduler, saves, torch.device("cpu"), start_iter=4,
                 max_iter=8, checkpoint_period=2, log_period=1, loss_history=history,
                 resumed_from="model_0000004.pth")
    assert saves.saves == []


def test_divergence_check_adds_no_host_sync(monkeypatch):
    """The losses reach the host once per boundary (log lines, checkpoints), as
    before the divergence check: it works on those host copies."""
    collects = []
    real_collect = trainer_module._LossRecord.collect

    def counting_collect(self):
        collects.append(list(self.iterations))
        return real_collect(self)

    monkeypatch.setattr(trainer_module._LossRecord, "collect", counting_collect)
    run_toy(toy_batches(7), checkpoint_period=100, log_period=3)
    assert collects == [[1, 2, 3], [4, 5, 6], [7]]


def test_non_finite_gradient_of_a_finite_loss_is_not_saved():
    model, optimizer, scheduler, checkpointer = make_toy()
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 2 else grad

    model.linear.weight.register_hook(poison)
    with pytest.raises(NonFiniteLossError, match="parameters became non-finite by iteration 2"):
        do_train(model, toy_batches(4), optimizer, scheduler, checkpointer, torch.device("cpu"),
                 start_iter=0, max_iter=4, checkpoint_period=2, log_period=100)
    assert checkpointer.saves == []


def test_short_data_loader_is_an_error():
    with pytest.raises(RuntimeError, match="stopped after iteration 3, before SOLVER.MAX_ITER 5"):
        run_toy(toy_batches(3), max_iter=5)


def test_nothing_to_do_when_already_at_max_iter():
    model, optimizer, scheduler, checkpointer = make_toy()
    before = copy.deepcopy(model.state_dict())
    assert do_train(model, toy_batches(2), optimizer, scheduler, checkpointer, torch.device("cpu"),
                    start_iter=4, max_iter=4, checkpoint_period=2) == 4
    assert checkpointer.saves == []
    for a, b in zip(model.state_dict().values(), before.values()):
        assert torch.equal(a, b)


def test_changing_loss_terms_is_an_error():
    model, optimizer, scheduler, checkpointer = make_toy()
    calls = {"n": 0}

    def drop_term_at_second_call(module, inputs, output):
        calls["n"] += 1
        return {"loss_a": output["loss_a"]} if calls["n"] == 2 else output

    model.register_forward_hook(drop_term_at_second_call)
    with pytest.raises(RuntimeError, match="same terms"):
        do_train(model, toy_batches(3), optimizer, scheduler, checkpointer, torch.device("cpu"),
                 start_iter=0, max_iter=3, checkpoint_period=10)


def test_bf16_autocast_on_cpu_trains():
    model, _, _, checkpointer = run_toy(toy_batches(2), mixed_precision="bf16")
    assert all(torch.isfinite(v).all() for v in checkpointer.saves[-1][2].values())
    assert model.linear.weight.dtype == torch.float32


class OverflowAtCall(ToyDetector):
    """A toy detector whose loss gets a huge (finite) factor on one forward call: its
    gradient, times the GradScaler's scale, overflows float32."""

    def __init__(self, call):
        super().__init__()
        self.call, self.calls = call, 0

    def forward(self, images, targets):
        self.calls += 1
        losses = super().forward(images, targets)
        if self.calls == self.call:
            losses["loss_b"] = losses["loss_b"] * 1e36
        return losses


def test_grad_scaler_path_skips_overflowing_steps_and_checkpoints_its_state():
    """The fp16 training path (GradScaler) on the CPU: with a power-of-two scale the
    unscaled gradients are exact, so steps equal plain fp32 steps; a step whose scaled
    gradient overflows is skipped (parameters unchanged, scale halved) and training goes
    on; every checkpoint carries the scaler's state."""
    batches = toy_batches(4)
    plain, _, _, plain_saves = run_toy(batches, checkpoint_period=1)

    torch.manual_seed(0)
    model = OverflowAtCall(call=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = WarmupMultiStepLR(optimizer, (3,), warmup_factor=0.5, warmup_iters=2)
    checkpointer = RecordingCheckpointer(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    do_train(model, batches, optimizer, scheduler, checkpointer, torch.device("cpu"),
             start_iter=0, max_iter=4, checkpoint_period=1, log_period=1, grad_scaler=scaler)

    saves = [(extra["iteration"], extra["grad_scaler"]["scale"], state)
             for name, extra, state in checkpointer.saves]
    assert [(it, scale) for it, scale, _ in saves] == [(1, 2.0**16), (2, 2.0**15), (3, 2.0**15), (4, 2.0**15)]
    assert checkpointer.saves[-1][0] == "model_final"
    # iteration 1 equals plain fp32 training; iteration 2 (overflow) changed nothing
    for key, value in saves[0][2].items():
        assert torch.equal(value, plain_saves.saves[0][2][key])
        assert torch.equal(saves[1][2][key], value)
    assert all(torch.isfinite(v).all() for v in saves[-1][2].values())
    assert not torch.equal(saves[-1][2]["linear.weight"], saves[1][2]["linear.weight"])


def test_mixed_precision_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("none", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("fp16", cuda) == torch.float16
    with pytest.raises(ConfigError, match="fp16 needs MODEL.DEVICE cuda"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(ConfigError, match="MIXED_PRECISION"):
        autocast_dtype("fp8", cpu)
    assert make_grad_scaler("bf16", cpu) is None and make_grad_scaler("none", cuda) is None


@pytest.mark.parametrize("key, value", [("SOLVER.MAX_ITER", 0), ("SOLVER.CHECKPOINT_PERIOD", 0),
                                        ("SOLVER.LOG_PERIOD", 0), ("TEST.EVAL_PERIOD", -1)])
def test_training_config_validation(key, value):
    cfg = default_cfg.clone()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", key, value])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_training_config(cfg)


def test_smoothed_value_and_metric_logger():
    value = SmoothedValue(window_size=3)
    for v in (1.0, 5.0, 2.0, 10.0):
        value.update(v)
    assert value.median == 5.0 and value.latest == 10.0
    assert value.avg == pytest.approx(17 / 3) and value.global_avg == pytest.approx(4.5)
    meters = MetricLogger(delimiter=" | ", window_size=3)
    meters.update(loss=torch.tensor(2.0), time=0.5)
    meters.update(loss=4.0, time=1.5)
    assert "loss" in meters and meters["time"].global_avg == pytest.approx(1.0)
    assert str(meters) == "loss: 3.0000 (3.0000) | time: 1.0000 (1.0000)"
    # maskrcnn-benchmark's attribute access
    assert meters.loss is meters["loss"] and meters.time.global_avg == pytest.approx(1.0)
    with pytest.raises(AttributeError, match="no attribute or meter 'nope'; meters: loss, time"):
        meters.nope


def test_setup_logger_writes_only_on_rank_0(tmp_path):
    logger = setup_logger("atss_test_logger", str(tmp_path / "r0"), 0)
    logger.info("hello from rank 0")
    logger = setup_logger("atss_test_logger", str(tmp_path / "r0"), 0)  # no duplicate handlers
    logger.info("again")
    lines = (tmp_path / "r0" / "log.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith("hello from rank 0")

    logger = setup_logger("atss_test_logger", str(tmp_path / "r1"), 1)
    logger.info("hello from rank 1")
    assert not (tmp_path / "r1").exists()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def _load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CPU_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs", "atss", "cpu", "atss_R_18_FPN_coco128.yaml")


def test_train_net_local_rank_spellings(monkeypatch):
    train_net = _load_train_net()
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert train_net.parse_args(["--config-file", "x.yaml", "--local_rank", "3"]).local_rank == 3
    assert train_net.parse_args(["--config-file", "x.yaml", "--local-rank=2", "SOLVER.MAX_ITER", "5"]).local_rank == 2
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = train_net.parse_args(["--config-file", "x.yaml", "SOLVER.MAX_ITER", "5"])
    assert args.local_rank == 1 and args.opts == ["SOLVER.MAX_ITER", "5"]


def test_train_net_refuses_fp16_on_cpu():
    train_net = _load_train_net()
    args = train_net.parse_args(["--config-file", CPU_CONFIG, "MODEL.DEVICE", "cpu",
                                 "SOLVER.MIXED_PRECISION", "fp16"])
    with pytest.raises(ConfigError, match="fp16 needs MODEL.DEVICE cuda"):
        train_net.load_config(args)


def test_train_net_refuses_cuda_without_a_gpu(monkeypatch):
    train_net = _load_train_net()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = train_net.load_config(train_net.parse_args(["--config-file", CPU_CONFIG, "MODEL.DEVICE", "cuda"]))
    with pytest.raises(ConfigError, match="torch sees no GPU; pass MODEL.DEVICE cpu"):
        train_net.init_process(cfg.MODEL.DEVICE, 0)

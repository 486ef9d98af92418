"""The training loop (:func:`do_train`) and its helpers.

One iteration: move the batch to the device, forward under optional autocast,
sum the loss terms, backward (scaled for fp16), SGD step, one scheduler step.

Host syncs. The loop adds none to the step: each iteration's loss terms stay on
the device in a small buffer. At a *boundary* -- a log line every
``log_period`` iterations, a checkpoint, a periodic evaluation, the last
iteration -- the buffered terms of all iterations since the previous boundary
are averaged over processes in one all-reduce (for logging only; the gradients
are those of each process's own loss, averaged by DistributedDataParallel) and
copied to the host once.

Non-finite losses. That copy is also where non-finite losses are found: if
any term of any iteration on any process was NaN or infinite, every process
raises :class:`NonFiniteLossError` naming the first such iteration and its
non-finite terms, before anything is saved. The run therefore stops at most
``log_period`` iterations after the bad one, and a checkpoint is only written
after the losses of every iteration up to it were checked. As the parameters
can also turn non-finite through a non-finite gradient of a finite loss, they
are checked too (one pass over them) before every checkpoint. The last good
checkpoint and ``last_checkpoint`` are never overwritten by a diverged model.
"""
import datetime
import json
import logging
import random
import resource
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from atss_core.config import ConfigError
from atss_core.utils.comm import all_reduce_sum, get_world_size, is_main_process
from atss_core.utils.metric_logger import MetricLogger

logger = logging.getLogger(__name__)

MIXED_PRECISION_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLossError(FloatingPointError):
    """Training diverged: a loss term or a parameter became NaN or infinite."""


def seed_all_rng(seed):
    """Seed Python's, NumPy's and torch's (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validate_training_config(cfg):
    """Raise :class:`ConfigError` for solver settings that cannot train."""
    solver = cfg.SOLVER
    for key in ("MAX_ITER", "CHECKPOINT_PERIOD", "LOG_PERIOD"):
        if solver[key] < 1:
            raise ConfigError(f"SOLVER.{key} must be >= 1, got {solver[key]}")
    if solver.WARMUP_ITERS < 0:
        raise ConfigError(f"SOLVER.WARMUP_ITERS must be >= 0, got {solver.WARMUP_ITERS}")
    if cfg.TEST.EVAL_PERIOD < 0:
        raise ConfigError(f"TEST.EVAL_PERIOD must be >= 0 (0: only at the end), got {cfg.TEST.EVAL_PERIOD}")
    autocast_dtype(solver.MIXED_PRECISION, torch.device(cfg.MODEL.DEVICE))


def autocast_dtype(mixed_precision, device):
    """The autocast dtype for ``SOLVER.MIXED_PRECISION`` on ``device`` (None for
    "none"); raises :class:`ConfigError` for a combination that cannot run."""
    if mixed_precision not in MIXED_PRECISION_DTYPES:
        raise ConfigError(
            f"SOLVER.MIXED_PRECISION must be one of {', '.join(MIXED_PRECISION_DTYPES)}, "
            f"got {mixed_precision!r}"
        )
    dtype = MIXED_PRECISION_DTYPES[mixed_precision]
    if dtype is None:
        return None
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError(
            "SOLVER.MIXED_PRECISION fp16 needs MODEL.DEVICE cuda; on the CPU use bf16 or none"
        )
    if (device.type == "cuda" and dtype == torch.bfloat16 and torch.cuda.is_available()
            and not torch.cuda.is_bf16_supported()):
        raise ConfigError(
            "SOLVER.MIXED_PRECISION bf16 is not supported by this GPU; use fp16 or none"
        )
    return dtype


def make_grad_scaler(mixed_precision, device):
    """A GradScaler for fp16 training, else None (bf16 and fp32 need none)."""
    if mixed_precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def train_step(model, images, targets, optimizer, scheduler, device, amp_dtype=None,
                grad_scaler=None):
    """One SGD iteration: move the batch to ``device``, forward under autocast
    (``amp_dtype`` None: fp32), backward (scaled by ``grad_scaler`` when given),
    optimizer and scheduler step. Returns the loss dict (tensors on ``device``;
    nothing is synchronised)."""
    images = images.to(device, non_blocking=True)
    targets = [target.to(device) for target in targets]
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss_dict = model(images, targets)
    losses = sum(loss_dict.values())
    optimizer.zero_grad(set_to_none=True)
    if grad_scaler is not None:
        grad_scaler.scale(losses).backward()
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        losses.backward()
        optimizer.step()
    scheduler.step()
    return loss_dict


def peak_memory_mb(device):
    """Peak memory in MiB: ``torch.cuda.max_memory_allocated`` on a GPU, the
    process's maximum resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10  # bytes / KiB


def parameters_are_finite(model):
    """True when every parameter of ``model`` is finite (one host sync)."""
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


class _LossRecord:
    """Per-iteration loss terms kept on the device until the next boundary."""

    def __init__(self):
        self.names = None
        self.iterations = []
        self.terms = []

    def append(self, iteration, loss_dict):
        names = sorted(loss_dict)
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise RuntimeError(
                f"the model returned the loss terms {names} at iteration {iteration}, "
                f"but {self.names} before; every iteration must return the same terms"
            )
        self.iterations.append(iteration)
        self.terms.append(torch.stack([loss_dict[k].detach().float().reshape(()) for k in names]))

    def collect(self):
        """``(iterations, values [n, T] numpy)``: the buffered terms averaged over
        processes (one all-reduce, one device-to-host copy); empties the buffer."""
        stacked = torch.stack(self.terms)
        world_size = get_world_size()
        if world_size > 1:
            stacked = all_reduce_sum(stacked) / world_size
        values = stacked.cpu().numpy()
        iterations = self.iterations
        self.iterations, self.terms = [], []
        return iterations, values


def _first_non_finite_row(values):
    """Index of the first row of ``values`` [n, T] with a NaN or infinite entry
    (``n`` when there is none)."""
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    return int(bad_rows[0]) if bad_rows.size else len(values)


def _non_finite_loss_error(names, iteration, row):
    bad_terms = ", ".join(f"{names[j]}={row[j]}" for j in np.flatnonzero(~np.isfinite(row)))
    message = (
        f"non-finite loss at iteration {iteration}: {bad_terms} (averaged over processes). "
        "Training stopped; nothing was saved after the last checkpoint. Lower SOLVER.BASE_LR, "
        "lengthen SOLVER.WARMUP_ITERS or check the annotations, then restart (the run resumes "
        "from OUTPUT_DIR/last_checkpoint)."
    )
    logger.error(message)
    return NonFiniteLossError(message)


def _format_eta(seconds):
    return str(datetime.timedelta(seconds=int(seconds)))


def do_train(
    model,
    data_loader,
    optimizer,
    scheduler,
    checkpointer,
    device,
    *,
    start_iter,
    max_iter,
    checkpoint_period,
    log_period=20,
    mixed_precision="none",
    grad_scaler=None,
    eval_period=0,
    eval_fn=None,
    metrics_path=None,
):
    """Train from iteration ``start_iter`` (already done) to ``max_iter``.

    Args:
        model: the detector (possibly wrapped in DistributedDataParallel), on
            ``device``; ``model(images, targets)`` returns a dict of scalar losses.
        data_loader: yields ``(images: ImageList, targets: list[BoxList], indices)``
            for iterations ``start_iter + 1 .. max_iter`` (at least that many).
        optimizer, scheduler: stepped once per iteration.
        checkpointer: ``DetectronCheckpointer``; ``save(name, iteration=...)`` is
            called on every process (it writes on the main one) every
            ``checkpoint_period`` iterations (``model_{iter:07d}``) and at
            ``max_iter`` (``model_final`` only, also when ``max_iter`` is a
            multiple of the period).
        mixed_precision: "none", "fp16" or "bf16" (autocast on ``device``).
        grad_scaler: a ``torch.amp.GradScaler`` for fp16 (see
            :func:`make_grad_scaler`); its state is saved in the checkpoints as
            ``grad_scaler``.
        eval_period, eval_fn: ``eval_fn(iteration)`` runs on every process every
            ``eval_period`` iterations before ``max_iter`` (0: never); the final
            evaluation is the caller's.
        metrics_path: file (main process) that gets one JSON line per iteration
            with the process-averaged loss terms, total loss, lr and timings.

    Returns the last iteration (``max_iter``). Raises :class:`NonFiniteLossError`
    when training diverges (see the module docstring).
    """
    if start_iter >= max_iter:
        logger.info("Iteration %d reached SOLVER.MAX_ITER %d: nothing to train", start_iter, max_iter)
        return start_iter
    amp_dtype = autocast_dtype(mixed_precision, device)
    main_process = is_main_process()
    logger.info("Start training at iteration %d of %d", start_iter + 1, max_iter)

    meters = MetricLogger(delimiter="  ")
    record = _LossRecord()
    host_rows = []  # (lr, time, data_time) per buffered iteration
    progress = tqdm(total=max_iter, initial=start_iter, desc="train", dynamic_ncols=True,
                    disable=True if not main_process else None)
    model.train()
    start_training_time = time.perf_counter()
    end = time.perf_counter()
    iteration = start_iter

    for iteration, (images, targets, _) in enumerate(data_loader, start_iter + 1):
        data_time = time.perf_counter() - end
        lr = optimizer.param_groups[0]["lr"]

        loss_dict = train_step(model, images, targets, optimizer, scheduler, device, amp_dtype,
                               grad_scaler)
        record.append(iteration, loss_dict)
        progress.update(1)
        last = iteration == max_iter
        log_now = iteration % log_period == 0 or last
        save_now = iteration % checkpoint_period == 0 or last
        eval_now = eval_fn is not None and eval_period > 0 and iteration % eval_period == 0 and not last
        boundary = log_now or save_now or eval_now
        if boundary:
            # The only host sync; on a GPU it waits for the queued work, which
            # therefore counts in this iteration's time.
            iterations, values = record.collect()
        batch_time = time.perf_counter() - end
        host_rows.append((lr, batch_time, data_time))
        meters.update(time=batch_time, data=data_time)
        if not boundary:
            end = time.perf_counter()
            continue

        # Iterations before the first non-finite one are logged, then the run stops.
        num_finite = _first_non_finite_row(values)
        rows = []
        for it, row, (row_lr, row_time, row_data) in zip(
            iterations[:num_finite], values[:num_finite], host_rows[:num_finite]
        ):
            terms = dict(zip(record.names, (float(v) for v in row)))
            total = float(row.sum())
            meters.update(loss=total, **terms)
            rows.append({"iteration": it, "loss": total, **terms, "lr": row_lr, "time": row_time,
                         "data_time": row_data})
        host_rows = []
        if main_process and metrics_path:
            with open(metrics_path, "a") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        if num_finite < len(iterations):
            raise _non_finite_loss_error(record.names, iterations[num_finite], values[num_finite])

        if log_now:
            eta = meters["time"].global_avg * (max_iter - iteration)
            logger.info(
                meters.delimiter.join([
                    f"iter: {iteration}/{max_iter}",
                    f"eta: {_format_eta(eta)}",
                    meters.summary(["loss", *record.names, "time", "data"]),
                    f"lr: {lr:.6f}",
                    f"max mem: {peak_memory_mb(device):.0f} MiB",
                ])
            )
            progress.set_postfix(loss=f"{meters['loss'].median:.4f}")

        if save_now:
            if not parameters_are_finite(model):
                message = (
                    f"the parameters became non-finite by iteration {iteration} although every "
                    "loss term was finite (a non-finite gradient). Training stopped; nothing was "
                    "saved after the last checkpoint."
                )
                logger.error(message)
                raise NonFiniteLossError(message)
            extra = {"iteration": iteration}
            if grad_scaler is not None:
                extra["grad_scaler"] = grad_scaler.state_dict()
            # The last iteration is saved once, as model_final, even when it
            # falls on the checkpoint period.
            checkpointer.save("model_final" if last else f"model_{iteration:07d}", **extra)

        if eval_now:
            eval_fn(iteration)
            model.train()
        # Checkpoint writing and evaluation count in neither time nor data time.
        end = time.perf_counter()
        if last:
            break

    progress.close()
    if iteration < max_iter:
        raise RuntimeError(
            f"the training data loader stopped after iteration {iteration}, before "
            f"SOLVER.MAX_ITER {max_iter}; it must yield MAX_ITER - start_iter batches"
        )
    total_time = time.perf_counter() - start_training_time
    done = max_iter - start_iter
    logger.info(
        "Total training time: %s (%.4f s / it over %d iterations)",
        datetime.timedelta(seconds=int(total_time)), total_time / done, done,
    )
    return iteration

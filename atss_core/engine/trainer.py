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
are checked too (one pass over them) before every checkpoint.

Divergence. A blow-up usually shows as a finite but exploding loss before it
turns NaN, and by then the weights can hold values like 1e13. The same host
copy feeds a running median of the total loss over the last
``divergence_window`` iterations; an iteration whose loss exceeds
``divergence_factor`` times that median stops every process with
:class:`DivergenceError` (a :class:`NonFiniteLossError`), before anything is
saved. No host sync is added. Checkpoints store that history
(``loss_history``), so a resumed run checks its first iterations against the
losses before the checkpoint: resuming from diverged weights stops at once.

Good checkpoints. A checkpoint holds the weights *after* its iteration's step,
whose loss was computed before it: a step with a huge learning rate can corrupt
the weights of a checkpoint whose own losses all looked sane. A checkpoint is
therefore called good only once the iteration after it (computed with its
weights) has a sane loss; ``OUTPUT_DIR/last_good_checkpoint`` names the last
good one. When the run stops on a non-finite or exploding loss and
``last_checkpoint`` names a later, unconfirmed checkpoint, ``last_checkpoint``
is pointed back at the last good one (the later file is kept), so that "lower
the learning rate and restart" resumes from weights that are sane.
"""
import collections
import datetime
import json
import logging
import os
import random
import resource
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from atss_core.config import ConfigError
from atss_core.utils.amp import autocast_dtype
from atss_core.utils.comm import all_reduce_sum, get_world_size, is_main_process
from atss_core.utils.metric_logger import MetricLogger

logger = logging.getLogger(__name__)

class NonFiniteLossError(FloatingPointError):
    """Training diverged: a loss term or a parameter became NaN or infinite."""


class DivergenceError(NonFiniteLossError):
    """Training diverged: the loss exploded (far above its recent median)."""


LAST_GOOD_CHECKPOINT = "last_good_checkpoint"
# Defaults of do_train's divergence check: stop when an iteration's total loss
# exceeds DIVERGENCE_FACTOR times the median of the previous (at most)
# DIVERGENCE_WINDOW iterations, once DIVERGENCE_MIN_HISTORY are known.
DIVERGENCE_FACTOR = 100.0
DIVERGENCE_WINDOW = 100
DIVERGENCE_MIN_HISTORY = 3


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


class _DivergenceMonitor:
    """Running median of the total loss; flags a loss far above it."""

    def __init__(self, factor, window, min_history=DIVERGENCE_MIN_HISTORY, history=()):
        self.factor = factor
        self.min_history = max(1, min_history)
        self.history = collections.deque(
            (float(v) for v in history or () if np.isfinite(v)), maxlen=max(window, self.min_history))

    def check(self, total):
        """``(median, count)`` when ``total`` exceeds ``factor`` times the median
        of the history (then it is not added), else None (and it is added)."""
        if self.factor and len(self.history) >= self.min_history:
            median = float(np.median(self.history))
            if median > 0 and total > self.factor * median:
                return median, len(self.history)
        self.history.append(total)
        return None


def read_checkpoint_pointer(folder, name=LAST_GOOD_CHECKPOINT):
    """The checkpoint path the pointer file ``folder/name`` names (None when
    the file or the checkpoint does not exist)."""
    if not folder:
        return None
    try:
        with open(os.path.join(folder, name)) as f:
            target = f.read().strip()
    except OSError:
        return None
    path = target if os.path.isabs(target) else os.path.join(folder, target)
    return path if target and os.path.isfile(path) else None


class _GoodCheckpoints:
    """Which checkpoint is known good (see the module docstring); keeps
    ``last_good_checkpoint`` up to date in the checkpointer's folder (on the
    process that writes checkpoints)."""

    def __init__(self, checkpointer, resumed_from=None):
        self.folder = getattr(checkpointer, "save_dir", "") or ""
        self.writes = bool(self.folder) and bool(getattr(checkpointer, "save_to_disk", False))
        self.good = read_checkpoint_pointer(self.folder)
        # The weights the loop starts from count as a checkpoint awaiting its
        # first iteration.
        self.pending = resumed_from
        self.latest = resumed_from

    def _pointer_text(self, path):
        inside = self.folder and os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.folder)
        return os.path.basename(path) if inside else os.path.abspath(path)

    def saved(self, path):
        self.pending = self.latest = path

    def confirm(self):
        """The iteration after the pending checkpoint had a sane loss."""
        if self.pending is None:
            return
        self.good, self.pending = self.pending, None
        if self.writes:
            from atss_core.utils.io import atomic_write_text

            atomic_write_text(self._pointer_text(self.good), os.path.join(self.folder, LAST_GOOD_CHECKPOINT))

    def stop_advice(self):
        """What to do now (for the error message); points ``last_checkpoint``
        back at the last good checkpoint when it names a later one."""
        todo = "Lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or check the annotations"
        name = (lambda p: os.path.basename(p)) if self.folder else (lambda p: p)
        if (self.good is not None and self.latest is not None
                and os.path.abspath(self.latest) != os.path.abspath(self.good)):
            if self.writes:
                from atss_core.utils.io import atomic_write_text

                atomic_write_text(self._pointer_text(self.good), os.path.join(self.folder, "last_checkpoint"))
            return (
                f"{name(self.latest)} was saved as the loss went bad and may hold diverged weights "
                f"(it is kept): OUTPUT_DIR/last_checkpoint now names {name(self.good)}, the last "
                f"checkpoint saved while the loss was sane (OUTPUT_DIR/{LAST_GOOD_CHECKPOINT}). {todo}, "
                f"then restart: the run resumes from {name(self.good)}."
            )
        if self.good is not None:
            return (
                f"The last checkpoint saved while the loss was sane is {name(self.good)} "
                f"(OUTPUT_DIR/{LAST_GOOD_CHECKPOINT}; OUTPUT_DIR/last_checkpoint names it too). "
                f"{todo}, then restart: the run resumes from it."
            )
        if self.latest is not None:
            return (
                f"No checkpoint of this run is known good: {name(self.latest)} was saved just before "
                f"the loss went bad and may hold diverged weights. {todo}, then start over (delete "
                "OUTPUT_DIR/last_checkpoint; a restart would resume from it)."
            )
        return f"No checkpoint was saved. {todo}, then restart (training starts over)."


def _stop(error_class, what, good):
    message = (f"{what}. Training stopped; nothing was saved after the last checkpoint. "
               f"{good.stop_advice()}")
    logger.error(message)
    return error_class(message)


def _non_finite_loss_error(names, iteration, row, good):
    bad_terms = ", ".join(f"{names[j]}={row[j]}" for j in np.flatnonzero(~np.isfinite(row)))
    return _stop(NonFiniteLossError,
                 f"non-finite loss at iteration {iteration}: {bad_terms} (averaged over processes)", good)


def _divergence_error(names, iteration, row, median, count, good):
    total = float(row.sum())
    terms = ", ".join(f"{n}={float(v):.4g}" for n, v in zip(names, row))
    return _stop(
        DivergenceError,
        f"the loss exploded at iteration {iteration}: {total:.4g} ({terms}; averaged over processes), "
        f"{total / median:.3g} times the median {median:.4g} of the {count} iterations before it: "
        "the weights are diverging",
        good,
    )


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
    divergence_factor=DIVERGENCE_FACTOR,
    divergence_window=DIVERGENCE_WINDOW,
    resumed_from=None,
    loss_history=None,
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
        divergence_factor, divergence_window: stop with :class:`DivergenceError`
            when an iteration's total loss exceeds ``divergence_factor`` times
            the median of the previous ``divergence_window`` iterations
            (``divergence_factor`` 0: no such check).
        resumed_from: the checkpoint file the model was loaded from (None:
            not a checkpoint of a training run); it becomes the last good
            checkpoint once the first iteration's loss is sane.
        loss_history: total losses of the iterations before ``start_iter``
            (the ``loss_history`` a checkpoint stores), to check the first
            iterations against.

    Returns the last iteration (``max_iter``). Raises :class:`NonFiniteLossError`
    (:class:`DivergenceError` for an exploding loss) when training diverges
    (see the module docstring).
    """
    if start_iter >= max_iter:
        logger.info("Iteration %d reached SOLVER.MAX_ITER %d: nothing to train", start_iter, max_iter)
        return start_iter
    amp_dtype = autocast_dtype(mixed_precision, device)
    main_process = is_main_process()
    logger.info("Start training at iteration %d of %d", start_iter + 1, max_iter)

    meters = MetricLogger(delimiter="  ")
    record = _LossRecord()
    monitor = _DivergenceMonitor(divergence_factor, divergence_window, history=loss_history)
    good = _GoodCheckpoints(checkpointer, resumed_from)
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

        # Iterations before the first non-finite or exploding one are logged (an
        # exploding, finite one too), then the run stops.
        num_finite = _first_non_finite_row(values)
        num_sane, diverged = num_finite, None
        for i in range(num_finite):
            diverged = monitor.check(float(values[i].sum()))
            if diverged is not None:
                num_sane = i
                break
        if num_sane > 0:
            # The first iteration after the last checkpoint ran on its weights.
            good.confirm()
        num_logged = num_sane + (diverged is not None)
        rows = []
        for it, row, (row_lr, row_time, row_data) in zip(
            iterations[:num_logged], values[:num_logged], host_rows[:num_logged]
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
        if diverged is not None:
            raise _divergence_error(record.names, iterations[num_sane], values[num_sane], *diverged, good)
        if num_finite < len(iterations):
            raise _non_finite_loss_error(record.names, iterations[num_finite], values[num_finite], good)

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
                raise _stop(
                    NonFiniteLossError,
                    f"the parameters became non-finite by iteration {iteration} although every "
                    "loss term was finite (a non-finite gradient)",
                    good,
                )
            extra = {"iteration": iteration, "loss_history": list(monitor.history)}
            if grad_scaler is not None:
                extra["grad_scaler"] = grad_scaler.state_dict()
            # The last iteration is saved once, as model_final, even when it
            # falls on the checkpoint period.
            name = "model_final" if last else f"model_{iteration:07d}"
            path = checkpointer.save(name, **extra)
            folder = getattr(checkpointer, "save_dir", "") or ""
            good.saved(path if isinstance(path, str) else
                       os.path.join(folder, f"{name}.pth") if folder else f"{name}.pth")

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

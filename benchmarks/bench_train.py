r"""Training speed of a config: seconds per iteration, images per second, and
how much of the step is sample selection.

    python benchmarks/bench_train.py --config-file configs/atss/cpu/atss_R_18_FPN_coco128.yaml \
        --precision none bf16 --iters 20 --warmup 5 MODEL.DEVICE cpu DATALOADER.NUM_WORKERS 0

One process, real batches from ``DATASETS.TRAIN`` (``SOLVER.IMS_PER_BATCH``
images each), randomly initialised weights unless ``MODEL.WEIGHT`` is set. For
each precision (``SOLVER.MIXED_PRECISION``: none, fp16, bf16) it runs ``warmup``
untimed iterations and then ``iters`` timed ones of the real training step
(forward under autocast, backward, SGD step, scheduler step). Reported:

* ``s/iter``: the step (batch already loaded; CUDA synchronised at both ends of
  each iteration), and ``img/s`` = ``IMS_PER_BATCH / s/iter``;
* ``data s/iter``: waiting for the data loader;
* ``sample sel. s/iter``: inside the loss's ``prepare_targets`` (the anchor
  assignment of :mod:`atss_core.modeling.rpn.sample_selection` plus encoding the
  regression targets), timed by wrapping that method of the model's loss
  evaluator from outside; on CUDA the wrapper synchronises around the call, so
  on a GPU the step times come from a separate pass without the wrapper;
* ``peak mem``: ``torch.cuda.max_memory_allocated`` on a GPU, the process's
  maximum resident set size on the CPU (cumulative over the precisions run).
"""
import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atss_core.config import cfg as default_cfg, validate_config  # noqa: E402
from atss_core.data import make_data_loader  # noqa: E402
from atss_core.engine.trainer import (  # noqa: E402
    make_grad_scaler,
    peak_memory_mb,
    seed_all_rng,
    train_step,
)
from atss_core.modeling.detector import build_detection_model  # noqa: E402
from atss_core.solver import make_lr_scheduler, make_optimizer  # noqa: E402
from atss_core.utils.checkpoint import DetectronCheckpointer  # noqa: E402
from atss_core.utils.amp import autocast_dtype  # noqa: E402
from atss_core.utils.io import atomic_write_json  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--precision", nargs="+", default=None, choices=("none", "fp16", "bf16"),
                        help="default: none fp16 bf16 on a GPU, none bf16 on the CPU")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per precision")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations per precision")
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser.parse_args(argv)


class _SampleSelectionTimer:
    """Wraps ``loss_evaluator.prepare_targets`` and accumulates its run time."""

    def __init__(self, loss_evaluator, device):
        self.device = device
        self.total = 0.0
        self._inner = loss_evaluator.prepare_targets
        loss_evaluator.prepare_targets = self

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, *args, **kwargs):
        self._sync()
        start = time.perf_counter()
        result = self._inner(*args, **kwargs)
        self._sync()
        self.total += time.perf_counter() - start
        return result


def _run(cfg, precision, iters, warmup, time_sample_selection):
    """Mean (step s, data s, sample-selection s) per timed iteration."""
    device = torch.device(cfg.MODEL.DEVICE)
    seed_all_rng(0)
    model = build_detection_model(cfg).to(device)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    DetectronCheckpointer(cfg, model).load(cfg.MODEL.WEIGHT, use_latest=False)
    dtype = autocast_dtype(precision, device)
    scaler = make_grad_scaler(precision, device)
    timer = _SampleSelectionTimer(model.rpn.loss_evaluator, device) if time_sample_selection else None
    model.train()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step_time = data_time = selection_time = 0.0
    loader = iter(make_data_loader(cfg, is_train=True))
    for i in range(warmup + iters):
        start = time.perf_counter()
        images, targets, _ = next(loader)
        fetched = time.perf_counter()
        sync()
        if timer is not None:
            timer.total = 0.0
        step_start = time.perf_counter()
        train_step(model, images, targets, optimizer, scheduler, device, dtype, scaler)
        sync()
        if i >= warmup:
            step_time += time.perf_counter() - step_start
            data_time += fetched - start
            selection_time += timer.total if timer is not None else 0.0
    return step_time / iters, data_time / iters, selection_time / iters


def benchmark(cfg, precisions, iters, warmup):
    device = torch.device(cfg.MODEL.DEVICE)
    results = []
    for precision in precisions:
        if device.type == "cuda":
            step, data, _ = _run(cfg, precision, iters, warmup, time_sample_selection=False)
            _, _, selection = _run(cfg, precision, iters, warmup, time_sample_selection=True)
        else:
            step, data, selection = _run(cfg, precision, iters, warmup, time_sample_selection=True)
        results.append({
            "precision": precision,
            "s_per_iter": step,
            "images_per_s": cfg.SOLVER.IMS_PER_BATCH / step,
            "data_s_per_iter": data,
            "sample_selection_s_per_iter": selection,
            "sample_selection_share": selection / step,
            "peak_mem_mib": peak_memory_mb(device),
        })
    return results


def machine_description(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, PyTorch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{torch.get_num_threads()} torch threads, PyTorch {torch.__version__}")


def main(argv=None):
    args = parse_args(argv)
    cfg = default_cfg.clone()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    # Enough iterations for the loader; no checkpoints or outputs are written.
    cfg.merge_from_list(["SOLVER.MAX_ITER", args.warmup + args.iters, "OUTPUT_DIR", ""])
    validate_config(cfg)
    cfg.freeze()
    device = torch.device(cfg.MODEL.DEVICE)
    precisions = args.precision or (["none", "fp16", "bf16"] if device.type == "cuda" else ["none", "bf16"])

    load_before = os.getloadavg()[0]
    results = benchmark(cfg, precisions, args.iters, args.warmup)
    load_after = os.getloadavg()[0]
    print(f"config: {args.config_file} {' '.join(map(str, args.opts or []))}")
    print(f"machine: {machine_description(device)}; 1-minute load average {load_before:.1f} before, "
          f"{load_after:.1f} after (other processes competing for the cores slow every number down)")
    print(f"batch: {cfg.SOLVER.IMS_PER_BATCH} images, input shorter side {tuple(cfg.INPUT.MIN_SIZE_TRAIN)} "
          f"(max {cfg.INPUT.MAX_SIZE_TRAIN}); {args.warmup} warm-up + {args.iters} timed iterations")
    print("| precision | s/iter | img/s | data s/iter | sample sel. s/iter | sample sel. share | peak mem (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['precision']} | {r['s_per_iter']:.3f} | {r['images_per_s']:.2f} | {r['data_s_per_iter']:.3f} "
              f"| {r['sample_selection_s_per_iter']:.4f} | {100 * r['sample_selection_share']:.1f}% "
              f"| {r['peak_mem_mib']:.0f} |")
    if args.json:
        atomic_write_json({"config": args.config_file, "opts": args.opts, "machine": machine_description(device),
                           "load_average": [load_before, load_after], "results": results}, args.json, indent=2)
    return results


if __name__ == "__main__":
    main()

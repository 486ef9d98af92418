r"""Inference speed of a detector config: images per second and ms per image.

    python benchmarks/bench_inference.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        --size 800 1216 --batch-size 1 MODEL.DEVICE cuda
    python benchmarks/bench_inference.py --config-file configs/atss/cpu/atss_R_18_FPN_coco128.yaml \
        --batch-size 1 --iters 20 MODEL.DEVICE cpu

What is timed: ``model(images)`` in eval mode under ``torch.no_grad`` (backbone,
FPN, head and post-processing with NMS) on a batch of random images of
``--size`` H W (padded to ``DATALOADER.SIZE_DIVISIBILITY``); data loading and
the COCO evaluation are not. ``--warmup`` iterations are run first and not
timed; CUDA is synchronised around every timed iteration.

The weights are random (``torch.manual_seed(0)``; MODEL.WEIGHT is ignored):
speed does not depend on them, except in the post-processing, whose cost grows
with the number of candidates above ``MODEL.ATSS.INFERENCE_TH``. A randomly
initialised head scores every anchor about ``PRIOR_PROB`` (0.01), below the
default 0.05, so the post-processing has almost nothing to do; ``--score-th 0``
instead makes every location a candidate (``PRE_NMS_TOP_N`` per level, then
NMS), an upper bound of its cost.

Modes (``--modes``; default: all those the device supports), each a model
built from the config with (the same seed, so the same weights):
``fp32`` (the config as it is: channels-last feature maps and, on the CPU,
the Winograd path for large 3x3 convolutions by default), ``direct``
(``MODEL.WINOGRAD False``: every convolution through ``F.conv2d``),
``contiguous`` (``MODEL.CHANNELS_LAST False``: the reference's layout),
``bf16`` and, on CUDA, ``fp16`` (``TEST.MIXED_PRECISION``: autocast, the
post-processing in fp32). Peak memory is ``torch.cuda.max_memory_allocated``
per mode on CUDA, and the process's peak resident set size (which only grows,
so it is the maximum over the modes run so far) on the CPU.
"""
import argparse
import os
import platform
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atss_core.config import ConfigError, cfg as default_cfg, validate_config  # noqa: E402
from atss_core.modeling.detector import build_detection_model  # noqa: E402
from atss_core.structures.image_list import to_image_list  # noqa: E402
from atss_core.utils.io import atomic_write_json  # noqa: E402

# Config options of each mode.
MODES = {
    "fp32": [],
    "contiguous": ["MODEL.CHANNELS_LAST", False],
    "direct": ["MODEL.WINOGRAD", False],
    "bf16": ["TEST.MIXED_PRECISION", "bf16"],
    "fp16": ["TEST.MIXED_PRECISION", "fp16"],
}
CUDA_MODES = ("fp32", "contiguous", "fp16", "bf16")
CPU_MODES = ("fp32", "direct", "contiguous", "bf16")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark detector inference")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="input height and width (default: INPUT.MIN_SIZE_TEST and 4:3, "
                             "capped at INPUT.MAX_SIZE_TEST)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--iters", type=int, default=20, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES),
                        help="default: fp32 direct contiguous bf16 on the CPU, fp32 contiguous fp16 bf16 on CUDA")
    parser.add_argument("--score-th", type=float, default=None,
                        help="override MODEL.ATSS.INFERENCE_TH (0: every location a candidate)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config options, KEY VALUE pairs")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--batch-size and --iters must be >= 1 and --warmup >= 0")
    return args


def load_config(config_file, opts=(), score_th=None):
    """The frozen, validated config of ``config_file`` with ``opts`` (KEY VALUE
    ...), random weights (``MODEL.WEIGHT`` empty) and ``score_th`` as
    ``MODEL.ATSS.INFERENCE_TH`` when given."""
    cfg = default_cfg.clone()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["MODEL.WEIGHT", ""] + list(opts or []))
    if score_th is not None:
        cfg.merge_from_list(["MODEL.ATSS.INFERENCE_TH", score_th])
    validate_config(cfg)
    cfg.freeze()
    return cfg


def default_size(cfg):
    h = cfg.INPUT.MIN_SIZE_TEST
    return h, min(cfg.INPUT.MAX_SIZE_TEST, int(h * 4 / 3))


def _peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(cfg, mode, device):
    """The model of ``mode`` (see :data:`MODES`), weights from ``torch.manual_seed(0)``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(MODES[mode])
    cfg.freeze()
    torch.manual_seed(0)
    return build_detection_model(cfg).to(device).eval()


def benchmark(model, images, device, iters, warmup):
    """Seconds per iteration of ``model(images)``, peak memory, detections per image."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.no_grad():
        for i in range(warmup + iters):
            _sync(device)
            start = time.perf_counter()
            detections = model(images)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    num_detections = sum(len(d) for d in detections) / len(detections)
    return times, _peak_memory_mb(device), num_detections


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts, args.score_th)
    device = torch.device(cfg.MODEL.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("MODEL.DEVICE is cuda but torch sees no GPU; pass MODEL.DEVICE cpu")
    modes = args.modes or (CUDA_MODES if device.type == "cuda" else CPU_MODES)
    if "fp16" in modes and device.type != "cuda":
        raise ConfigError("mode fp16 needs MODEL.DEVICE cuda")
    height, width = args.size or default_size(cfg)

    images = to_image_list(
        [torch.randn(3, height, width) for _ in range(args.batch_size)],
        cfg.DATALOADER.SIZE_DIVISIBILITY,
    ).to(device)

    machine = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"{torch.get_num_threads()} torch threads)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        # Other processes on the machine slow a CPU benchmark down: record them.
        "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(f"config {args.config_file}, input {height}x{width} (padded "
          f"{tuple(images.tensors.shape[-2:])}), batch {args.batch_size}, {args.iters} timed "
          f"iterations after {args.warmup} warm-up, INFERENCE_TH {cfg.MODEL.ATSS.INFERENCE_TH}, "
          f"random weights\n{machine['device']}, torch {machine['torch']}, load average "
          f"{machine['load_average_1min_at_start']}")
    print(f"{'mode':<14} {'ms/iter':>9} {'ms/img':>8} {'img/s':>8} {'peak MB':>9} {'dets/img':>9}")
    rows = []
    for mode in modes:
        model = build_model(cfg, mode, device)
        times, peak, dets = benchmark(model, images, device, args.iters, args.warmup)
        del model
        times = torch.tensor(times)
        per_iter = float(times.median())
        row = {
            "mode": mode,
            "ms_per_iter_median": 1000 * per_iter,
            "ms_per_iter_mean": 1000 * float(times.mean()),
            "ms_per_image": 1000 * per_iter / args.batch_size,
            "images_per_s": args.batch_size / per_iter,
            "peak_memory_mb": peak,
            "detections_per_image": dets,
        }
        rows.append(row)
        print(f"{mode:<14} {row['ms_per_iter_median']:9.1f} {row['ms_per_image']:8.1f} "
              f"{row['images_per_s']:8.2f} {peak:9.0f} {dets:9.1f}")
    if args.json:
        atomic_write_json({
            "config": args.config_file, "opts": list(args.opts or []), "size": [height, width],
            "batch_size": args.batch_size, "iters": args.iters, "warmup": args.warmup,
            "inference_th": cfg.MODEL.ATSS.INFERENCE_TH, "machine": machine, "results": rows,
        }, args.json, indent=2)
    return rows


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        sys.exit(f"bench_inference.py: error: {e}")

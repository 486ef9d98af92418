"""Benchmark the compiled kernels of atss_core._C.

Compares each compiled kernel with the pure-PyTorch fallback of the same function
and, when torchvision imports, with torchvision.ops (nms, batched_nms,
sigmoid_focal_loss, deform_conv2d) on CPU and GPU alike. Same inputs, same device;
each number is the median wall time of ``--repeats`` runs after warm-up. Prints a
markdown table.

    python benchmarks/bench_kernels.py --device cpu [--threads 1]
    python benchmarks/bench_kernels.py --device cuda
"""
import argparse
import os
import platform
import statistics
import time

import torch

from atss_core.layers import _ext
from atss_core.layers.deform_conv import _deform_conv_torch, modulated_deform_conv
from atss_core.layers.nms import _nms_torch, ml_nms, nms
from atss_core.layers.sigmoid_focal_loss import _focal_loss_torch, sigmoid_focal_loss

try:
    import torchvision
except ImportError as exc:  # the table then has no torchvision columns; the header says why
    torchvision = None
    TORCHVISION_ERROR = f"{type(exc).__name__}: {exc}"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, device, repeats, warmup=2):
    """Median seconds of ``fn()`` over ``repeats`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def nms_cases(device, n_boxes):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n_boxes, 2, generator=g) * 1000
    wh = torch.rand(n_boxes, 2, generator=g) * 200 + 8
    boxes = torch.cat([xy, xy + wh], 1).to(device)
    scores = torch.rand(n_boxes, generator=g).to(device)
    labels = torch.randint(1, 81, (n_boxes,), generator=g).to(device)
    size = f"{n_boxes} boxes"
    yield ("nms", size, lambda: nms(boxes, scores, 0.6), lambda: _nms_torch(boxes, scores, None, 0.6),
           (lambda: torchvision.ops.nms(boxes, scores, 0.6)) if torchvision else None)
    yield ("ml_nms (80 classes)", size, lambda: ml_nms(boxes, scores, labels, 0.6),
           lambda: _nms_torch(boxes, scores, labels, 0.6),
           (lambda: torchvision.ops.batched_nms(boxes, scores, labels, 0.6)) if torchvision else None)


def focal_cases(device, n, c=80):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(n, c, generator=g) * 3).to(device)
    targets = torch.randint(-1, c + 1, (n,), generator=g).to(device)
    one_hot = torch.zeros(n, c + 1, device=device)
    one_hot.scatter_(1, targets.clamp(min=0)[:, None], 1)
    one_hot = one_hot[:, 1:]
    x = logits.clone().requires_grad_()
    size = f"{n}x{c}"

    def fwd_bwd(fn):
        def run():
            x.grad = None
            fn(x).sum().backward()
        return run

    tv_fn = None
    if torchvision:
        tv_fn = lambda z: torchvision.ops.sigmoid_focal_loss(z, one_hot, 0.25, 2.0, "none")  # noqa: E731
    yield ("focal loss fwd", size, lambda: sigmoid_focal_loss(logits, targets, 2.0, 0.25),
           lambda: _focal_loss_torch(logits, targets, 2.0, 0.25),
           (lambda: tv_fn(logits)) if tv_fn else None)
    yield ("focal loss fwd+bwd", size, fwd_bwd(lambda z: sigmoid_focal_loss(z, targets, 2.0, 0.25)),
           fwd_bwd(lambda z: _focal_loss_torch(z, targets, 2.0, 0.25)),
           fwd_bwd(tv_fn) if tv_fn else None)


def dcn_cases(device, n, c, hw):
    g = torch.Generator().manual_seed(2)
    h, w = hw
    inputs = [
        torch.randn(n, c, h, w, generator=g),
        torch.randn(n, 18, h, w, generator=g) * 2,
        torch.rand(n, 9, h, w, generator=g),
        torch.randn(c, c, 3, 3, generator=g) * 0.05,
        torch.randn(c, generator=g),
    ]
    inputs = [t.to(device).requires_grad_() for t in inputs]
    x, offset, mask, weight, bias = inputs
    grad_out = torch.randn(n, c, h, w, generator=g).to(device)
    size = f"{n}x{c}x{h}x{w}, 3x3"

    compiled = lambda: modulated_deform_conv(x, offset, mask, weight, bias, 1, 1)  # noqa: E731
    fallback = lambda: _deform_conv_torch(x, offset, mask, weight, bias, (1, 1), (1, 1), (1, 1), 1, 1)  # noqa: E731
    tv = None
    if torchvision:
        tv = lambda: torchvision.ops.deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask)  # noqa: E731

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    def fwd_bwd(fn):
        def run():
            torch.autograd.grad(fn(), inputs, grad_out)
        return run

    yield ("DCNv2 fwd", size, fwd(compiled), fwd(fallback), fwd(tv) if tv else None)
    yield ("DCNv2 fwd+bwd", size, fwd_bwd(compiled), fwd_bwd(fallback), fwd_bwd(tv) if tv else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for PyTorch and the CPU kernels (default: PyTorch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not _ext.has_kernel(device):
        raise SystemExit(f"no compiled {device.type} kernels in atss_core._C ({_ext.LOAD_ERROR or 'built without CUDA'})")
    use_tv = torchvision is not None
    tv_note = f"torchvision {torchvision.__version__}" if use_tv else f"no torchvision ({TORCHVISION_ERROR})"
    if device.type == "cpu":
        cases = [*nms_cases(device, 1000), *nms_cases(device, 5000), *focal_cases(device, 20000),
                 *dcn_cases(device, 1, 64, (64, 64)), *dcn_cases(device, 2, 256, (50, 76))]
        machine = f"{cpu_name()}, {torch.get_num_threads()} threads"
    else:
        cases = [*nms_cases(device, 1000), *nms_cases(device, 5000), *nms_cases(device, 20000),
                 *focal_cases(device, 100000), *dcn_cases(device, 2, 256, (100, 152)),
                 *dcn_cases(device, 8, 256, (100, 152))]
        machine = torch.cuda.get_device_name(device)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"device: {machine}; load average {load}; torch {torch.__version__}; {tv_note}; "
          f"median of {args.repeats}\n")
    header = "| op | size | compiled (ms) | fallback (ms) | fallback / compiled |"
    rule = "|---|---|---:|---:|---:|"
    if use_tv:
        header += " torchvision (ms) | torchvision / compiled |"
        rule += "---:|---:|"
    print(header)
    print(rule)
    for name, size, compiled, fallback, tv in cases:
        t_c = timed(compiled, device, args.repeats)
        t_f = timed(fallback, device, args.repeats)
        row = f"| {name} | {size} | {t_c * 1e3:.2f} | {t_f * 1e3:.2f} | {t_f / t_c:.1f}x |"
        if use_tv:
            t_tv = timed(tv, device, args.repeats)
            row += f" {t_tv * 1e3:.2f} | {t_tv / t_c:.2f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    main()

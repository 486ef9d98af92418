r"""Each 3x3 stride-1 convolution of ATSS R-50-FPN: oneDNN's direct convolution
against NNPACK's Winograd path (atss_core/layers/conv.py), and which one
``conv2d`` picks.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_winograd.py                      # 1 x 800x1216, forward
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_winograd.py --batch 2 --size 512 768 --backward

The shapes are those of the model at the input size: the ResNet-50 stage
3x3 convs (64/128/256/512 channels at strides 4-32), the FPN output convs
(256 at strides 8-32) and the head (256 -> 256 towers, 256 -> 80 / 4 / 1
predictors at strides 8-128). ``direct`` is ``F.conv2d`` with channels-last
input and weights (the model's layout); ``winograd`` is the NNPACK path
forced (input as the model would give it: channels-last, converted inside).
With ``--backward`` each timing is forward + backward (input, weight and bias
gradients). Times: median of ``--iters`` after one warm-up, ms. ``picked``:
what :func:`atss_core.layers.conv.winograd_applicable` chooses.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atss_core.layers.conv import _WinogradConv3x3, nnpack_available, winograd_applicable  # noqa: E402


def model_shapes(height, width):
    """(name, in_channels, out_channels, H, W) of every distinct 3x3 stride-1
    conv of ATSS R-50-FPN for an input of height x width (padded to 32)."""
    height, width = -(-height // 32) * 32, -(-width // 32) * 32

    def size(stride):
        return -(-height // stride), -(-width // stride)

    shapes = []
    for stage, stride in enumerate((4, 8, 16, 32)):
        channels = 64 * 2 ** stage
        shapes.append((f"res{stage + 2} 3x3", channels, channels, *size(stride)))
    for level, stride in zip((3, 4, 5), (8, 16, 32)):
        shapes.append((f"fpn P{level}", 256, 256, *size(stride)))
    for level, stride in zip((3, 4, 5, 6, 7), (8, 16, 32, 64, 128)):
        shapes.append((f"head P{level} tower", 256, 256, *size(stride)))
        shapes.append((f"head P{level} cls", 256, 80, *size(stride)))
        shapes.append((f"head P{level} box", 256, 4, *size(stride)))
    return shapes


def median_ms(fn, iters):
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not nnpack_available():
        sys.exit("this PyTorch build or CPU has no NNPACK (torch._nnpack_available() is False): nothing to compare")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"torch {torch.__version__}, batch {args.batch} x {args.size[0]}x{args.size[1]}, "
          f"{'forward + backward' if args.backward else 'forward'}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"{'conv':18s} {'C_in':>5s} {'C_out':>5s} {'H x W':>9s} {'direct':>9s} {'winograd':>9s} "
          f"{'ratio':>6s}  picked")
    channels_last = torch.channels_last
    g = torch.Generator().manual_seed(0)
    for name, cin, cout, h, w in model_shapes(*args.size):
        x = torch.randn(args.batch, cin, h, w, generator=g).contiguous(memory_format=channels_last)
        weight = (torch.randn(cout, cin, 3, 3, generator=g) * 0.02).contiguous(memory_format=channels_last)
        bias = torch.zeros(cout)
        if args.backward:
            leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]

            def direct():
                y = F.conv2d(*leaves, padding=1)
                y.backward(torch.ones_like(y))

            def winograd():
                y = _WinogradConv3x3.apply(*leaves)
                y.backward(torch.ones_like(y))
        else:
            def direct():
                with torch.no_grad():
                    F.conv2d(x, weight, bias, padding=1)

            def winograd():
                with torch.no_grad():
                    _WinogradConv3x3.apply(x, weight, bias)
        t_direct = median_ms(direct, args.iters)
        t_winograd = median_ms(winograd, args.iters)
        picked = "winograd" if winograd_applicable(x, weight, 1, 1) else "direct"
        print(f"{name:18s} {cin:5d} {cout:5d} {h:4d}x{w:<4d} {t_direct:9.2f} {t_winograd:9.2f} "
              f"{t_winograd / t_direct:6.2f}  {picked}")


if __name__ == "__main__":
    main()

"""Sample selection: vectorised (atss_core) vs the per-image, per-box loop version.

A batch of 16 images at 800 x 1333 (padded to 800 x 1344, 22 400 anchors per
image with one anchor per location) with 50 random boxes each; both versions
get the same inputs, their outputs are checked to be identical, and the
median time of several runs is printed for every POSITIVE_TYPE.

    /work/venv/bin/python benchmarks/bench_sample_selection.py [--images 16] [--boxes 50] [--repeats 5]

The loop version is ``loop_select`` of tests/test_sample_selection.py (one
image and one box at a time, the reference implementation's data flow). The
vectorised selector gets the levels' grid sizes, as the loss gives them.

OpenMP threads sleep instead of spinning while they wait
(``OMP_WAIT_POLICY=PASSIVE`` unless set otherwise): on a machine shared with
other jobs, spinning threads that get descheduled make multi-threaded timings
meaningless (10-20x slower, for both versions, from run to run).
"""
import argparse
import math
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

from atss_core.modeling.rpn.sample_selection import POSITIVE_TYPES, SampleSelector  # noqa: E402
from test_sample_selection import loop_select, make_anchors, random_boxes  # noqa: E402


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--boxes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--types", nargs="+", default=list(POSITIVE_TYPES), choices=POSITIVE_TYPES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    padded = (800, 1344)
    anchors = make_anchors(padded)
    # The levels' feature map sizes, as the loss passes them (the grid path).
    grid_sizes = [(math.ceil(padded[0] / s), math.ceil(padded[1] / s)) for s in (8, 16, 32, 64, 128)]
    images = [random_boxes(args.boxes, (800, 1333), min_size=8, max_size=800, seed=i) for i in range(args.images)]
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} "
          f"(load average {os.getloadavg()[0]:.1f}); {args.images} images x {args.boxes} "
          f"boxes, {sum(len(a) for a in anchors)} anchors per image; median of {args.repeats} (vectorised) and "
          f"{args.loop_repeats} (loop) runs")
    print(f"{'POSITIVE_TYPE':<14}{'vectorised (ms)':>17}{'loop (ms)':>12}{'speed-up':>10}  identical")
    for positive_type in args.types:
        selector = SampleSelector(positive_type)

        def vectorised():
            return selector(anchors, images, grid_sizes)

        def loop():
            outs = [loop_select(anchors, boxes, labels, positive_type) for boxes, labels in images]
            return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

        vectorised()  # warm-up
        t_vec, vec = median_time(vectorised, args.repeats)
        t_loop, ref = median_time(loop, args.loop_repeats)
        identical = torch.equal(vec.labels, ref[0]) and torch.equal(vec.matched_boxes, ref[1])
        assert identical, f"{positive_type}: vectorised and loop versions differ"
        print(f"{positive_type:<14}{t_vec * 1e3:>17.1f}{t_loop * 1e3:>12.1f}{t_loop / t_vec:>9.1f}x  {identical}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

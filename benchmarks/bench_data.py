"""Data loading: images per second per worker of the training pipeline.

One data-loader worker's work per image: decode (Pillow, as the reference) ->
resize by the reference rule (Pillow bilinear) -> horizontal flip -> to tensor ->
normalise, at the reference's training size (800 / 1333), on the coco128 JPEGs.
For comparison the same chain with OpenCV decoding and ``cv2.resize``
(``INTER_LINEAR``, which is *not* the reference's pixels; what this project used
before) is timed in alternation with it. One thread, as a data-loader worker
runs (OpenCV is set to one thread there too).

    python benchmarks/bench_data.py [--images 64] [--repeats 5] [--min-size 800 --max-size 1333]

A GPU step of ATSS R-50 at 16 images per 8 GPUs takes about 0.3-0.4 s, i.e. a
GPU consumes 2 images per step: divide by the images per second printed here to
get the workers one GPU needs.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import cv2
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from atss_core.data.datasets.coco import read_image_file  # noqa: E402
from atss_core.data.transforms.transforms import Normalize, ToTensor, get_size, resize_image  # noqa: E402

MEAN = (102.9801, 115.9465, 122.7717)


def pipeline_pillow(path, min_size, max_size, to_tensor, normalize):
    image = resize_image(read_image_file(path), min_size, max_size)
    image = image[:, ::-1]
    tensor, _ = to_tensor(image)
    return normalize(tensor)[0]


def pipeline_opencv(path, min_size, max_size, to_tensor, normalize):
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    h, w = get_size((image.shape[1], image.shape[0]), min_size, max_size)
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    image = cv2.flip(image, 1)
    tensor, _ = to_tensor(image)
    return normalize(tensor)[0]


def images_per_second(fn, paths, *args):
    start = time.perf_counter()
    for path in paths:
        fn(path, *args)
    return len(paths) / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-dir", default=os.path.join(REPO_ROOT, "..", "shared", "data", "coco128",
                                                            "train2017"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.image_dir):
        sys.exit(f"--image-dir {args.image_dir} does not exist (the coco128 train2017 folder)")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = sorted(os.path.join(args.image_dir, n) for n in os.listdir(args.image_dir))[:args.images]
    to_tensor, normalize = ToTensor(), Normalize(MEAN, (1.0, 1.0, 1.0))
    common = (args.min_size, args.max_size, to_tensor, normalize)
    for fn in (pipeline_pillow, pipeline_opencv):  # warm-up (file cache, allocator)
        images_per_second(fn, paths[:4], *common)
    rates = {"pillow": [], "opencv": []}
    for _ in range(args.repeats):  # alternate, so that load changes hit both
        rates["pillow"].append(images_per_second(pipeline_pillow, paths, *common))
        rates["opencv"].append(images_per_second(pipeline_opencv, paths, *common))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{len(paths)} coco128 images to {args.min_size}/{args.max_size}, one thread, "
          f"median of {args.repeats} (min-max), images per second per worker:")
    for name, values in rates.items():
        print(f"  {name:7s} {statistics.median(values):6.1f} ({min(values):.1f}-{max(values):.1f})")
    ratio = [p / o for p, o in zip(rates["pillow"], rates["opencv"])]
    print(f"  pillow / opencv throughput: {statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})")
    return rates


if __name__ == "__main__":
    main()

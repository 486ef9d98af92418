r"""ONNX Runtime against PyTorch eager on the CPU, side by side, for one model and image size.

    python benchmarks/bench_export.py --config-file configs/atss/atss_R_50_FPN_1x.yaml --threads 2

What is timed, per image, from the same uint8 BGR image (already resized) to
the final detections:

* PyTorch: ``Normalize`` + ``to_image_list`` (padding) + ``model(images)`` under
  ``torch.no_grad`` (backbone, FPN, head, post-processing with the compiled NMS);
* ONNX Runtime: ``session.run`` of the graph written by ``tools/export_model.py``
  (the same steps inside the graph), CPU execution provider.

The two alternate (PyTorch, ONNX, PyTorch, ONNX, ...) after ``--warmup``
untimed runs of each, so that both see the same machine state; the median and
the min-max of ``--iters`` runs are printed, with the ratio of the medians. Both
use ``--threads`` intra-op threads (``torch.set_num_threads``, ONNX Runtime's
``intra_op_num_threads``). ``OMP_WAIT_POLICY`` defaults to PASSIVE, as for the
tools: with the default active waiting, PyTorch's OpenMP threads spin, and on
a machine whose cores are busy with other work 2 threads took twice as long as 1.

Weights: ``--weights`` (a checkpoint for the config), else the shared synthetic
weights of the parity fixture (``../shared/reference``, R-50 configs), else
random ones (then ``--score-th 0`` makes the post-processing do its full work).
Image: ``--image`` resized by the reference rule, else the parity fixture's
photo (800x1201) when there, else a random image of ``--size``.
The detections of the two are compared (as sets) and the matched fraction printed.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before OpenMP starts (see above)

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from atss_core.data.transforms.transforms import Normalize, resize_image  # noqa: E402
from atss_core.export.exporter import compare_detections, export_onnx, onnx_session, run_onnx  # noqa: E402
from atss_core.modeling.detector import build_detection_model  # noqa: E402
from atss_core.structures.image_list import to_image_list  # noqa: E402
from atss_core.utils.checkpoint import DetectronCheckpointer  # noqa: E402
from bench_inference import load_config  # noqa: E402  (benchmarks/ is the script's folder)
from bench_kernels import cpu_name  # noqa: E402

REFERENCE = os.path.join(os.path.dirname(ROOT), "shared", "reference")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="ONNX Runtime vs PyTorch eager on the CPU")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", default=None, help="checkpoint (default: see the docstring)")
    parser.add_argument("--image", default=None, help="image file (default: see the docstring)")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"),
                        help="random image size when there is no image (default 800 1216)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both (default 2)")
    parser.add_argument("--iters", type=int, default=7, help="timed runs of each (default 7, at least 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each first (default 2)")
    parser.add_argument("--score-th", type=float, default=None, help="override MODEL.ATSS.INFERENCE_TH")
    parser.add_argument("--onnx", default=None, help="use this exported file instead of exporting")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.iters < 5 or args.threads < 1 or args.warmup < 0:
        parser.error("--iters must be >= 5, --threads >= 1, --warmup >= 0")
    return args


def load(args):
    cfg = load_config(args.config_file, ["MODEL.DEVICE", "cpu"], args.score_th)
    torch.manual_seed(0)
    model = build_detection_model(cfg).eval()
    weights = args.weights
    name = os.path.splitext(os.path.basename(args.config_file))[0]
    keys = os.path.join(REFERENCE, "keys", name + ".json")
    if weights is None and os.path.isfile(keys):
        sys.path.insert(0, REFERENCE)
        import reference_weights

        with open(keys) as f:
            state = reference_weights.make_state_dict(json.load(f))
        weights = os.path.join(tempfile.mkdtemp(), name + "_synthetic.pth")
        torch.save({"model": state}, weights)
        source = "the parity fixture's synthetic weights"
    else:
        source = weights or "random weights"
    if weights:
        DetectronCheckpointer(cfg, model).load(weights, use_latest=False)
    return cfg, model, source


def load_image(args, cfg):
    import cv2

    path = args.image
    fixture = os.path.join(REFERENCE, "parity", "r50_single.json")
    if path is None and os.path.isfile(fixture):
        with open(fixture) as f:
            path = os.path.join(REFERENCE, "parity", json.load(f)["images"][0]["png"])
    if path is None:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (1, *args.size, 3), dtype=torch.uint8, generator=g), "random"
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    image = resize_image(image, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return torch.from_numpy(np.ascontiguousarray(image))[None], os.path.basename(path)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, model, source = load(args)
    image, image_name = load_image(args, cfg)
    path = args.onnx
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), "atss.onnx")
        export_onnx(model, cfg, path, image)
    session = onnx_session(path, threads=args.threads)
    normalize = Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, cfg.INPUT.TO_BGR255)

    def run_torch():
        x, _ = normalize(image[0].permute(2, 0, 1).float())
        with torch.no_grad():
            return model(to_image_list([x], cfg.DATALOADER.SIZE_DIVISIBILITY))[0]

    def run_ort():
        return run_onnx(session, image)

    for _ in range(args.warmup):
        run_torch()
        run_ort()
    times = {"pytorch": [], "onnxruntime": []}
    for _ in range(args.iters):
        for name, fn in (("pytorch", run_torch), ("onnxruntime", run_ort)):
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            if name == "pytorch":
                ref = result
            else:
                out = result
    matched = compare_detections(out["boxes"], out["scores"], out["labels"], ref.bbox,
                                 ref.get_field("scores"), ref.get_field("labels"))
    h, w = image.shape[1:3]
    print(f"{args.config_file} ({source}), image {image_name} {h}x{w}, {args.threads} threads, "
          f"{args.iters} alternating runs each after {args.warmup} warm-up")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    summary = {}
    for name, values in times.items():
        ms = [1000 * v for v in values]
        summary[name] = {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}
        print(f"  {name:12s} median {statistics.median(ms):8.1f} ms  (min {min(ms):.1f}, max {max(ms):.1f})")
    ratio = summary["pytorch"]["median_ms"] / summary["onnxruntime"]["median_ms"]
    print(f"  PyTorch / ONNX Runtime median time: {ratio:.2f}x; detections {len(out['boxes'])} vs {len(ref)}, "
          f"matched {matched[0]:.1%} / {matched[1]:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config_file, "image": image_name, "size": [h, w], "threads": args.threads,
                       "iters": args.iters, "times": summary, "ratio": ratio, "matched": matched}, f, indent=1)
    return summary


if __name__ == "__main__":
    main()

r"""Export a trained ATSS detector as one ONNX graph (or a ``torch.export`` program).

    python tools/export_model.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        --format onnx --output atss.onnx MODEL.WEIGHT ATSS_R_50_FPN_1x.pth

The graph takes a uint8 BGR image ``[1, H, W, 3]`` already resized by the
reference rule (shorter side INPUT.MIN_SIZE_TEST, longer side at most
INPUT.MAX_SIZE_TEST, Pillow bilinear), H and W dynamic, and returns ``boxes``
[K, 4] (xyxy in that image's pixels), ``scores`` [K] and ``labels`` [K]
(1..NUM_CLASSES-1), by descending score: normalisation, padding, backbone,
FPN, head, anchors, decoding, thresholds, class-wise NMS (the standard
NonMaxSuppression operator) and the final top-N are all inside. See
docs/DEPLOY.md.

After writing an ONNX file the tool runs it in ONNX Runtime on the example
image and compares with the PyTorch model (``--no-verify`` skips this).
Options go before the config ``KEY VALUE`` pairs. Errors end with one
``export_model.py: error: ...`` line and exit status 2; a failed verification
exits with status 1.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atss_core.config import ConfigError  # noqa: E402
from atss_core.engine import defaults  # noqa: E402
from atss_core.engine.defaults import config_from_args, default_argument_parser  # noqa: E402
from atss_core.export import ExportError  # noqa: E402
from atss_core.modeling.detector import build_detection_model  # noqa: E402
from atss_core.utils.checkpoint import CheckpointError, DetectronCheckpointer  # noqa: E402
from atss_core.utils.weights_check import NonFiniteWeightsError, check_finite_state_dict  # noqa: E402

TOOL_ERRORS = (ConfigError, CheckpointError, ExportError, FileNotFoundError, NonFiniteWeightsError)

EXAMPLES = """\
  # ONNX, opset 17 (19 for DCNv2 models), traced on a random 800x1066 image
  python tools/export_model.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \\
      --format onnx --output atss.onnx MODEL.WEIGHT ATSS_R_50_FPN_1x.pth
  # traced and verified on a real image (resized by the reference rule)
  python tools/export_model.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \\
      --format onnx --output atss.onnx --image demo.jpg MODEL.WEIGHT ATSS_R_50_FPN_1x.pth
  # a torch.export program (.pt2), to load with torch.export.load after `import atss_core`
  python tools/export_model.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \\
      --format torch_export --output atss.pt2 MODEL.WEIGHT ATSS_R_50_FPN_1x.pth
"""
OUTPUT_HELP = """\
  --output receives the model (ONNX: one .onnx file with the weights inside).
  The tool prints the input and output contract and, for ONNX, the verification.
"""


class VerificationFailed(RuntimeError):
    pass


def parse_args(argv=None):
    parser = default_argument_parser(
        "Export the whole ATSS detector (preprocessing to final detections) as one ONNX graph "
        "or a torch.export program.", EXAMPLES, OUTPUT_HELP)
    parser.add_argument("--format", choices=("onnx", "torch_export"), default="onnx",
                        help="onnx (default): one ONNX graph for ONNX Runtime; torch_export: "
                             "torch.export.save program (.pt2)")
    parser.add_argument("--output", required=True, metavar="FILE", help="file to write")
    parser.add_argument("--opset", type=int, default=None, metavar="N",
                        help="ONNX opset, 11..20 (default 17; 19, the least, for DCNv2 models)")
    parser.add_argument("--height", type=int, default=None,
                        help="height of the random example image the graph is traced with "
                             "(default: the test size of a 640x480 image, 800 for the COCO configs); "
                             "the exported graph takes any size")
    parser.add_argument("--width", type=int, default=None, help="its width (default 1066 for the COCO configs)")
    parser.add_argument("--image", default=None, metavar="FILE",
                        help="trace and verify on this image (resized by the reference rule) "
                             "instead of a random one")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="do not run the ONNX file in ONNX Runtime against PyTorch after writing it")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="export even when MODEL.WEIGHT holds backbone weights only "
                             "(the detection head is then random)")
    return defaults.parse_args(parser, argv)


def load_model(args):
    cfg = config_from_args(args)
    cfg.MODEL.DEVICE = "cpu"
    if not cfg.MODEL.WEIGHT:
        raise ConfigError("MODEL.WEIGHT is empty: pass the trained weights, e.g. "
                          "MODEL.WEIGHT ATSS_R_50_FPN_1x.pth")
    if cfg.MODEL.WEIGHT.startswith("catalog://") and not args.allow_untrained:
        raise ConfigError(f"MODEL.WEIGHT is {cfg.MODEL.WEIGHT}, ImageNet backbone weights: the detection "
                          "head would be random. Pass the trained detector, e.g. MODEL.WEIGHT "
                          "ATSS_R_50_FPN_1x.pth (or --allow-untrained)")
    if cfg.TEST.BBOX_AUG.ENABLED:
        raise ExportError("TEST.BBOX_AUG.ENABLED is True: test-time augmentation is not exported (the "
                          "graph runs the single-scale test); pass TEST.BBOX_AUG.ENABLED False")
    cfg.freeze()
    model = build_detection_model(cfg).eval()
    checkpointer = DetectronCheckpointer(cfg, model, save_to_disk=False)
    checkpointer.load(cfg.MODEL.WEIGHT, use_latest=False)
    if checkpointer.loaded_layout != "model" and not args.allow_untrained:
        raise CheckpointError(
            f"MODEL.WEIGHT {cfg.MODEL.WEIGHT} holds backbone weights only: the detection head would "
            "be random. Pass a trained detector's checkpoint (or --allow-untrained)")
    check_finite_state_dict(model.state_dict(), cfg.MODEL.WEIGHT)
    return cfg, model


def read_image(path):
    import cv2

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--image {path}: no such file")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ExportError(f"--image {path}: not an image OpenCV can read")
    return image


def verify_onnx(model, cfg, path, example):
    """Run ``path`` in ONNX Runtime and the PyTorch model on ``example``; print
    and return the matched fractions."""
    from atss_core.data.transforms.transforms import Normalize
    from atss_core.export.exporter import compare_detections, onnx_session, run_onnx
    from atss_core.structures.image_list import to_image_list

    session = onnx_session(path)
    start = time.perf_counter()
    out = run_onnx(session, example)
    ort_s = time.perf_counter() - start
    normalize = Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, cfg.INPUT.TO_BGR255)
    image, _ = normalize(example[0].permute(2, 0, 1).float())
    with torch.no_grad():
        start = time.perf_counter()
        ref = model(to_image_list([image], cfg.DATALOADER.SIZE_DIVISIBILITY))[0]
        torch_s = time.perf_counter() - start
    ours, theirs = compare_detections(out["boxes"], out["scores"], out["labels"], ref.bbox,
                                      ref.get_field("scores"), ref.get_field("labels"))
    print(f"verified on {example.shape[1]}x{example.shape[2]}: ONNX Runtime {len(out['boxes'])} detections "
          f"({ort_s:.2f} s), PyTorch {len(ref)} ({torch_s:.2f} s); matched (same label, IoU > 0.99, "
          f"score within 1e-3): {ours:.1%} of ONNX's, {theirs:.1%} of PyTorch's")
    if min(ours, theirs) < 0.99:
        raise VerificationFailed(
            f"the ONNX model's detections differ from PyTorch's ({ours:.1%} / {theirs:.1%} matched)")
    return ours, theirs


def main(argv=None):
    from atss_core.export.exporter import example_image, export_onnx, export_torch

    args = parse_args(argv)
    cfg, model = load_model(args)
    image = read_image(args.image) if args.image else None
    example = example_image(cfg, args.height, args.width, image)
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--output {args.output}: folder {folder} does not exist")
    start = time.perf_counter()
    if args.format == "onnx":
        opset = export_onnx(model, cfg, args.output, example, opset=args.opset)
        what = f"ONNX opset {opset}"
    else:
        if args.opset is not None:
            raise ConfigError("--opset is for --format onnx")
        export_torch(model, cfg, args.output, example)
        what = "torch.export program"
    size_mb = os.path.getsize(args.output) / 2 ** 20
    print(f"wrote {args.output} ({what}, {size_mb:.1f} MiB) in {time.perf_counter() - start:.1f} s, "
          f"traced on {example.shape[1]}x{example.shape[2]}")
    print(f"  input  image: uint8 [1, H, W, 3] BGR, resized so that the shorter side is "
          f"{cfg.INPUT.MIN_SIZE_TEST} and the longer at most {cfg.INPUT.MAX_SIZE_TEST} (Pillow bilinear)")
    print(f"  output boxes float32 [K, 4] xyxy in the input's pixels, scores float32 [K], labels int64 [K] "
          f"in 1..{cfg.MODEL.ATSS.NUM_CLASSES - 1}; K <= {cfg.TEST.DETECTIONS_PER_IMG}, by descending score")
    if args.format == "onnx" and args.verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("not verified: onnxruntime is not installed (pip install -e .[export])")
        else:
            verify_onnx(model, cfg, args.output, example)
    return 0


def cli(argv=None):
    try:
        return main(argv)
    except TOOL_ERRORS as e:
        print(f"export_model.py: error: {e}", file=sys.stderr)
        return 2
    except VerificationFailed as e:
        print(f"export_model.py: verification failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())

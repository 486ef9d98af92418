"""Run an ATSS detector on a folder of images.

    python demo/atss_demo.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        --weights ATSS_R_50_FPN_1x.pth --images-dir demo/images --output-dir demo/out \
        MODEL.DEVICE cpu

With ``--output-dir`` each image is written there with its boxes, class names
and scores drawn (works without a display); without it the images are shown in
a window. Per-class thresholds: ``--class-thresholds FILE`` (from
``tools/compute_class_thresholds.py``); other classes use
``--confidence-threshold``.
"""
import argparse
import os
import sys

import cv2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atss_core.config import cfg as default_cfg, validate_config  # noqa: E402
from demo.predictor import ATSSDemo  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


EXAMPLES = """\
examples:
  # a released checkpoint on your images, pictures written to my_images_out/
  python demo/atss_demo.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \\
      --weights ATSS_R_50_FPN_1x.pth --images-dir my_images --output-dir my_images_out MODEL.DEVICE cpu
  # the model of the quick start
  python demo/atss_demo.py --config-file configs/atss/quick_start/atss_R_18_shapes.yaml \\
      --weights training_dir/quick_start/model_final.pth --images-dir datasets/shapes/val \\
      --output-dir training_dir/quick_start/demo MODEL.DEVICE cpu

The network input size is the config's INPUT.MIN_SIZE_TEST / INPUT.MAX_SIZE_TEST (what
tools/test_net.py uses) unless --min-image-size is given. MODEL.DEVICE defaults to cuda.
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Run an ATSS detector on a folder of images and draw its detections.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML config of the model")
    parser.add_argument("--weights", default="", metavar="FILE",
                        help="checkpoint to load (default: the config's MODEL.WEIGHT)")
    parser.add_argument("--images-dir", required=True, metavar="DIR",
                        help=f"folder of images to run on ({', '.join(IMAGE_EXTENSIONS)})")
    parser.add_argument("--output-dir", default="", metavar="DIR",
                        help="write the drawn images here as <name>.jpg (default: show them in a window; "
                             "Esc stops)")
    parser.add_argument("--min-image-size", type=int, default=None, metavar="PIXELS",
                        help="shorter side of the network input (default: the config's INPUT.MIN_SIZE_TEST)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, metavar="SCORE",
                        help="score threshold of the classes without a per-class threshold (default: 0.5)")
    parser.add_argument("--class-thresholds", default="", metavar="FILE",
                        help="JSON {class name: threshold} file, from tools/compute_class_thresholds.py "
                             "(default: none)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config options to override, e.g. MODEL.DEVICE cpu")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = default_cfg.clone()
    cfg.merge_from_file(args.config_file)
    size = [] if args.min_image_size is None else ["INPUT.MIN_SIZE_TEST", args.min_image_size]
    cfg.merge_from_list(size + list(args.opts))
    validate_config(cfg)
    cfg.freeze()
    if not os.path.isdir(args.images_dir):
        sys.exit(f"--images-dir {args.images_dir} is not a folder")
    names = sorted(n for n in os.listdir(args.images_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        sys.exit(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.images_dir}")
    demo = ATSSDemo(cfg, weights=args.weights or None, confidence_threshold=args.confidence_threshold,
                    class_thresholds=args.class_thresholds or None)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
    done = 0
    for name in names:
        path = os.path.join(args.images_dir, name)
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            print(f"skipping {path}: not a readable image", file=sys.stderr)
            continue
        drawn, detections, seconds = demo.run_on_image(image)
        print(f"{name}: {len(detections)} detections, inference time {seconds * 1000:.1f} ms")
        if args.output_dir:
            cv2.imwrite(os.path.join(args.output_dir, os.path.splitext(name)[0] + ".jpg"), drawn)
        else:
            try:
                cv2.imshow("ATSS detections", drawn)
            except cv2.error:
                sys.exit("cannot open a window here (no display, or opencv-headless): pass --output-dir")
            if cv2.waitKey(0) == 27:  # Esc stops
                break
        done += 1
    if not args.output_dir:
        cv2.destroyAllWindows()
    where = f": the pictures are in {os.path.abspath(args.output_dir)}" if args.output_dir else ""
    print(f"processed {done} of {len(names)} images{where}")


if __name__ == "__main__":
    main()

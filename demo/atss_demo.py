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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="ATSS demo on a folder of images")
    parser.add_argument("--config-file", required=True, help="path to a config file")
    parser.add_argument("--weights", default="", help="checkpoint to load (default: MODEL.WEIGHT)")
    parser.add_argument("--images-dir", required=True, help="folder of images to run on")
    parser.add_argument("--output-dir", default="", help="write the drawn images here instead of showing them")
    parser.add_argument("--min-image-size", type=int, default=800, help="shorter side of the network input")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="score threshold of classes without a per-class threshold")
    parser.add_argument("--class-thresholds", default="",
                        help="JSON {class name: threshold} file (tools/compute_class_thresholds.py)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config options (KEY VALUE ...)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = default_cfg.clone()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", args.min_image_size] + list(args.opts))
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
    print(f"processed {done} of {len(names)} images")


if __name__ == "__main__":
    main()

"""Run an ATSS detector on a folder of images.

    python demo/atss_demo.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        --weights ATSS_R_50_FPN_1x.pth --images-dir demo/images --output-dir demo/out \
        MODEL.DEVICE cpu

With ``--output-dir`` each image is written there with its boxes, class names
and scores drawn (works without a display); without it the images are shown in
a window. Per-class thresholds: ``--class-thresholds FILE`` (from
``tools/compute_class_thresholds.py``); other classes use
``--confidence-threshold``.

Output files: each drawn image keeps the name of its input and is encoded in
the same format (``a.jpg`` -> ``OUTPUT_DIR/a.jpg``, ``b.png`` ->
``OUTPUT_DIR/b.png``), so two inputs never share an output. The inputs are never
written over: an ``--output-dir`` that is (or resolves to) the ``--images-dir``
is refused, and so is a run that would replace files already in the output
folder, unless ``--overwrite`` is given. Each file is written to a temporary
name and renamed, so a replaced output is a new file (a link to an input is
replaced, not followed).

Weights: ``--weights`` (default: the config's ``MODEL.WEIGHT``) must be a
trained detector. No weights, or ImageNet backbone weights only (a
``catalog://`` name, a Caffe2 ``.pkl``, a torchvision ResNet), would leave the
detection head randomly initialised: refused unless ``--allow-untrained``.

The detections are those of ``atss_core.engine.Predictor`` (the Python API,
docs/DEPLOY.md), one image at a time; the images are decoded with
``cv2.imread``, which applies their EXIF orientation, as the reference demo.

Mistakes (a missing folder, no images, an output folder that would overwrite
something, a bad config, weights or thresholds file) print one line
``atss_demo.py: error: ...`` and exit with status 2.
"""
import argparse
import math
import os
import sys
import tempfile
import time

import cv2
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atss_core.config import ConfigError  # noqa: E402
from atss_core.config import cfg as default_cfg, validate_config  # noqa: E402
from atss_core.config.paths_catalog import DatasetNotFoundError  # noqa: E402
from atss_core.engine.coco_eval import EvaluationError  # noqa: E402
from atss_core.engine.predictor import Predictor  # noqa: E402
from atss_core.utils.checkpoint import CheckpointError  # noqa: E402
from atss_core.utils.visualize import draw_detections  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_MAX_LISTED = 5


class DemoError(Exception):
    """A mistake of the user's: reported in one line, exit status 2."""


# Errors reported as one line with exit status 2 (anything else keeps its traceback).
USER_ERRORS = (DemoError, ConfigError, CheckpointError, EvaluationError, DatasetNotFoundError,
               FileNotFoundError)


EXAMPLES = """\
examples:
  # a released checkpoint on your images, pictures written to my_images_out/
  python demo/atss_demo.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \\
      --weights ATSS_R_50_FPN_1x.pth --images-dir my_images --output-dir my_images_out MODEL.DEVICE cpu
  # the model of the quick start
  python demo/atss_demo.py --config-file configs/atss/quick_start/atss_R_18_shapes.yaml \\
      --weights training_dir/quick_start/model_final.pth --images-dir datasets/shapes/val \\
      --output-dir training_dir/quick_start/demo MODEL.DEVICE cpu

output files: OUTPUT_DIR/<input file name>, in the input's format (a.jpg -> a.jpg, b.png ->
b.png). --output-dir may not be --images-dir (the inputs are never written over), and files
already in OUTPUT_DIR are not replaced unless --overwrite is given.

The network input size is the config's INPUT.MIN_SIZE_TEST / INPUT.MAX_SIZE_TEST (what
tools/test_net.py uses) unless --min-image-size is given. MODEL.DEVICE defaults to cuda.
The weights must be a trained detector: without weights, or with ImageNet backbone weights
only (catalog://...), the demo stops unless --allow-untrained is given.
Mistakes print "atss_demo.py: error: ..." and exit with status 2.
"""


def _probability(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"{text} is not a score between 0 and 1")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of pixels")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Run an ATSS detector on a folder of images and draw its detections.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="YAML config of the model (.yaml / .yml)")
    parser.add_argument("--weights", default="", metavar="FILE",
                        help="trained checkpoint to load (default: the config's MODEL.WEIGHT)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="run even without a trained detector (no weights, or ImageNet backbone "
                             "weights only): the detection head is random and so are its detections")
    parser.add_argument("--images-dir", required=True, metavar="DIR",
                        help=f"folder of images to run on ({', '.join(IMAGE_EXTENSIONS)}); never written to")
    parser.add_argument("--output-dir", default="", metavar="DIR",
                        help="write the drawn images here, each under its input's file name and in its "
                             "format (a.jpg -> DIR/a.jpg, b.png -> DIR/b.png); must not be --images-dir "
                             "(default: show them in a window; Esc stops)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files of the same names already in --output-dir (default: stop "
                             "without writing anything)")
    parser.add_argument("--min-image-size", type=_positive_int, default=None, metavar="PIXELS",
                        help="shorter side of the network input (default: the config's INPUT.MIN_SIZE_TEST)")
    parser.add_argument("--confidence-threshold", type=_probability, default=0.5, metavar="SCORE",
                        help="score threshold of the classes without a per-class threshold (default: 0.5)")
    parser.add_argument("--class-thresholds", default="", metavar="FILE",
                        help="JSON {class name: threshold} file, from tools/compute_class_thresholds.py "
                             "(default: none)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config options to override, e.g. MODEL.DEVICE cpu (after the --options)")
    args = parser.parse_args(argv)
    flags = [opt for opt in args.opts if opt.startswith("--")]
    if flags:  # argparse would take them as config keys
        parser.error(f"{' '.join(flags)}: put the --options before the config KEY VALUE pairs")
    return args


def _listing(paths):
    more = f" and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
    return ", ".join(paths[:_MAX_LISTED]) + more


def _same_folder(a, b):
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # b does not exist yet
        return False


def list_images(images_dir):
    """The image file names of ``images_dir``, sorted; DemoError when there are none."""
    if not os.path.isdir(images_dir):
        raise DemoError(f"--images-dir {images_dir} is not a folder")
    try:
        names = sorted(n for n in os.listdir(images_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
    except OSError as e:
        raise DemoError(f"cannot list --images-dir {images_dir}: {e.strerror}") from None
    if not names:
        raise DemoError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    return names


def check_output_dir(output_dir, images_dir, names, overwrite):
    """Refuse (DemoError) an output folder that is the input folder, and, without
    ``overwrite``, one that already holds files the run would write. Returns
    ``{input name: output path}``; the folder is created by :func:`make_output_dir`."""
    if _same_folder(images_dir, output_dir):
        raise DemoError(
            f"--output-dir {output_dir} is the --images-dir {images_dir}: the drawn images would "
            "overwrite the originals. Choose another --output-dir, e.g. "
            f"{os.path.normpath(images_dir)}_detections"
        )
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DemoError(f"--output-dir {output_dir} exists and is not a folder")
    targets = {name: os.path.join(output_dir, name) for name in names}
    existing = [path for path in targets.values() if os.path.lexists(path)]
    if existing and not overwrite:
        raise DemoError(
            f"--output-dir {output_dir} already holds {len(existing)} of the files this run writes "
            f"({_listing(existing)}); nothing was written. Pass --overwrite to replace them, or "
            "choose another --output-dir"
        )
    return targets


def make_output_dir(output_dir):
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise DemoError(f"cannot create --output-dir {output_dir}: {e.strerror}") from None


def write_image(path, image):
    """Encode ``image`` in the format of ``path``'s extension and write it
    atomically (temporary file in the same folder, renamed over ``path``: an
    existing file or link there is replaced, never written through)."""
    ok, data = cv2.imencode(os.path.splitext(path)[1], image)
    if not ok:
        raise DemoError(f"cannot encode {path} in the {os.path.splitext(path)[1]} format")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.tobytes())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def build_config(args):
    if not os.path.isfile(args.config_file):
        raise DemoError(f"--config-file {args.config_file}: no such file (the configs are in configs/atss/)")
    cfg = default_cfg.clone()
    cfg.merge_from_file(args.config_file)
    size = [] if args.min_image_size is None else ["INPUT.MIN_SIZE_TEST", args.min_image_size]
    cfg.merge_from_list(size + list(args.opts))
    validate_config(cfg)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise DemoError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE} but torch sees no GPU; add MODEL.DEVICE cpu")
    cfg.freeze()
    return cfg


def run(args):
    """The demo; raises the errors of USER_ERRORS for the user's mistakes."""
    cfg = build_config(args)
    names = list_images(args.images_dir)
    targets = check_output_dir(args.output_dir, args.images_dir, names, args.overwrite) if args.output_dir else {}
    if args.class_thresholds and not os.path.isfile(args.class_thresholds):
        raise DemoError(f"--class-thresholds {args.class_thresholds}: no such file")
    # The Predictor refuses untrained weights (UntrainedModelError), before
    # building the model when their name says so.
    predictor = Predictor(cfg, weights=args.weights or cfg.MODEL.WEIGHT,
                          score_threshold=args.confidence_threshold,
                          class_thresholds=args.class_thresholds or None, batch_size=1,
                          allow_untrained=args.allow_untrained)
    if args.output_dir:  # created only once the model is ready
        make_output_dir(args.output_dir)
    done = 0
    for name in names:
        path = os.path.join(args.images_dir, name)
        # cv2.imread applies the EXIF orientation, as the reference demo does
        # (Predictor.predict(path) decodes like the datasets, without it).
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            print(f"skipping {path}: not a readable image", file=sys.stderr)
            continue
        start = time.perf_counter()
        detections = predictor.predict(image)
        seconds = time.perf_counter() - start
        drawn = draw_detections(image, detections)
        print(f"{name}: {len(detections)} detections, inference time {seconds * 1000:.1f} ms")
        if args.output_dir:
            write_image(targets[name], drawn)
        else:
            try:
                cv2.imshow("ATSS detections", drawn)
            except cv2.error:
                raise DemoError("cannot open a window here (no display, or opencv-headless): "
                                "pass --output-dir") from None
            if cv2.waitKey(0) == 27:  # Esc stops
                break
        done += 1
    if not args.output_dir:
        cv2.destroyAllWindows()
    where = f": the pictures are in {os.path.abspath(args.output_dir)}" if args.output_dir else ""
    print(f"processed {done} of {len(names)} images{where}")
    return done


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except USER_ERRORS as e:
        message = e.args[0] if isinstance(e, FileNotFoundError) and len(e.args) == 1 else str(e)
        print(f"atss_demo.py: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

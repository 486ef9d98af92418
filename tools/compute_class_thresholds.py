r"""Per-class score thresholds that maximise the F-measure, from an evaluation.

    python tools/compute_class_thresholds.py \
        --results training_dir/atss_R_50_FPN_1x/inference/coco_2017_val/bbox.json \
        --dataset coco_2017_val --output class_thresholds.json

``--results`` is a COCO results file (``bbox.json`` of ``tools/test_net.py``);
the ground truth is ``--ann-file`` or the annotation file of the catalog
dataset ``--dataset``. The output is ``{class name: threshold}`` (contiguous id
order), the format of ``demo/atss_demo.py --class-thresholds``; a detection is
kept when ``score >= threshold``. How thresholds are chosen:
:mod:`atss_core.engine.thresholds` and docs/EVALUATION.md. Errors of the
inputs end with one ``compute_class_thresholds.py: error: ...`` line and exit
status 2.
"""
import argparse
import dataclasses
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atss_core.engine.defaults import run_tool  # noqa: E402
from atss_core.config.paths_catalog import DatasetCatalog, DatasetNotFoundError  # noqa: E402
from atss_core.engine.coco_eval import (  # noqa: E402
    EvaluationError,
    load_coco_annotations,
    load_results_file,
)
from atss_core.engine.thresholds import (  # noqa: E402
    compute_class_thresholds,
    format_class_thresholds,
    save_class_thresholds,
)
from atss_core.utils.io import DiskFullError, atomic_write_json  # noqa: E402

# Errors of this framework that end the tool with one message (exit status 2);
# anything else keeps its traceback.
TOOL_ERRORS = (EvaluationError, DatasetNotFoundError, DiskFullError)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, metavar="FILE",
                        help="COCO results json (bbox.json of tools/test_net.py)")
    gt = parser.add_mutually_exclusive_group(required=True)
    gt.add_argument("--ann-file", metavar="FILE", help="COCO annotation json of the same images")
    gt.add_argument("--dataset", metavar="NAME",
                    help="catalog dataset whose annotation file to use (e.g. coco_2017_val)")
    parser.add_argument("--output", required=True, metavar="FILE",
                        help="where to write {class name: threshold}")
    parser.add_argument("--iou", type=float, default=0.5,
                        help="IoU for a detection to be a true positive (default 0.5)")
    parser.add_argument("--max-detections", type=int, default=100,
                        help="detections per image and class considered, as COCO's maxDets (100)")
    parser.add_argument("--default", type=float, default=0.5,
                        help="threshold of classes without ground truth or true positive (0.5)")
    parser.add_argument("--details", metavar="FILE",
                        help="also write per-class F1, precision, recall and counts as json")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger = logging.getLogger("atss_core.compute_class_thresholds")
    ann_file = args.ann_file or DatasetCatalog.get(args.dataset)["args"]["ann_file"]
    if args.dataset and not os.path.isfile(ann_file):
        raise EvaluationError(
            f"the annotation file {ann_file} of dataset {args.dataset!r} does not exist; set "
            "$ATSS_DATA_DIR to the folder holding the data or pass --ann-file"
        )
    coco_gt = load_coco_annotations(ann_file)
    results = load_results_file(args.results)
    thresholds = compute_class_thresholds(
        coco_gt, results, iou_threshold=args.iou, max_detections=args.max_detections,
        default=args.default, source=f"{args.results} (against {ann_file})",
    )
    logger.info("Per-class thresholds (IoU %.2f, max F1):\n%s", args.iou,
                format_class_thresholds(thresholds))
    save_class_thresholds(thresholds, args.output)
    logger.info("Wrote %s", args.output)
    if args.details:
        atomic_write_json([dataclasses.asdict(t) for t in thresholds], args.details, indent=2)
        logger.info("Wrote %s", args.details)
    return thresholds


def cli(argv=None):
    """:func:`main` as a command (exit status 2 and one line for :data:`TOOL_ERRORS`)."""
    return run_tool(main, "compute_class_thresholds.py", TOOL_ERRORS, argv)


if __name__ == "__main__":
    sys.exit(cli())

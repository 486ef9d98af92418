"""Per-class score thresholds that maximise the F-measure.

A detector evaluated with COCO AP keeps every detection down to a low score
(``MODEL.ATSS.INFERENCE_TH``); an application that shows detections needs one
threshold per class. From detections (COCO results, e.g. ``bbox.json``) and the
ground truth of the same images, for each category:

1. detections are matched to ground truth as ``COCOeval`` does, at one IoU
   threshold (default 0.5), over all object sizes, with at most
   ``max_detections`` (100) detections per image and category; crowd ground
   truth and the detections matched to it are ignored;
2. for each distinct score ``s``, the detections with ``score >= s`` give a
   precision P(s), a recall R(s) and F(s) = 2 P R / (P + R);
3. the threshold is the ``s`` with the highest F (the highest ``s`` on ties).

A category without ground truth, or with no true positive at any threshold,
gets ``default`` (its ``source`` says why).

File format (what ``demo/atss_demo.py --class-thresholds FILE`` and
``Predictor(class_thresholds=FILE)`` read): a JSON
object ``{class name: threshold}`` with one entry per category, in the order of
the contiguous ids 1..C (json category ids sorted ascending). A detection is
kept when ``score >= threshold[its class]``.
"""
import contextlib
import io
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

from atss_core.utils.io import atomic_write_json, read_json

from .coco_eval import EvaluationError, results_to_coco, has_annotations, validate_results

logger = logging.getLogger(__name__)


@dataclass
class ClassThreshold:
    """The chosen threshold of one category and the numbers behind it.

    ``source`` is "f1" (the F-maximising score), "no_ground_truth" or
    "no_true_positive" (``threshold`` is then the default). ``f1``,
    ``precision`` and ``recall`` are those of the detections with
    ``score >= threshold`` (0 for a default)."""

    name: str
    category_id: int
    threshold: float
    f1: float
    precision: float
    recall: float
    num_gt: int
    num_detections: int
    source: str


def _matches_per_category(coco_gt, results, iou_threshold, max_detections):
    """json category id -> (scores [D], is_true_positive [D] bool, num_gt) of
    the non-ignored detections and ground truth."""
    coco_eval = COCOeval(coco_gt, results_to_coco(coco_gt, results), "bbox")
    params = coco_eval.params
    params.iouThrs = np.array([iou_threshold], dtype=np.float64)
    params.areaRng = [[0.0, 1e10]]
    params.areaRngLbl = ["all"]
    params.maxDets = [max_detections]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
    # evaluate() turns params.catIds into numpy integers.
    per_category = {int(c): ([], [], 0) for c in params.catIds}
    for entry in coco_eval.evalImgs:
        if entry is None:
            continue
        category_id = int(entry["category_id"])
        scores, tps, num_gt = per_category[category_id]
        kept = ~np.asarray(entry["dtIgnore"], dtype=bool).reshape(1, -1)[0]
        matched = np.asarray(entry["dtMatches"]).reshape(1, -1)[0] > 0
        scores.append(np.asarray(entry["dtScores"], dtype=np.float64)[kept])
        tps.append(matched[kept])
        num_gt += int((~np.asarray(entry["gtIgnore"], dtype=bool)).sum())
        per_category[category_id] = (scores, tps, num_gt)
    return {
        c: (
            np.concatenate(s) if s else np.zeros(0),
            np.concatenate(t) if t else np.zeros(0, dtype=bool),
            n,
        )
        for c, (s, t, n) in per_category.items()
    }


def best_f1_threshold(scores, is_tp, num_gt):
    """(threshold, f1, precision, recall) maximising F over thresholds at the
    detection scores (keep ``score >= threshold``), or None when there is no
    ground truth or no true positive.

    Args:
        scores (ndarray [D]): detection scores.
        is_tp (ndarray [D] bool): whether each detection matches ground truth.
        num_gt (int): number of (non-ignored) ground-truth boxes.
    """
    if num_gt == 0 or not np.any(is_tp):
        return None
    order = np.argsort(-scores, kind="mergesort")
    scores, is_tp = scores[order], is_tp[order]
    tp = np.cumsum(is_tp)
    fp = np.cumsum(~is_tp)
    # A threshold keeps every detection of its score: evaluate at the last of ties.
    last_of_score = np.append(scores[1:] != scores[:-1], True)
    tp, fp, scores = tp[last_of_score], fp[last_of_score], scores[last_of_score]
    precision = tp / (tp + fp)
    recall = tp / num_gt
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    best = int(np.argmax(f1))
    return float(scores[best]), float(f1[best]), float(precision[best]), float(recall[best])


def compute_class_thresholds(coco_gt, results, iou_threshold=0.5, max_detections=100, default=0.5,
                             source="results"):
    """Per-category F-maximising thresholds (see the module docstring).

    Args:
        coco_gt (COCO): ground truth with ``"annotations"``.
        results (list[dict]): COCO results format (``bbox.json``).
        iou_threshold (float): IoU for a detection to count as a true positive.
        max_detections (int): per image and category, as COCOeval's maxDets.
        default (float): threshold of categories without evidence.
        source (str): names the results in error messages.

    Returns:
        list[ClassThreshold] in json category id order (= contiguous ids 1..C).
    """
    if not has_annotations(coco_gt):
        raise EvaluationError(
            f"{source}: the annotation file has no ground truth ('annotations'); thresholds "
            "need an annotated split such as val"
        )
    if not 0.0 < iou_threshold <= 1.0:
        raise EvaluationError(f"the IoU threshold must lie in (0, 1], got {iou_threshold}")
    if not 0.0 <= default <= 1.0:
        raise EvaluationError(f"the default threshold must lie in [0, 1], got {default}")
    validate_results(results, coco_gt, source)
    per_category = _matches_per_category(coco_gt, results, iou_threshold, max_detections)
    out = []
    for category_id in sorted(per_category):
        scores, is_tp, num_gt = per_category[category_id]
        name = coco_gt.cats[category_id]["name"]
        best = best_f1_threshold(scores, is_tp, num_gt)
        if best is None:
            why = "no_ground_truth" if num_gt == 0 else "no_true_positive"
            out.append(ClassThreshold(name, category_id, float(default), 0.0, 0.0, 0.0,
                                      num_gt, len(scores), why))
        else:
            threshold, f1, precision, recall = best
            out.append(ClassThreshold(name, category_id, threshold, f1, precision, recall,
                                      num_gt, len(scores), "f1"))
    return out


def thresholds_to_dict(class_thresholds):
    """``{class name: threshold}`` in contiguous id order (the file format)."""
    out = OrderedDict()
    for t in class_thresholds:
        if t.name in out:
            raise EvaluationError(
                f"two categories are named {t.name!r}; per-class threshold files are keyed by "
                "name, so category names must be unique"
            )
        out[t.name] = t.threshold
    return out


def save_class_thresholds(class_thresholds, path):
    """Write the ``{class name: threshold}`` file atomically."""
    atomic_write_json(thresholds_to_dict(class_thresholds), path, indent=2)


def format_class_thresholds(class_thresholds):
    """A table of the thresholds and their precision / recall / F, for the log."""
    width = max((len(t.name) for t in class_thresholds), default=5)
    lines = [f"{'class':<{width}} | thresh |   F1  |  prec |  rec  |   gt |  dets | source"]
    for t in class_thresholds:
        lines.append(
            f"{t.name:<{width}} | {t.threshold:6.3f} | {t.f1:5.3f} | {t.precision:5.3f} | "
            f"{t.recall:5.3f} | {t.num_gt:4d} | {t.num_detections:5d} | {t.source}"
        )
    return "\n".join(lines)


def load_class_thresholds(source, class_names, default=None):
    """Per-class thresholds for a model with ``class_names``, from a
    ``{class name: threshold}`` file or mapping.

    Args:
        source (str, os.PathLike or Mapping): the JSON file, or the
            ``{class name: threshold}`` mapping itself.
        class_names (list[str]): names of the contiguous ids 1..C, in order
            (``class_names[0]`` is class 1).
        default (float or None): threshold of classes ``source`` does not
            list; None makes a missing class an error.

    Returns:
        Tensor [C + 1] float32: ``thresholds[label]`` for labels 1..C (index 0,
        the background, is 0 and unused). Keep a detection when
        ``score >= thresholds[label]``.
    """
    if isinstance(source, Mapping):
        data, what = source, "the class_thresholds mapping"
    else:
        path = os.fspath(source)
        what = f"the class thresholds file {path}"
        data = read_json(path, f"class thresholds file {path}", EvaluationError)
    if not isinstance(data, Mapping):
        raise EvaluationError(
            f"{what} must hold an object {{class name: threshold}}, got {type(data).__name__}"
        )
    unknown = [name for name in data if name not in class_names]
    if unknown:
        raise EvaluationError(
            f"{what} names classes the model does not have: "
            f"{', '.join(map(repr, unknown[:10]))}; known classes: {', '.join(class_names[:10])}..."
        )
    missing = [name for name in class_names if name not in data]
    if missing and default is None:
        raise EvaluationError(
            f"{what} lacks the classes "
            f"{', '.join(map(repr, missing[:10]))}{' ...' if len(missing) > 10 else ''}; "
            "add them or give a default threshold"
        )
    thresholds = torch.zeros(len(class_names) + 1, dtype=torch.float32)
    for i, name in enumerate(class_names, start=1):
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise EvaluationError(
                f"{what} gives {name!r} the threshold {value!r}; thresholds are scores in [0, 1]"
            )
        thresholds[i] = float(value)
    return thresholds

"""COCO box evaluation: the results file, pycocotools ``COCOeval`` and metrics.

Conventions
-----------
* Predictions given to this module are :class:`~atss_core.structures.BoxList` s
  in the pixels of the *original* image (``size`` is the (width, height) of the
  image entry of the annotation file), with fields ``"scores"`` (float) and
  ``"labels"`` (int64, contiguous ids 1..C as inside the model), keyed by
  dataset index.
* ``bbox.json`` is the COCO results format: a list of
  ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` where
  ``image_id`` and ``category_id`` are the ids of the annotation file
  (``category_id`` from ``dataset.contiguous_category_id_to_json_id``) and
  ``bbox`` is in original pixels with the +1 width convention of
  ``BoxList.convert("xywh")`` (w = x2 - x1 + 1), as the reference writes it.
* Metrics are fractions in [0, 1] (the model zoo prints them x100). A value of
  -1 means that the annotations have no ground truth for that measure (for
  example no small objects): the pycocotools convention.
* ``metrics.json`` holds the 12 numbers of :data:`METRIC_NAMES` at its top
  level, plus ``"dataset"``, ``"num_images"`` (evaluated), optionally
  ``"timing"``, ``"skipped_image_ids"`` (images the loader could not read) and,
  when asked for, ``"per_class_AP"`` (``{class name: AP}``).
"""
import contextlib
import io
import logging
import math
import os
from collections import OrderedDict

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from atss_core.data.datasets.coco import load_coco_file, renumber_annotation_ids
from atss_core.utils.io import atomic_write_json, read_json

logger = logging.getLogger(__name__)

# The 12 numbers of COCOeval.summarize(), in its order.
METRIC_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


class EvaluationError(ValueError):
    """Predictions, results or annotations that cannot be evaluated correctly."""


def _some(ids, limit=10):
    ids = sorted(ids)
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def has_annotations(coco):
    """True when the annotation file has ground truth (an ``"annotations"``
    list); test-dev's ``image_info_*.json`` has none."""
    return "annotations" in coco.dataset


def predictions_to_coco_results(predictions, dataset):
    """COCO results (the content of ``bbox.json``) of ``predictions``.

    Args:
        predictions (dict[int, BoxList]): dataset index -> detections in
            original image pixels (``size`` must equal the annotation's
            (width, height) of that image).
        dataset: a COCO dataset (``get_img_info``,
            ``contiguous_category_id_to_json_id``).

    Returns:
        list[dict]: one entry per box, by dataset index then in BoxList order.
    """
    to_json = dataset.contiguous_category_id_to_json_id
    lookup = torch.full((max(to_json) + 1,), -1, dtype=torch.int64)
    for contiguous_id, json_id in to_json.items():
        lookup[contiguous_id] = json_id
    results = []
    for index in sorted(predictions):
        prediction = predictions[index]
        info = dataset.get_img_info(index)
        if tuple(prediction.size) != (info["width"], info["height"]):
            raise EvaluationError(
                f"prediction of image {info['id']} ({info.get('file_name', '?')}) has size "
                f"{prediction.size} but the annotation says {(info['width'], info['height'])}: "
                "rescale predictions to the original image size before evaluating"
            )
        if len(prediction) == 0:
            continue
        labels = prediction.get_field("labels").cpu().long()
        invalid = (labels < 0) | (labels >= lookup.numel())
        invalid[~invalid] = lookup[labels[~invalid]] < 0
        if invalid.any():
            raise EvaluationError(
                f"prediction of image {info['id']} has labels "
                f"{_some(set(labels[invalid].tolist()))} that are no contiguous category id of "
                f"the dataset (1..{len(to_json)}); does MODEL.ATSS.NUM_CLASSES match the dataset?"
            )
        boxes = prediction.convert("xywh").bbox.cpu().tolist()
        scores = prediction.get_field("scores").cpu().tolist()
        category_ids = lookup[labels].tolist()
        image_id = info["id"]
        results.extend(
            {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for b, s, c in zip(boxes, scores, category_ids)
        )
    return results


def validate_results(results, coco_gt, source):
    """Raise :class:`EvaluationError` when ``results`` (COCO results format)
    refer to images or categories that ``coco_gt`` does not have, or hold
    malformed entries. ``source`` names where the results come from."""
    if not isinstance(results, list):
        raise EvaluationError(f"{source}: COCO results must be a list, got {type(results).__name__}")
    keys = ("image_id", "category_id", "bbox", "score")
    for i, r in enumerate(results):
        if not isinstance(r, dict) or any(k not in r for k in keys):
            raise EvaluationError(
                f"{source}: result #{i} must be a dict with keys {', '.join(keys)}, got {r!r}"
            )
        bbox = r["bbox"]
        if (
            not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
            or bbox[2] < 0 or bbox[3] < 0
        ):
            raise EvaluationError(
                f"{source}: result #{i} (image {r['image_id']}) needs a bbox [x, y, w, h] of "
                f"finite numbers with w, h >= 0, got {bbox!r}"
            )
        if not isinstance(r["score"], (int, float)) or not math.isfinite(r["score"]):
            raise EvaluationError(
                f"{source}: result #{i} (image {r['image_id']}) has the score {r['score']!r}"
            )
    image_ids = {r["image_id"] for r in results}
    unknown = image_ids - set(coco_gt.getImgIds())
    if unknown:
        raise EvaluationError(
            f"{source}: image ids {_some(unknown)} are not in the annotation file; "
            "the results belong to another split or annotation file"
        )
    if "categories" in coco_gt.dataset:
        category_ids = {r["category_id"] for r in results}
        unknown = category_ids - set(coco_gt.getCatIds())
        if unknown:
            raise EvaluationError(
                f"{source}: category ids {_some(unknown)} are not categories of the annotation "
                f"file (which has {_some(coco_gt.getCatIds())}); results must use the json "
                "category ids of that file"
            )


def with_valid_annotation_ids(coco_gt, source="the ground truth"):
    """``coco_gt``, or a copy whose annotation ids are renumbered 1..N when
    they are not unique positive integers (a ``COCO`` made by pycocotools
    directly from such a file; the loaders of this package renumber already).
    ``COCOeval`` needs them so: it looks ground truth up by id (a repeated id
    replaces other boxes by one of them) and takes id 0 for "unmatched"."""
    annotations = coco_gt.dataset.get("annotations")
    if not annotations:
        return coco_gt
    ids = [ann.get("id") for ann in annotations]
    if len(coco_gt.anns) == len(annotations) and all(
        isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids
    ):
        return coco_gt
    fixed = COCO()
    fixed.dataset = dict(coco_gt.dataset)
    fixed.dataset["annotations"] = [dict(ann) for ann in annotations]
    renumber_annotation_ids(fixed.dataset["annotations"], f"ground truth of {source}")
    with contextlib.redirect_stdout(io.StringIO()):
        fixed.createIndex()
    return fixed


def results_to_coco(coco_gt, results):
    """A COCO object holding ``results`` as detections (what ``COCO.loadRes``
    makes for boxes, area = w * h), also for an empty list."""
    coco_dt = COCO()
    coco_dt.dataset["images"] = list(coco_gt.dataset["images"])
    coco_dt.dataset["categories"] = list(coco_gt.dataset.get("categories", []))
    coco_dt.dataset["annotations"] = [
        {
            "id": i + 1,
            "image_id": r["image_id"],
            "category_id": r["category_id"],
            "bbox": list(r["bbox"]),
            "score": r["score"],
            "area": r["bbox"][2] * r["bbox"][3],
            "iscrowd": 0,
        }
        for i, r in enumerate(results)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def per_class_ap(coco_eval):
    """``{category name: AP}`` (IoU 0.50:0.95, all areas, 100 detections) of an
    evaluated and accumulated ``COCOeval``; -1 for a category without ground
    truth. Categories in order of their json id."""
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    params = coco_eval.params
    area = params.areaRngLbl.index("all")
    out = OrderedDict()
    for k, category_id in enumerate(params.catIds):
        p = precision[:, :, k, area, -1]
        p = p[p > -1]
        name = coco_eval.cocoGt.cats[category_id]["name"]
        if name in out:
            name = f"{name} (id {category_id})"
        out[name] = float(np.mean(p)) if p.size else -1.0
    return out


def evaluate_coco_results(coco_gt, results, image_ids=None, per_class=False, source="results"):
    """Evaluate box ``results`` (COCO results format) against ``coco_gt``.

    Args:
        coco_gt (COCO): ground truth with ``"annotations"``.
        results (list[dict]): may be empty (every metric is then 0, or -1 where
            there is no ground truth).
        image_ids: images to evaluate (default: all images of ``coco_gt``).
            Images without results count as images without detections.
        per_class (bool): also return ``"per_class_AP"``.
        source (str): names the results in error messages.

    Returns:
        (OrderedDict metrics, str summary): the 12 :data:`METRIC_NAMES` (and
        ``per_class_AP``), and the text that ``COCOeval.summarize`` prints.
    """
    if not has_annotations(coco_gt):
        raise EvaluationError(
            f"{source}: the annotation file has no 'annotations' (a test-dev style split); "
            "it cannot be evaluated locally, upload the results to the COCO evaluation server"
        )
    validate_results(results, coco_gt, source)
    coco_gt = with_valid_annotation_ids(coco_gt, source)
    coco_eval = COCOeval(coco_gt, results_to_coco(coco_gt, results), "bbox")
    if image_ids is not None:
        coco_eval.params.imgIds = sorted(image_ids)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    summary = "\n".join(
        line for line in buffer.getvalue().splitlines() if line.startswith(" Average")
    )
    metrics = OrderedDict((name, float(v)) for name, v in zip(METRIC_NAMES, coco_eval.stats))
    if per_class:
        metrics["per_class_AP"] = per_class_ap(coco_eval)
    return metrics, summary


def _percent(value):
    return "  -  " if value < 0 else f"{100 * value:5.1f}"


def format_metrics(metrics):
    """The 12 numbers as a two-row table in percent (as the model zoo reports
    AP), '-' where there is no ground truth."""
    rows = []
    for names in (METRIC_NAMES[:6], METRIC_NAMES[6:]):
        rows.append(" | ".join(f"{n:>5}" for n in names))
        rows.append(" | ".join(_percent(metrics[n]) for n in names))
    return "\n".join(rows)


def format_per_class_ap(per_class):
    width = max((len(n) for n in per_class), default=5)
    return "\n".join(f"{name:<{width}} | {_percent(ap)}" for name, ap in per_class.items())


def format_timing(timing):
    """The model zoo's "Testing time / im" line."""
    if timing.get("model_time_per_image") is None:
        return "Testing time / im: not measured (no batch after the warm-up iterations)"
    return (
        f"Testing time / im: {1000 * timing['model_time_per_image']:.1f} ms model, "
        f"{1000 * timing['total_time_per_image']:.1f} ms total with data loading "
        f"(per device, {timing['num_devices']} device(s), {timing['num_timed_images']} images "
        f"after {timing['warmup_iters']} warm-up iterations)"
    )


def do_coco_evaluation(dataset, predictions, output_folder, dataset_name, per_class_ap=False,
                       timing=None):
    """Write ``bbox.json`` and, for an annotated split, evaluate it and write
    ``metrics.json`` in ``output_folder`` (both atomically; nothing is written
    when ``output_folder`` is None or empty).

    Args:
        dataset: the COCO dataset the predictions are for (``coco``,
            ``ids``, ``get_img_info``, ``contiguous_category_id_to_json_id``).
        predictions (dict[int, BoxList]): dataset index -> detections in
            original image pixels (an empty BoxList for an image without
            detections). An index absent means the image was skipped (it
            could not be read): it is left out of the evaluation, logged and
            listed as ``skipped_image_ids`` in the metrics; when every image
            was skipped, :class:`EvaluationError`.
        output_folder (str or None)
        dataset_name (str)
        per_class_ap (bool): add ``per_class_AP`` to the metrics and the log.
        timing (dict or None): stored as ``metrics["timing"]``.

    Returns:
        The metrics dict (see the module docstring), or None for a split
        without annotations.
    """
    coco_gt = dataset.coco
    skipped = [dataset.get_img_info(i)["id"] for i in range(len(dataset)) if i not in predictions]
    if len(skipped) == len(dataset):
        raise EvaluationError(
            f"{dataset_name}: no image has predictions; if the data loader skipped them all as "
            "unreadable, the annotation file does not match the image folder (see the warnings "
            "above naming the images)"
        )
    results = predictions_to_coco_results(predictions, dataset)
    validate_results(results, coco_gt, f"predictions on {dataset_name}")
    if output_folder:
        path = os.path.join(output_folder, "bbox.json")
        atomic_write_json(results, path)
        logger.info("Wrote %d detections of %d images to %s", len(results), len(dataset), path)
    if not has_annotations(coco_gt):
        logger.info(
            "%s has no annotations (test-dev style): %s is ready to upload to the COCO "
            "evaluation server (rename it detections_<split>_<method>_results.json and zip it)",
            dataset_name, os.path.join(output_folder, "bbox.json") if output_folder else "bbox.json",
        )
        return None

    if skipped:
        logger.warning(
            "%s: %d of %d images have no predictions (skipped as unreadable or not matching the "
            "annotation file; image ids %s); they are left out of the evaluation and listed in "
            "metrics.json as skipped_image_ids",
            dataset_name, len(skipped), len(dataset), _some(skipped),
        )
    image_ids = [dataset.get_img_info(i)["id"] for i in sorted(predictions)]
    if len(dataset) != len(coco_gt.getImgIds()):
        logger.warning(
            "%s: the dataset has %d of the %d images of the annotation file; only those are "
            "evaluated", dataset_name, len(dataset), len(coco_gt.getImgIds()),
        )
    metrics, summary = evaluate_coco_results(
        coco_gt, results, image_ids=image_ids, per_class=per_class_ap,
        source=f"predictions on {dataset_name}",
    )
    out = OrderedDict(dataset=dataset_name, num_images=len(image_ids))
    out.update(metrics)
    if skipped:
        out["skipped_image_ids"] = sorted(skipped)
    if timing is not None:
        out["timing"] = timing
    logger.info("COCO evaluation of %s (%d images), bbox:\n%s", dataset_name, len(image_ids), summary)
    logger.info("%s bbox (%%):\n%s", dataset_name, format_metrics(metrics))
    if per_class_ap:
        logger.info("%s per-class AP (%%):\n%s", dataset_name,
                    format_per_class_ap(metrics["per_class_AP"]))
    if output_folder:
        path = os.path.join(output_folder, "metrics.json")
        atomic_write_json(out, path, indent=2)
        logger.info("Wrote %s", path)
    return out


def load_results_file(path):
    """The list in a COCO results json file (``bbox.json``), with a clear error
    for a missing or malformed file."""
    results = read_json(path, f"results file {path}", EvaluationError)
    if not isinstance(results, list):
        raise EvaluationError(
            f"the results file {path} must hold a list of detections, got {type(results).__name__}"
        )
    return results


def load_coco_annotations(path):
    """pycocotools ``COCO`` of an annotation file, loaded and checked as the
    datasets load it (:func:`atss_core.data.datasets.coco.load_coco_file`):
    :class:`EvaluationError` naming the file, the record and the field for a
    missing or malformed file; annotation ids that repeat or are 0 are
    renumbered 1..N, with a warning."""
    if not os.path.isfile(path):
        raise EvaluationError(f"the annotation file {path} does not exist")
    return load_coco_file(path, f"annotation file {path}", EvaluationError)


def evaluate_results_file(results_path, ann_file, per_class=False):
    """Evaluate a ``bbox.json`` against an annotation file; returns the
    metrics dict of :func:`evaluate_coco_results`."""
    coco_gt = load_coco_annotations(ann_file)
    results = load_results_file(results_path)
    metrics, _ = evaluate_coco_results(
        coco_gt, results, per_class=per_class, source=f"{results_path} (against {ann_file})"
    )
    return metrics


def check_expected_results(metrics, expected_results, sigma_tol):
    """Compare metrics with ``TEST.EXPECTED_RESULTS`` (entries
    ``[task, metric, mean, std]``, task "bbox"): log an error for a value
    outside ``mean +- sigma_tol * std``. Returns True when all are within."""
    ok = True
    for entry in expected_results:
        if len(entry) != 4:
            raise EvaluationError(
                f"TEST.EXPECTED_RESULTS entries must be [task, metric, mean, std], got {entry!r}"
            )
        task, name, mean, std = entry
        if task != "bbox" or name not in METRIC_NAMES:
            raise EvaluationError(
                f"TEST.EXPECTED_RESULTS entry {entry!r}: only task 'bbox' with metrics "
                f"{', '.join(METRIC_NAMES)} can be checked"
            )
        actual = metrics[name]
        lo, hi = mean - sigma_tol * std, mean + sigma_tol * std
        if lo <= actual <= hi:
            logger.info("%s %s = %.4f within the expected [%.4f, %.4f]", task, name, actual, lo, hi)
        else:
            ok = False
            logger.error("%s %s = %.4f outside the expected [%.4f, %.4f]", task, name, actual, lo, hi)
    return ok

"""Run a detector over a test data loader and evaluate it on COCO.

Data flow of :func:`inference`:

1. every process runs the model (eval mode, ``torch.no_grad``) over its shard
   of the dataset (the test loader's sampler gives each image to exactly one
   process) and keeps ``{dataset index: BoxList on CPU}``;
2. the dicts are gathered on the main process (``comm.all_gather``), so the
   predictions are those of a single-process run whatever the number of
   processes;
3. each prediction is rescaled from the resized input image to the original
   image (``BoxList.resize`` to the annotation's (width, height));
4. :func:`atss_core.engine.coco_eval.do_coco_evaluation` writes ``bbox.json``
   and ``metrics.json`` in ``output_folder`` and returns the metrics.

Timing (what the model zoo reports as "Testing time / im"): the first
``warmup_iters`` batches of each process are not timed; over the others,
``model_time_per_image`` is the time of the forward pass (test-time
augmentation included, CUDA synchronised before and after) and
``total_time_per_image`` the wall-clock time including data loading, both
summed over processes and divided by the number of timed images, i.e. seconds
per image on one device.
"""
import logging
import os
import time

import torch
from tqdm import tqdm

from atss_core.data import make_data_loader
from atss_core.utils.comm import all_gather, get_world_size, is_main_process, synchronize

from .bbox_aug import BBoxAug, build_bbox_aug
from .coco_eval import EvaluationError, check_expected_results, do_coco_evaluation, format_timing

logger = logging.getLogger(__name__)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_on_dataset(model, data_loader, device, bbox_aug=None, warmup_iters=3,
                       show_progress=True):
    """Predictions of the model over ``data_loader`` in this process.

    Args:
        model: a detector; in eval mode during the run, its mode restored after.
        data_loader: yields ``(images, targets, indices)``: an ImageList (or,
            with ``bbox_aug``, a list of original [H, W, 3] uint8 BGR images),
            the targets (unused) and dataset indices.
        device (torch.device)
        bbox_aug (BBoxAug or None): test-time augmentation.
        warmup_iters (int): leading batches left out of the timing.
        show_progress (bool): tqdm progress bar.

    Returns:
        (dict[int, BoxList] on CPU in resized-image pixels,
         dict with "model_time", "total_time" (s) and "num_images" timed)
    """
    was_training = model.training
    model.eval()
    try:
        return _run(model, data_loader, device, bbox_aug, warmup_iters, show_progress)
    finally:
        model.train(was_training)


def _run(model, data_loader, device, bbox_aug, warmup_iters, show_progress):
    cpu = torch.device("cpu")
    predictions = {}
    model_time = 0.0
    timed_images = 0
    # The wall clock starts when the last warm-up batch is done, so that the
    # loading of the first timed batch counts.
    timed_start = time.perf_counter()
    for i, (images, _, indices) in enumerate(tqdm(data_loader, disable=not show_progress)):
        with torch.no_grad():
            _sync(device)
            start = time.perf_counter()
            if bbox_aug is not None:
                output = bbox_aug(model, images, device)
            elif isinstance(images, (list, tuple)):
                raise TypeError(
                    "the test loader yields original images (its config has "
                    "TEST.BBOX_AUG.ENABLED True) but no test-time augmentation was given: pass "
                    "bbox_aug=build_bbox_aug(cfg) (or the config) to inference()"
                )
            else:
                output = model(images.to(device))
            _sync(device)
            elapsed = time.perf_counter() - start
        for index, boxlist in zip(indices, output):
            predictions[int(index)] = boxlist.to(cpu)
        if i >= warmup_iters:
            model_time += elapsed
            timed_images += len(indices)
        elif i == warmup_iters - 1:
            timed_start = time.perf_counter()
    total_time = time.perf_counter() - timed_start if timed_images else 0.0
    return predictions, {"model_time": model_time, "total_time": total_time, "num_images": timed_images}


def gather_predictions(predictions):
    """All processes' ``{index: BoxList}`` merged on the main process (None on
    the others)."""
    gathered = all_gather(predictions)
    if not is_main_process():
        return None
    merged = {}
    for part in gathered:
        merged.update(part)
    return merged


def summarize_timing(timing_per_process, warmup_iters):
    """The timing entry of metrics.json from each process's
    :func:`compute_on_dataset` timing (see the module docstring); the per-image
    values are None when no batch came after the warm-up."""
    num_images = sum(t["num_images"] for t in timing_per_process)
    out = {
        "model_time_per_image": None,
        "total_time_per_image": None,
        "num_devices": len(timing_per_process),
        "num_timed_images": num_images,
        "warmup_iters": warmup_iters,
    }
    if num_images:
        out["model_time_per_image"] = sum(t["model_time"] for t in timing_per_process) / num_images
        out["total_time_per_image"] = sum(t["total_time"] for t in timing_per_process) / num_images
    return out


def rescale_to_original(predictions, dataset):
    """``{index: BoxList}`` in resized-image pixels -> the same in original
    image pixels (``size`` = the annotation's (width, height)).

    Raises EvaluationError when a prediction's image does not have the aspect
    ratio of the annotation's size (the annotation file does not describe the
    images that were read)."""
    out = {}
    for index, prediction in predictions.items():
        info = dataset.get_img_info(index)
        width, height = info["width"], info["height"]
        pred_w, pred_h = prediction.size
        # The resize rule truncates one side: within a pixel of the input, i.e.
        # within (original / resized) + 1 pixels of the original.
        tol_w = width / pred_w + 1
        tol_h = height / pred_h + 1
        if abs(pred_w * height / pred_h - width) > tol_w and abs(pred_h * width / pred_w - height) > tol_h:
            raise EvaluationError(
                f"image {info['id']} ({info.get('file_name', '?')}) was read as a "
                f"{pred_w}x{pred_h} input, which is not the aspect ratio of its annotated size "
                f"{width}x{height}: the annotation file does not match the images"
            )
        out[index] = prediction.resize((width, height))
    return out


def inference(model, data_loader, dataset_name, device="cuda", output_folder=None, bbox_aug=None,
              per_class_ap=False, warmup_iters=3, expected_results=(), expected_results_sigma_tol=4):
    """Evaluate ``model`` on the dataset of ``data_loader`` (see the module
    docstring). Every process must call it.

    Args:
        model: detector (``model(ImageList) -> list[BoxList]`` in eval mode).
        data_loader: one loader of ``make_data_loader(cfg, is_train=False)``.
        dataset_name (str): for logs and metrics.
        device (str or torch.device): where the model runs.
        output_folder (str or None): receives ``bbox.json`` and ``metrics.json``.
        bbox_aug: test-time augmentation: None or False (off), a
            :class:`BBoxAug`, or a config (on when its
            ``TEST.BBOX_AUG.ENABLED``). The loader must then yield original
            images (``TEST.BBOX_AUG.ENABLED`` in the loader's config) and the
            model must come from a config with the same ``TEST.BBOX_AUG``.
        per_class_ap (bool): add per-category AP to the log and metrics.
        warmup_iters (int): batches per process left out of the timing.
        expected_results, expected_results_sigma_tol: ``TEST.EXPECTED_RESULTS*``.

    Returns:
        The metrics dict on the main process (None for a split without
        annotations), None on the other processes.
    """
    device = torch.device(device)
    dataset = data_loader.dataset
    if bbox_aug is None or bbox_aug is False:
        bbox_aug = None
    elif not isinstance(bbox_aug, BBoxAug):
        bbox_aug = build_bbox_aug(bbox_aug)
    logger.info(
        "Start evaluation on %s (%d images)%s", dataset_name, len(dataset),
        " with test-time augmentation" if bbox_aug is not None else "",
    )
    start = time.perf_counter()
    predictions, timing = compute_on_dataset(
        model, data_loader, device, bbox_aug=bbox_aug, warmup_iters=warmup_iters,
        show_progress=is_main_process(),
    )
    synchronize()
    total_time = time.perf_counter() - start
    timing_per_process = all_gather(timing)
    predictions = gather_predictions(predictions)
    if not is_main_process():
        return None

    timing = summarize_timing(timing_per_process, warmup_iters)
    logger.info(
        "Total run time: %.1f s (%.4f s / img per device, on %d devices)",
        total_time, total_time * get_world_size() / max(len(dataset), 1), get_world_size(),
    )
    logger.info(format_timing(timing))

    predictions = rescale_to_original(predictions, dataset)
    metrics = do_coco_evaluation(
        dataset, predictions, output_folder, dataset_name, per_class_ap=per_class_ap,
        timing=timing,
    )
    if metrics is not None and expected_results:
        check_expected_results(metrics, expected_results, expected_results_sigma_tol)
    return metrics


def inference_on_datasets(cfg, model, device, output_root=None, per_class_ap=False, warmup_iters=3):
    """Evaluate ``model`` (not wrapped in DDP) on every dataset of
    ``cfg.DATASETS.TEST`` with :func:`inference`, writing to
    ``output_root/<dataset name>/`` (nothing written when ``output_root`` is None).
    Every process must call it. Returns ``{dataset name: metrics}`` (metrics None
    on processes other than the main one and for splits without annotations)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    results = {}
    if not cfg.DATASETS.TEST:
        return results
    bbox_aug = build_bbox_aug(cfg)
    data_loaders = make_data_loader(cfg, is_train=False, is_distributed=get_world_size() > 1)
    for dataset_name, data_loader in zip(cfg.DATASETS.TEST, data_loaders):
        output_folder = os.path.join(output_root, dataset_name) if output_root else None
        if output_folder and is_main_process():
            os.makedirs(output_folder, exist_ok=True)
        results[dataset_name] = inference(
            model,
            data_loader,
            dataset_name=dataset_name,
            device=device,
            output_folder=output_folder,
            bbox_aug=bbox_aug,
            per_class_ap=per_class_ap,
            warmup_iters=warmup_iters,
            expected_results=cfg.TEST.EXPECTED_RESULTS,
            expected_results_sigma_tol=cfg.TEST.EXPECTED_RESULTS_SIGMA_TOL,
        )
        synchronize()
    return results

"""Run a trained ATSS detector on single images and draw its detections.

Used by ``demo/atss_demo.py`` and by the quick start.
"""
import json
import os
import time

import cv2
import numpy as np
import torch

from atss_core.config.paths_catalog import DatasetCatalog, DatasetNotFoundError
from atss_core.data.transforms import build_transforms
from atss_core.engine.thresholds import load_class_thresholds
from atss_core.modeling.detector import build_detection_model
from atss_core.structures.image_list import to_image_list
from atss_core.utils.checkpoint import CheckpointError, DetectronCheckpointer

# The 80 COCO categories in contiguous-id order 1..80 (the annotation file's order,
# which for COCO is ascending json id).
COCO_CLASS_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]


class UntrainedModelError(CheckpointError):
    """The weights given are not a trained detector (none at all, or ImageNet
    backbone weights only), and running a randomly initialised head was not
    asked for."""


def is_backbone_only_name(weights):
    """Weights names that cannot be a trained detector: none, or a
    ``catalog://`` ImageNet backbone."""
    return not weights or weights.startswith("catalog://")


def class_names_for(cfg):
    """Names of the contiguous classes 1..C of a model built from ``cfg``: the
    categories of its first training (or test) dataset when its annotation file
    is on disk, the COCO names for an 81-class model, else "class <id>"."""
    num = cfg.MODEL.ATSS.NUM_CLASSES - 1
    for name in tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST):
        try:
            ann_file = DatasetCatalog.get(name)["args"]["ann_file"]
        except DatasetNotFoundError:
            continue
        if os.path.isfile(ann_file):
            with open(ann_file) as f:
                categories = json.load(f).get("categories", [])  # file order = label order
            if len(categories) == num:
                return [c["name"] for c in categories]
    if num == len(COCO_CLASS_NAMES):
        return list(COCO_CLASS_NAMES)
    return [f"class {i}" for i in range(1, num + 1)]


def _colour(label):
    rng = np.random.RandomState(label * 7919 + 17)
    return tuple(int(c) for c in rng.randint(64, 256, size=3))


def draw_detections(image, boxes, labels, scores, class_names):
    """Draw xyxy ``boxes`` with "name score" captions on a copy of the BGR
    ``image``."""
    out = image.copy()
    for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = _colour(int(label))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        name = class_names[int(label) - 1] if 0 < label <= len(class_names) else str(label)
        caption = f"{name} {score:.2f}"
        (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1 - th - 4, 0)
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + th + 4), colour, -1)
        cv2.putText(out, caption, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out


def untrained_message(weights, layout=None):
    if not weights:
        what = "no weights were given (--weights empty and the config's MODEL.WEIGHT empty)"
    elif layout:
        what = f"{weights} holds ImageNet backbone weights ({layout} layout), not a trained detector"
    else:
        what = f"{weights} names ImageNet backbone weights, not a trained detector"
    return (f"{what}: the detection head would be randomly initialised and its detections "
            "meaningless. Pass a trained checkpoint with --weights (e.g. ATSS_R_50_FPN_1x.pth or "
            "training_dir/<run>/model_final.pth), or --allow-untrained to run it anyway.")


class ATSSDemo:
    """Detector + pre-processing + drawing for single images.

    Args:
        cfg: the config (frozen or not); ``INPUT.MIN_SIZE_TEST`` sets the input size.
        weights: checkpoint path (any layout ``DetectronCheckpointer`` reads);
            defaults to ``cfg.MODEL.WEIGHT``.
        confidence_threshold: keep detections scoring at least this, for classes
            without an entry in ``class_thresholds``.
        class_thresholds: path of a ``{class name: threshold}`` JSON file (as
            written by ``tools/compute_class_thresholds.py``), or None.
        allow_untrained: run even when the weights are not a trained detector
            (no weights, or ImageNet backbone weights only: the detection head
            keeps its random initialisation). Without it such weights raise
            :class:`UntrainedModelError`.
    """

    def __init__(self, cfg, weights=None, confidence_threshold=0.5, class_thresholds=None,
                 allow_untrained=False):
        self.cfg = cfg
        weights = weights or cfg.MODEL.WEIGHT
        if is_backbone_only_name(weights) and not allow_untrained:
            raise UntrainedModelError(untrained_message(weights))
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.model = build_detection_model(cfg).to(self.device).eval()
        checkpointer = DetectronCheckpointer(cfg, self.model)
        checkpointer.load(weights, use_latest=False)
        if checkpointer.loaded_layout != "model" and not allow_untrained:
            raise UntrainedModelError(untrained_message(weights, checkpointer.loaded_layout))
        self.transforms = build_transforms(cfg, is_train=False)
        self.class_names = class_names_for(cfg)
        if class_thresholds:
            self.thresholds = load_class_thresholds(class_thresholds, self.class_names, default=confidence_threshold)
        else:
            self.thresholds = torch.full((len(self.class_names) + 1,), float(confidence_threshold))

    @torch.no_grad()
    def predict(self, image):
        """Detections of a BGR uint8 ``image`` [H, W, 3]: a BoxList in its pixel
        coordinates with ``scores`` and ``labels``, thresholded per class."""
        height, width = image.shape[:2]
        tensor, _ = self.transforms(image, None)
        images = to_image_list([tensor], self.cfg.DATALOADER.SIZE_DIVISIBILITY).to(self.device)
        detections = self.model(images)[0].to("cpu").resize((width, height))
        keep = detections.get_field("scores") >= self.thresholds[detections.get_field("labels")]
        return detections[keep]

    def run_on_image(self, image):
        """(drawn image, detections, seconds spent in pre-processing + model)."""
        start = time.perf_counter()
        detections = self.predict(image)
        elapsed = time.perf_counter() - start
        drawn = draw_detections(image, detections.bbox, detections.get_field("labels"),
                                detections.get_field("scores"), self.class_names)
        return drawn, detections, elapsed

"""Run a trained detector on images from Python: :class:`Predictor`.

    from atss_core.engine import Predictor
    predictor = Predictor.from_config("configs/atss/atss_R_50_FPN_1x.yaml", "ATSS_R_50_FPN_1x.pth")
    for det in predictor.predict(["a.jpg", "b.jpg"]):
        print(det.boxes, det.scores, det.names)

The one inference path of ``demo/atss_demo.py`` and of the quick start's
pictures. Each image goes through what ``tools/test_net.py`` does: the test
transforms (``build_transforms(cfg, is_train=False)``: shorter side
``INPUT.MIN_SIZE_TEST``, longer side at most ``INPUT.MAX_SIZE_TEST``,
normalisation), batching with ``to_image_list(..., DATALOADER.SIZE_DIVISIBILITY)``
(or test-time augmentation when ``TEST.BBOX_AUG.ENABLED``), the model, and the
boxes scaled back to the original image (``BoxList.resize`` to its width and
height). Then the detections scoring below their class's threshold are dropped.

Inputs: BGR uint8 arrays [H, W, 3] (what ``cv2.imread`` returns), or image
file paths, decoded as the datasets decode them
(:func:`atss_core.data.datasets.coco.read_image_file`: Pillow, EXIF
orientation not applied), so that a file gives the pixels ``test_net.py``
evaluates. ``cv2.imread`` applies the EXIF orientation; for files without one
both decoders give the same pixels here (all 128 coco128 val images).

Batches: up to ``batch_size`` images go through the model together, but only
images of the same padded input size (``to_image_list`` pads a batch to its
largest image; the padding would change the features near the borders and,
through the GroupNorm statistics, everywhere). So an image's
detections do not depend on the other images: batched results equal the
one-by-one results up to float rounding (the convolutions of a batch round
differently; same detections within the parity tolerance,
tests/test_predictor.py). ``tools/test_net.py`` batches consecutive images
whatever their sizes, as the reference does; with ``TEST.IMS_PER_BATCH 1``
it computes what the Predictor does.
"""
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from atss_core.config import ConfigError, cfg as default_cfg, validate_config
from atss_core.config.paths_catalog import DatasetCatalog, DatasetNotFoundError
from atss_core.data.datasets.coco import read_image_file
from atss_core.data.transforms import build_transforms
from atss_core.modeling.detector import build_detection_model
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.image_list import ImageList, to_image_list
from atss_core.utils.checkpoint import CheckpointError, DetectronCheckpointer

from .bbox_aug import build_bbox_aug
from .thresholds import load_class_thresholds

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
    return not weights or str(weights).startswith("catalog://")


def untrained_message(weights, layout=None):
    if not weights:
        what = "no weights were given (--weights empty and the config's MODEL.WEIGHT empty)"
    elif layout:
        what = f"{weights} holds ImageNet backbone weights ({layout} layout), not a trained detector"
    else:
        what = f"{weights} names ImageNet backbone weights, not a trained detector"
    return (f"{what}: the detection head would be randomly initialised and its detections "
            "meaningless. Pass a trained checkpoint with --weights (Predictor: weights=...; e.g. "
            "ATSS_R_50_FPN_1x.pth or training_dir/<run>/model_final.pth), or --allow-untrained "
            "(allow_untrained=True) to run it anyway.")


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


def read_image(path, what=None):
    """[H, W, 3] uint8 BGR array of the image file ``path``, decoded as the
    datasets decode it (:func:`read_image_file`). Raises FileNotFoundError
    when there is no such file and ValueError when it is not a readable image,
    naming ``what`` (default: the path)."""
    path = os.fspath(path)
    what = what or path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file")
    image = read_image_file(path)
    if image is None:
        raise ValueError(f"{what}: not a readable image (not an image, truncated, or a format "
                         "Pillow cannot decode)")
    return image


@dataclass
class Detections:
    """The detections of one image, in its original pixels.

    Attributes:
        boxes (ndarray [N, 4] float32): x1, y1, x2, y2.
        scores (ndarray [N] float32): in [0, 1].
        labels (ndarray [N] int64): contiguous class ids 1..C.
        names (list[str]): the class name of each detection.
        image_size (tuple): (width, height) of the image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list
    image_size: tuple

    def __len__(self):
        return len(self.scores)

    def to_boxlist(self):
        """The detections as a BoxList (xyxy, ``size`` the image's (w, h)) with
        ``scores`` and ``labels`` fields, as ``model(images)`` returns them."""
        boxlist = BoxList(torch.from_numpy(self.boxes.copy()), self.image_size, mode="xyxy")
        boxlist.add_field("scores", torch.from_numpy(self.scores.copy()))
        boxlist.add_field("labels", torch.from_numpy(self.labels.copy()))
        return boxlist


def _padded_size(size, size_divisible):
    """(H, W) of an input of ``size`` (H, W) once ``to_image_list`` pads it."""
    if size_divisible > 0:
        return tuple(int(math.ceil(int(v) / size_divisible) * size_divisible) for v in size)
    return tuple(int(v) for v in size)


def _resolve_device(device):
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} asked for, but torch sees no GPU; use the cpu")
    return device


def _check_score(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be a score in [0, 1], got {value!r}")
    return float(value)


class Predictor:
    """A detector and what ``tools/test_net.py`` does around it, for images.

    Args:
        cfg: the config (frozen or not) the model was built from; its test
            transforms, ``DATALOADER.SIZE_DIVISIBILITY``, ``TEST.BBOX_AUG``,
            ``TEST.IMS_PER_BATCH`` and datasets (the class names) are used.
        model: an already built detector (put in eval mode; moved to
            ``device`` when one is given). None: build it with
            ``build_detection_model(cfg)`` and load ``weights``.
        weights: checkpoint to load when ``model`` is None (any layout
            ``DetectronCheckpointer`` reads; default ``cfg.MODEL.WEIGHT``).
        device: "cpu", "cuda", "cuda:1", a torch.device, or None: the
            model's device when ``model`` is given, else ``cfg.MODEL.DEVICE``.
        score_threshold: keep detections scoring at least this, for the
            classes without an entry in ``class_thresholds``.
        class_thresholds: ``{class name: threshold}`` dict, or the path of
            such a JSON file (``tools/compute_class_thresholds.py`` writes
            them); classes it does not list use ``score_threshold``.
        batch_size: images per forward pass (default ``cfg.TEST.IMS_PER_BATCH``,
            at least 1).
        allow_untrained: run even when the weights are not a trained detector
            (none, or ImageNet backbone weights only: the detection head keeps
            its random initialisation). Without it such weights raise
            :class:`UntrainedModelError` (before the model is built when the
            name says so).
    """

    def __init__(self, cfg, model=None, weights=None, device=None, score_threshold=0.5,
                 class_thresholds=None, batch_size=None, allow_untrained=False):
        self.cfg = cfg
        self.score_threshold = _check_score(score_threshold, "score_threshold")
        if batch_size is None:
            batch_size = max(int(cfg.TEST.IMS_PER_BATCH), 1)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.transforms = build_transforms(cfg, is_train=False)
        self.bbox_aug = build_bbox_aug(cfg)
        self.class_names = class_names_for(cfg)
        if class_thresholds is None:
            self.thresholds = torch.full((len(self.class_names) + 1,), self.score_threshold)
        else:  # checked before the model is loaded
            self.thresholds = load_class_thresholds(class_thresholds, self.class_names,
                                                    default=self.score_threshold)
        if model is None:
            weights = os.fspath(weights) if weights else cfg.MODEL.WEIGHT
            if is_backbone_only_name(weights) and not allow_untrained:
                raise UntrainedModelError(untrained_message(weights))
            self.device = _resolve_device(cfg.MODEL.DEVICE if device is None else device)
            model = build_detection_model(cfg).to(self.device)
            checkpointer = DetectronCheckpointer(cfg, model)
            checkpointer.load(weights, use_latest=False)
            if checkpointer.loaded_layout != "model" and not allow_untrained:
                raise UntrainedModelError(untrained_message(weights, checkpointer.loaded_layout))
        else:
            if weights:
                raise ValueError("give either a built model or weights to load, not both")
            if device is None:
                first = next(iter(model.parameters()), None)
                self.device = first.device if first is not None else torch.device("cpu")
            else:
                self.device = _resolve_device(device)
                model = model.to(self.device)
        self.model = model.eval()

    @classmethod
    def from_config(cls, config_file, weights=None, opts=(), device=None, score_threshold=0.5,
                    class_thresholds=None, batch_size=None, allow_untrained=False):
        """A Predictor of the YAML ``config_file`` with the ``opts`` overrides
        (``["KEY", value, ...]``) and the checkpoint ``weights`` (default: the
        config's ``MODEL.WEIGHT``).

        ``device``: "cpu", "cuda", ... or None: the ``MODEL.DEVICE`` of
        ``opts`` when they set it, else cuda when torch sees a GPU, else cpu.
        The other arguments are the constructor's."""
        config_file = os.fspath(config_file)
        if not os.path.isfile(config_file):
            raise ConfigError(f"config file {config_file}: no such file (the configs are in configs/atss/)")
        opts = list(opts)
        if len(opts) % 2:
            raise ConfigError(f"config overrides come in KEY VALUE pairs, got {opts}")
        cfg = default_cfg.clone()
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(opts)
        if device is None and "MODEL.DEVICE" not in opts[::2]:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device is not None:
            cfg.MODEL.DEVICE = str(torch.device(device))
        validate_config(cfg)
        cfg.freeze()
        return cls(cfg, weights=weights, score_threshold=score_threshold,
                   class_thresholds=class_thresholds, batch_size=batch_size,
                   allow_untrained=allow_untrained)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _check_input(item, what):
        """The BGR uint8 array of ``item`` (validated), or its path (checked to
        exist; decoded batch by batch)."""
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{what}: {path}: no such file")
            return path
        if not isinstance(item, np.ndarray):
            raise TypeError(f"{what}: expected a BGR uint8 numpy array [H, W, 3] or an image file "
                            f"path, got {type(item).__name__}")
        if item.dtype != np.uint8:
            raise TypeError(f"{what}: expected a BGR uint8 array [H, W, 3], got dtype {item.dtype} "
                            "(convert 0..1 floats with (image * 255).round().astype(np.uint8))")
        if item.ndim != 3 or item.shape[2] != 3:
            raise ValueError(f"{what}: expected a BGR array of shape [H, W, 3], got {list(item.shape)} "
                             "(grayscale: cv2.cvtColor(image, cv2.COLOR_GRAY2BGR); BGRA: "
                             "cv2.cvtColor(image, cv2.COLOR_BGRA2BGR))")
        if item.shape[0] < 1 or item.shape[1] < 1:
            raise ValueError(f"{what}: the image is empty ({list(item.shape)})")
        return item

    # ------------------------------------------------------------------ inference
    def predict(self, images):
        """Detections of ``images``.

        Args:
            images: a BGR uint8 numpy array [H, W, 3], an image file path
                (str or os.PathLike; decoded like the datasets, see the module
                docstring), or a list (any iterable) of them; or an
                :class:`ImageList` that is already the network input (as the
                data loaders give it: resized, normalised, padded), whose
                detections are then in the pixels of its ``image_sizes``.

        Returns:
            a :class:`Detections` for a single image or path, else a list of
            them in input order; boxes in each image's original pixels.

        Images of the same padded input size are batched, ``batch_size`` at
        a time (module docstring); the results do not depend on the batching.

        Raises TypeError / ValueError for an input that is not such an image
        (arrays checked, and files checked to exist, before any image is run;
        files are decoded as their batch comes), FileNotFoundError for a
        missing file, naming the input (``images[i]``, or ``image`` for a
        single one) and the path.
        """
        if isinstance(images, ImageList):
            return self._predict_image_list(images)
        single = isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim != 4)
        if single:
            items, names = [images], ["image"]
        else:
            try:
                items = list(images)
            except TypeError:
                raise TypeError("predict() takes an image (BGR uint8 array [H, W, 3]), an image file "
                                f"path or a list of them, got {type(images).__name__}") from None
            names = [f"images[{i}]" for i in range(len(items))]
        items = [self._check_input(item, what) for item, what in zip(items, names)]
        results = [None] * len(items)
        pending = {}  # batch key -> [(input index, (w, h), tensor, or array with TTA)]
        for i, (item, what) in enumerate(zip(items, names)):
            array = read_image(item, f"{what}: {item}") if isinstance(item, str) else item
            size = (array.shape[1], array.shape[0])
            if self.bbox_aug is None:
                payload = self.transforms(np.ascontiguousarray(array), None)[0]
                key = _padded_size(payload.shape[-2:], self.cfg.DATALOADER.SIZE_DIVISIBILITY)
            else:  # each pass resizes the original image: batch images of one size
                payload, key = np.ascontiguousarray(array), array.shape[:2]
            group = pending.setdefault(key, [])
            group.append((i, size, payload))
            if len(group) == self.batch_size:
                self._predict_group(pending.pop(key), results)
        for group in pending.values():
            self._predict_group(group, results)
        return results[0] if single else results

    @torch.no_grad()
    def _predict_image_list(self, image_list):
        """Detections of an already prepared batch, one per image, in the
        pixels of ``image_list.image_sizes`` ((h, w) each)."""
        if self.bbox_aug is not None:
            raise ValueError("predict(ImageList) runs the model on a prepared batch; test-time "
                             "augmentation needs the original images: pass arrays or paths")
        outputs = self.model(image_list.to(self.device))
        return [self._to_detections(output, (w, h))
                for output, (h, w) in zip(outputs, image_list.image_sizes)]

    @torch.no_grad()
    def _predict_group(self, group, results):
        """Run images of one padded size as one batch; ``results[i]`` = their
        :class:`Detections`."""
        payloads = [payload for _, _, payload in group]
        if self.bbox_aug is not None:
            outputs = self.bbox_aug(self.model, payloads, self.device)
        else:
            batch = to_image_list(payloads, self.cfg.DATALOADER.SIZE_DIVISIBILITY)
            outputs = self.model(batch.to(self.device))
        for (i, size, _), output in zip(group, outputs):
            results[i] = self._to_detections(output, size)

    def _to_detections(self, output, size):
        """The model's BoxList (resized-input pixels) -> Detections in the
        original image of ``size`` (w, h), thresholded per class."""
        output = output.to("cpu").convert("xyxy").resize(size)
        scores = output.get_field("scores").float()
        labels = output.get_field("labels").long()
        keep = scores >= self.thresholds[labels]
        labels = labels[keep]
        names = [self.class_names[i - 1] if 0 < i <= len(self.class_names) else str(i)
                 for i in labels.tolist()]
        return Detections(
            boxes=output.bbox[keep].float().numpy().reshape(-1, 4),
            scores=scores[keep].numpy(),
            labels=labels.numpy(),
            names=names,
            image_size=tuple(size),
        )

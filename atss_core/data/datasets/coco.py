"""COCO-format detection dataset (boxes only) on pycocotools, images read with OpenCV."""
import contextlib
import io
import logging
import os

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from atss_core.structures.bounding_box import BoxList
from atss_core.utils.io import read_json

logger = logging.getLogger(__name__)

# Consecutive unreadable images tolerated while looking for a replacement
# during training before concluding that the image folder itself is broken.
_MAX_REPLACEMENTS = 32


def read_image_file(path):
    """[H, W, 3] uint8 BGR array of the image file ``path``, decoded as the
    reference does: Pillow's ``Image.open(path).convert("RGB")`` (grayscale and
    palette images become RGB, an alpha channel is dropped, EXIF orientation is
    not applied, as the COCO sizes assume). None when the file is missing, not
    an image or truncated (Pillow refuses to decode a truncated file instead of
    filling the rest with grey)."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def has_valid_annotation(anns):
    """True when an image has at least one box wider and taller than 1 pixel.

    ``anns`` are the image's COCO annotations, crowd regions included (as in
    the reference, an image whose only usable boxes are crowd regions is kept
    for training; its target is then empty).
    """
    return any(ann["bbox"][2] > 1 and ann["bbox"][3] > 1 for ann in anns)


def _load_coco(ann_file, dataset_name):
    """pycocotools ``COCO`` of ``ann_file``, checked for what this dataset uses."""
    where = f"annotation file {ann_file} of dataset {dataset_name!r}"
    data = read_json(ann_file, where, ValueError, unreadable_error=FileNotFoundError)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"the {where} has no 'images' list; is it a COCO-format json?")
    if not isinstance(data.get("categories"), list):
        raise ValueError(
            f"the {where} has no 'categories' list (COCO-format files, including the "
            "test-dev image_info files, list the categories)"
        )
    for img in data["images"]:
        missing = {"id", "file_name", "width", "height"} - set(img)
        if missing:
            raise ValueError(
                f"image {img.get('id', img)} in the {where} lacks {', '.join(sorted(missing))}"
            )
    cat_ids = {cat["id"] for cat in data["categories"]}
    img_ids = {img["id"] for img in data["images"]}
    for ann in data.get("annotations", ()):
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise ValueError(
                f"annotation {ann.get('id')} in the {where} needs 'bbox' [x, y, w, h], got {bbox!r}"
            )
        if ann.get("category_id") not in cat_ids:
            raise ValueError(
                f"annotation {ann.get('id')} in the {where} has category_id "
                f"{ann.get('category_id')!r}, which is not in its 'categories'"
            )
        if ann.get("image_id") not in img_ids:
            raise ValueError(
                f"annotation {ann.get('id')} in the {where} has image_id "
                f"{ann.get('image_id')!r}, which is not in its 'images'"
            )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class COCODataset(torch.utils.data.Dataset):
    """Images and boxes of a COCO-format annotation file.

    Args:
        ann_file (str): COCO json (``instances_*.json``, or an
            ``image_info_*.json`` without "annotations" for test-dev).
        root (str): folder of the images (``file_name`` is relative to it).
        remove_images_without_annotations (bool): True for training: keep only
            images with at least one box of width and height > 1 (crowd boxes
            count, as in the reference).
        transforms (callable or None): ``(image, target) -> (image, target)``
            (see :mod:`atss_core.data.transforms`).
        name (str or None): dataset name used in messages and by evaluation
            (``DatasetCatalog`` name when built by ``build_dataset``; defaults
            to the annotation file's stem).
        replace_unreadable (bool or None): what ``__getitem__`` does with an
            image that cannot be read or decoded, or whose size differs from the
            annotation file: True (training) logs a warning and returns the next
            readable image instead; False (testing) logs a warning and returns
            ``None``, which :class:`~atss_core.data.collate_batch.BatchCollator`
            drops (that image then has no detections). Defaults to
            ``remove_images_without_annotations``.

    Category ids: ``json_category_id_to_contiguous_id`` maps the file's ids, in
    the order the file lists its categories (``COCO.getCatIds()``, as the
    reference does; for COCO that is ascending id order), to 1..C (0 is the
    background inside the model);
    ``contiguous_category_id_to_json_id`` is its inverse and ``categories``
    maps contiguous id -> name.

    ``dataset[index]`` is ``(image, target, index)``: ``image`` is what the
    transforms make of the [H, W, 3] uint8 BGR array (with the standard
    transforms a [3, H', W'] float tensor), ``target`` a :class:`BoxList` xyxy
    in the pixels of that image, crowd and degenerate boxes removed, with field
    "labels" (int64, contiguous ids).
    """

    def __init__(
        self,
        ann_file,
        root,
        remove_images_without_annotations,
        transforms=None,
        name=None,
        replace_unreadable=None,
    ):
        self.name = name or os.path.splitext(os.path.basename(ann_file))[0]
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(
                f"annotation file {ann_file} of dataset {self.name!r} does not exist"
            )
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root} of dataset {self.name!r} does not exist")
        self.root = root
        self.ann_file = ann_file
        self.coco = _load_coco(ann_file, self.name)
        self.ids = sorted(self.coco.imgs)
        if remove_images_without_annotations:
            self.ids = [i for i in self.ids if has_valid_annotation(self.coco.imgToAnns[i])]
        self.json_category_id_to_contiguous_id = {
            json_id: i + 1 for i, json_id in enumerate(self.coco.getCatIds())
        }
        self.contiguous_category_id_to_json_id = {
            v: k for k, v in self.json_category_id_to_contiguous_id.items()
        }
        self.categories = {
            contiguous: self.coco.cats[json_id]["name"]
            for contiguous, json_id in self.contiguous_category_id_to_json_id.items()
        }
        self.id_to_img_map = dict(enumerate(self.ids))
        self.transforms = transforms
        if replace_unreadable is None:
            replace_unreadable = remove_images_without_annotations
        self.replace_unreadable = bool(replace_unreadable)

    def __len__(self):
        return len(self.ids)

    def get_img_info(self, index):
        """``{"id", "height", "width", "file_name", ...}`` of image ``index``
        (the annotation file's record: original size, COCO image id)."""
        return self.coco.imgs[self.id_to_img_map[index]]

    def image_path(self, index):
        return os.path.join(self.root, self.get_img_info(index)["file_name"])

    def read_image(self, index):
        """[H, W, 3] uint8 BGR array of image ``index``, or None (with a logged
        warning) when it cannot be read or its size differs from the annotation
        file's. See :func:`read_image_file`."""
        info = self.get_img_info(index)
        path = self.image_path(index)
        image = read_image_file(path)
        if image is None:
            logger.warning(
                "dataset %r: cannot read image %s (missing, truncated or not an image); "
                "skipping it", self.name, path,
            )
            return None
        h, w = image.shape[:2]
        if (w, h) != (info["width"], info["height"]):
            logger.warning(
                "dataset %r: image %s is %dx%d but %s says %dx%d; skipping it (fix the "
                "annotation file or the image)", self.name, path, w, h, self.ann_file,
                info["width"], info["height"],
            )
            return None
        return image

    def get_target(self, index):
        """BoxList xyxy in the original image, crowd regions left out, boxes
        clipped to the image and empty ones removed; field "labels" int64."""
        info = self.get_img_info(index)
        anns = [a for a in self.coco.imgToAnns[info["id"]] if not a.get("iscrowd", 0)]
        boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = BoxList(boxes, (info["width"], info["height"]), mode="xywh").convert("xyxy")
        labels = [self.json_category_id_to_contiguous_id[a["category_id"]] for a in anns]
        target.add_field("labels", torch.as_tensor(labels, dtype=torch.int64))
        return target.clip_to_image(remove_empty=True)

    def __getitem__(self, index):
        image = self.read_image(index)
        if image is None:
            if not self.replace_unreadable:
                return None
            index, image = self._next_readable(index)
        target = self.get_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target, index

    def _next_readable(self, index):
        for step in range(1, min(_MAX_REPLACEMENTS, len(self))):
            candidate = (index + step) % len(self)
            image = self.read_image(candidate)
            if image is not None:
                return candidate, image
        raise RuntimeError(
            f"dataset {self.name!r}: image {self.image_path(index)} and the "
            f"{min(_MAX_REPLACEMENTS, len(self)) - 1} images after it cannot be read; "
            f"check the image folder {self.root}"
        )

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(name={self.name!r}, images={len(self)}, "
            f"classes={len(self.categories)}, ann_file={self.ann_file!r}, root={self.root!r})"
        )

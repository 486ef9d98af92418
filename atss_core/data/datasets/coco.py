"""COCO-format detection dataset (boxes only) on pycocotools, images decoded with Pillow."""
import contextlib
import io
import logging
import math
import os
from collections import Counter

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


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plural(n, one, many):
    return f"{n} {one if n == 1 else many}"


def _first(items, limit=5):
    items = list(items)
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _check_images(images, where, error):
    """Every image record has an integer ``id`` (unique), a ``file_name`` and
    a positive integer ``width`` and ``height``."""
    first_of_id = {}
    repeated = {}
    for k, img in enumerate(images):
        if not isinstance(img, dict):
            raise error(f"image #{k} in the {where} must be an object with id, file_name, "
                        f"width and height, got {_short(img)}")
        missing = {"id", "file_name", "width", "height"} - set(img)
        if missing:
            raise error(
                f"image {img.get('id', f'#{k}')} (record #{k}) in the {where} lacks "
                f"{', '.join(sorted(missing))}"
            )
        label = f"image #{k} (id {img['id']!r}, file_name {img['file_name']!r})"
        if not _is_int(img["id"]):
            raise error(f"{label} in the {where}: 'id' must be an integer, got {img['id']!r}")
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise error(f"{label} in the {where}: 'file_name' must be a non-empty string")
        for key in ("width", "height"):
            v = img[key]
            if not (_is_int(v) or (isinstance(v, float) and v.is_integer())) or v <= 0:
                raise error(
                    f"{label} in the {where}: '{key}' must be a positive integer (pixels), "
                    f"got {v!r}"
                )
        if img["id"] in first_of_id:
            repeated.setdefault(img["id"], [images[first_of_id[img["id"]]]["file_name"]])
            repeated[img["id"]].append(img["file_name"])
        else:
            first_of_id[img["id"]] = k
    if repeated:
        examples = [f"id {i} ({', '.join(names)})" for i, names in repeated.items()]
        raise error(
            f"image ids repeat in the {where}: {_first(examples, 3)}. Image ids must be unique: "
            "the boxes of every image with one id would be merged onto each of them"
        )


def _check_categories(categories, where, error):
    """Every category has a unique integer ``id`` and a string ``name``."""
    first = {}
    for k, cat in enumerate(categories):
        if not isinstance(cat, dict):
            raise error(f"category #{k} in the {where} must be an object with id and name, "
                        f"got {_short(cat)}")
        label = f"category #{k} (id {cat.get('id')!r}, name {cat.get('name')!r})"
        for key in ("id", "name"):
            if key not in cat:
                raise error(f"{label} in the {where} lacks '{key}'")
        if not _is_int(cat["id"]):
            raise error(f"{label} in the {where}: 'id' must be an integer, got {cat['id']!r}")
        if not isinstance(cat["name"], str):
            raise error(f"{label} in the {where}: 'name' must be a string, got {cat['name']!r}")
        if cat["id"] in first:
            raise error(
                f"category id {cat['id']} appears twice in the {where} (categories "
                f"#{first[cat['id']]} and #{k}); category ids must be unique"
            )
        first[cat["id"]] = k


def _annotation_problem(ann, cat_ids, img_ids):
    """What is wrong with annotation ``ann`` (a text naming the field), or None.
    Fills in a missing ``iscrowd`` (0) and ``area`` (w * h), which the COCO
    evaluation needs; returns the names of the fields filled in as a second
    value."""
    if not isinstance(ann, dict):
        return f"must be an object, got {_short(ann)}", ()
    if not (_is_int(ann.get("category_id")) and ann["category_id"] in cat_ids):
        return (f"has category_id {_short(ann.get('category_id'))}, which is not in its "
                "'categories'"), ()
    if not (_is_int(ann.get("image_id")) and ann["image_id"] in img_ids):
        return (f"has image_id {_short(ann.get('image_id'))}, which is not in its "
                "'images'"), ()
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        return f"needs 'bbox' [x, y, w, h], got {_short(bbox)}", ()
    for j, v in enumerate(bbox):
        if not _is_number(v):
            return f"has 'bbox' {_short(bbox)} whose value #{j} {v!r} is not a number", ()
    if not all(math.isfinite(v) for v in bbox):
        return f"has 'bbox' {_short(bbox)} with a non-finite value (NaN or infinity)", ()
    filled = []
    if "iscrowd" not in ann:
        ann["iscrowd"] = 0
        filled.append("iscrowd")
    elif ann["iscrowd"] not in (0, 1):  # True / False compare equal to 1 / 0
        return f"has 'iscrowd' {_short(ann['iscrowd'])} (0 or 1 expected)", ()
    if "area" not in ann:
        ann["area"] = float(bbox[2]) * float(bbox[3])
        filled.append("area")
    elif not (_is_number(ann["area"]) and math.isfinite(ann["area"])):
        return f"has 'area' {_short(ann['area'])}, which is not a finite number", ()
    return None, filled


def _check_annotations(annotations, where, error, cat_ids, img_ids):
    problems = []
    filled = Counter()
    for k, ann in enumerate(annotations):
        problem, added = _annotation_problem(ann, cat_ids, img_ids)
        if problem:
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            problems.append(
                f"annotation {_short(ann_id, 24)} (record #{k}, image_id {_short(image_id, 24)}) "
                f"{problem}"
            )
        filled.update(added)
    if problems:
        more = f" ({len(problems)} malformed annotations in all)" if len(problems) > 1 else ""
        raise error(
            f"the {where}: {'; '.join(problems[:3])}{more}. Fix the file (or the tool that "
            "wrote it): such boxes would make the training loss or the evaluation meaningless"
        )
    if filled:
        logger.warning(
            "the %s: %s missing in some annotations, filled in (iscrowd 0, area w * h)",
            where, ", ".join(f"'{key}' ({n} annotations)" for key, n in sorted(filled.items())),
        )


def renumber_annotation_ids(annotations, where):
    """Give ``annotations`` the ids 1..N (in file order) when their ids are not
    unique positive integers; returns True when it did (with a warning naming
    ``where`` and what was wrong).

    Annotation ids are only used inside pycocotools, but there they matter: its
    index keeps one annotation per id (a repeated id replaces the ground truth
    of other boxes by a copy of one box) and ``COCOeval`` records a match as the
    matched ground truth's id, 0 meaning "unmatched" (a detection of the box
    with id 0 counts as a false positive)."""
    ids = [ann.get("id") for ann in annotations]
    counts = Counter(i for i in ids if _is_int(i))
    repeated = {i: n for i, n in counts.items() if n > 1}
    not_positive = sorted(i for i in counts if i <= 0)
    missing = sum(1 for ann in annotations if "id" not in ann)
    not_int = [i for ann, i in zip(annotations, ids) if "id" in ann and not _is_int(i)]
    if not (repeated or not_positive or missing or not_int):
        return False
    what = []
    if repeated:
        examples = [f"id {i} x{n}" for i, n in sorted(repeated.items(), key=lambda kv: -kv[1])]
        what.append(f"{_plural(len(repeated), 'id repeats', 'ids repeat')} "
                    f"({_first(examples, 3)})")
    if not_positive:
        one = len(not_positive) == 1
        what.append(f"{'id' if one else 'ids'} {_first(not_positive, 3)} {'is' if one else 'are'} "
                    "not positive (0 means 'unmatched' inside the COCO evaluation)")
    if missing:
        what.append(f"{_plural(missing, 'annotation has', 'annotations have')} no id")
    if not_int:
        what.append(f"{_plural(len(not_int), 'id is', 'ids are')} not an integer "
                    f"({_first(map(repr, not_int), 3)})")
    for new_id, ann in enumerate(annotations, 1):
        ann["id"] = new_id
    logger.warning(
        "the %s: renumbered its %d annotation ids 1..%d in file order because %s. The ids are "
        "only used inside the COCO evaluation, which needs them unique and positive to score "
        "detections correctly", where, len(annotations), len(annotations), "; ".join(what),
    )
    return True


def load_coco_file(ann_file, where=None, error=ValueError, unreadable_error=None):
    """pycocotools ``COCO`` of the annotation file ``ann_file``, checked and
    normalised: what training and evaluation both load.

    Raises ``error`` (``unreadable_error`` for a file that cannot be read),
    naming the file (``where`` describes it), the record and the field, for:
    no ``images`` / ``categories`` list; an image without an integer ``id``, a
    ``file_name`` or positive ``width`` / ``height``; repeated image ids (the
    boxes of two images would be merged); a category without an integer
    ``id`` or a ``name``, or a repeated category id; an annotation whose
    ``image_id`` / ``category_id`` is not in the file, whose ``bbox`` is not
    4 finite numbers, or whose ``iscrowd`` / ``area`` is malformed.

    Normalises, with a warning: annotation ids that repeat, are 0 (or
    negative), missing or not integers are renumbered 1..N (see
    :func:`renumber_annotation_ids`); a missing ``iscrowd`` becomes 0 and a
    missing ``area`` w * h. ``annotations`` may be absent (test-dev files).
    """
    where = where or f"annotation file {ann_file}"
    data = read_json(ann_file, where, error, unreadable_error=unreadable_error)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise error(f"the {where} has no 'images' list; is it a COCO-format json?")
    if not isinstance(data.get("categories"), list):
        raise error(
            f"the {where} has no 'categories' list (COCO-format files, including the "
            "test-dev image_info files, list the categories)"
        )
    if "annotations" in data and not isinstance(data["annotations"], list):
        raise error(f"the {where}: 'annotations' must be a list, got "
                    f"{type(data['annotations']).__name__}")
    _check_images(data["images"], where, error)
    _check_categories(data["categories"], where, error)
    if "annotations" in data:
        cat_ids = {cat["id"] for cat in data["categories"]}
        img_ids = {img["id"] for img in data["images"]}
        _check_annotations(data["annotations"], where, error, cat_ids, img_ids)
        renumber_annotation_ids(data["annotations"], where)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _load_coco(ann_file, dataset_name):
    """pycocotools ``COCO`` of ``ann_file``, checked for what this dataset uses
    (see :func:`load_coco_file`)."""
    where = f"annotation file {ann_file} of dataset {dataset_name!r}"
    return load_coco_file(ann_file, where, ValueError, unreadable_error=FileNotFoundError)


# Why an image is left out of training (the reasons of ``COCODataset.skipped``).
SKIP_MISSING = "image file missing"
SKIP_NO_USABLE_BOX = "no box wider and taller than 1 pixel"
SKIP_OUTSIDE = "every box lies outside the image"
SKIP_UNREADABLE = "cannot be decoded (truncated or not an image)"
SKIP_SIZE = "size differs from the annotation file"


def _boxes_inside(anns, width, height):
    """For each of ``anns`` (one image's), whether its box keeps an area once
    clipped to the ``width`` x ``height`` image, computed as
    :meth:`COCODataset.get_target` does (float32, xywh -> xyxy with the +1
    convention, clamp to 0..w-1 / 0..h-1, x2 > x1 and y2 > y1)."""
    b = np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
    one = np.float32(1)
    x1, y1 = b[:, 0], b[:, 1]
    x2 = x1 + np.maximum(b[:, 2] - one, 0)
    y2 = y1 + np.maximum(b[:, 3] - one, 0)
    w, h = np.float32(width - 1), np.float32(height - 1)
    x1, x2 = np.clip(x1, 0, w), np.clip(x2, 0, w)
    y1, y2 = np.clip(y1, 0, h), np.clip(y2, 0, h)
    return (y2 > y1) & (x2 > x1)


def _every_box_outside(anns, width, height):
    """True when an image has a (non-crowd) box wider and taller than 1 pixel
    but none of its non-crowd boxes survive clipping to the image: its target
    would be empty, which says the boxes belong to another image size."""
    objects = [a for a in anns if not a.get("iscrowd", 0)]
    if not any(a["bbox"][2] > 1 and a["bbox"][3] > 1 for a in objects):
        return False
    for a in objects:  # the usual case, quickly: a box at least 2x2 pixels inside the image
        x, y, w, h = a["bbox"]
        if w >= 2 and h >= 2 and x >= 0 and y >= 0 and x + w <= width and y + h <= height:
            return False
    return not _boxes_inside(objects, width, height).any()


def _missing_files(root, infos):
    """Ids of the images of ``infos`` whose file is not in ``root`` (each
    folder is listed once: a stat per image would be slow on network disks)."""
    listings = {}
    missing = set()
    for info in infos:
        folder, name = os.path.split(os.path.join(root, info["file_name"]))
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder))
            except OSError:
                listings[folder] = set()
        if name not in listings[folder]:
            missing.add(info["id"])
    return missing


class COCODataset(torch.utils.data.Dataset):
    """Images and boxes of a COCO-format annotation file.

    Args:
        ann_file (str): COCO json (``instances_*.json``, or an
            ``image_info_*.json`` without "annotations" for test-dev). Loaded
            and checked by :func:`load_coco_file` (malformed records are
            errors naming the file, the record and the field; annotation ids
            that repeat or are 0 are renumbered).
        root (str): folder of the images (``file_name`` is relative to it).
        remove_images_without_annotations (bool): True for training: keep only
            images with at least one box of width and height > 1 (crowd boxes
            count, as in the reference), and also leave out the images whose
            file is missing and those whose every box lies outside the image
            (see ``skipped``).
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

    What the annotation file and the image folder tell at construction is
    summarised in ONE log line: for training, how many images are used, how
    many are left out and why, and the first few names; ``skipped`` lists
    every image left out for a reason (``(image id, path, reason)``; images
    without any annotation are not in it, the reference leaves those out
    silently) and ``num_unlabelled`` counts those. For testing every image is
    kept; missing files and images whose every box lies outside them are
    summarised the same way (``missing_ids`` holds the missing files' ids).
    A truncated image or one whose size differs from the file is only found
    when it is decoded, in the data loader's workers: one warning line per
    image (per worker process, not repeated when the image comes again), and
    when ``skip_log`` is a file path the image is appended to it (the list
    that ``make_data_loader`` writes in ``OUTPUT_DIR``).

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
        self._survey(bool(remove_images_without_annotations))
        self.id_to_img_map = dict(enumerate(self.ids))
        self.transforms = transforms
        if replace_unreadable is None:
            replace_unreadable = remove_images_without_annotations
        self.replace_unreadable = bool(replace_unreadable)
        self.skip_log = None
        self._reported = set()  # images warned about in this process

    def _survey(self, for_training):
        """``ids`` (the images used), ``skipped``, ``num_unlabelled`` and
        ``missing_ids``; logs the summary line."""
        all_ids = sorted(self.coco.imgs)
        self.num_images_in_file = len(all_ids)
        self.missing_ids = _missing_files(self.root, (self.coco.imgs[i] for i in all_ids))
        outside = set()
        if "annotations" in self.coco.dataset:
            for i in all_ids:
                info = self.coco.imgs[i]
                if _every_box_outside(self.coco.imgToAnns[i], info["width"], info["height"]):
                    outside.add(i)
        self.skipped = []
        self.num_unlabelled = 0
        if not for_training:
            self.ids = all_ids
            problems = [(i, SKIP_MISSING) for i in all_ids if i in self.missing_ids]
            problems += [(i, SKIP_OUTSIDE) for i in all_ids if i in outside]
            if problems:
                logger.warning(
                    "dataset %r: %s (%s); those images are kept: missing ones are skipped by the "
                    "loader and listed in metrics.json as skipped_image_ids, ground truth "
                    "outside an image cannot be matched by any detection",
                    self.name, self._counts(problems), self._examples(problems),
                )
            return
        self.ids = []
        for i in all_ids:
            anns = self.coco.imgToAnns[i]
            if i in self.missing_ids:
                reason = SKIP_MISSING
            elif not anns:
                self.num_unlabelled += 1
                continue
            elif not has_valid_annotation(anns):
                reason = SKIP_NO_USABLE_BOX
            elif i in outside:
                reason = SKIP_OUTSIDE
            else:
                self.ids.append(i)
                continue
            self.skipped.append((i, self._path_of(i), reason))
        parts = [f"training on {len(self.ids)} of the {len(all_ids)} images of {self.ann_file}"]
        if self.num_unlabelled:
            parts.append(f"{self.num_unlabelled} without annotations left out (as the reference "
                         "does)")
        if self.skipped:
            problems = [(i, reason) for i, _, reason in self.skipped]
            parts.append(f"{len(self.skipped)} skipped: {self._counts(problems)} "
                         f"({self._examples(problems)})")
        logger.log(logging.WARNING if self.skipped else logging.INFO,
                   "dataset %r: %s", self.name, "; ".join(parts))

    def _path_of(self, image_id):
        return os.path.join(self.root, self.coco.imgs[image_id]["file_name"])

    @staticmethod
    def _counts(problems):
        counts = Counter(reason for _, reason in problems)
        return ", ".join(f"{n} {reason}" for reason, n in counts.most_common())

    def _examples(self, problems, limit=3):
        shown = [self.coco.imgs[i]["file_name"] for i, _ in problems[:limit]]
        more = ", ..." if len(problems) > limit else ""
        return "first: " + ", ".join(shown) + more

    def __len__(self):
        return len(self.ids)

    def get_img_info(self, index):
        """``{"id", "height", "width", "file_name", ...}`` of image ``index``
        (the annotation file's record: original size, COCO image id)."""
        return self.coco.imgs[self.id_to_img_map[index]]

    def image_path(self, index):
        return os.path.join(self.root, self.get_img_info(index)["file_name"])

    def _report_unreadable(self, info, path, reason, detail):
        """One warning per image and process (an image that comes again, in a
        later epoch, is not reported again), appended to ``skip_log``."""
        if info["id"] in self._reported:
            return
        self._reported.add(info["id"])
        then = "using another image instead" if self.replace_unreadable else "skipping it"
        logger.warning(
            "dataset %r: image %s %s; %s (%d unreadable images so far in this process)",
            self.name, path, detail, then, len(self._reported),
        )
        if self.skip_log:
            line = f"{self.name}\t{info['id']}\t{path}\t{reason} (found while reading)\n"
            try:  # one short append: atomic between the loader's processes
                with open(self.skip_log, "a") as f:
                    f.write(line)
            except OSError as e:
                logger.warning("cannot append to %s: %s", self.skip_log, e)

    def read_image(self, index):
        """[H, W, 3] uint8 BGR array of image ``index``, or None when it cannot
        be read or its size differs from the annotation file's, with a warning
        naming the file (once per image and process; none for a file already
        reported missing at construction). See :func:`read_image_file`."""
        info = self.get_img_info(index)
        path = self.image_path(index)
        image = read_image_file(path)
        if image is None:
            if info["id"] not in self.missing_ids:  # those are in the summary already
                reason = SKIP_MISSING if not os.path.exists(path) else SKIP_UNREADABLE
                self._report_unreadable(
                    info, path, reason, "cannot be read (missing, truncated or not an image)"
                )
            return None
        h, w = image.shape[:2]
        if (w, h) != (info["width"], info["height"]):
            self._report_unreadable(
                info, path, SKIP_SIZE,
                f"is {w}x{h} but {self.ann_file} says {info['width']}x{info['height']} (fix the "
                "annotation file or the image)",
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

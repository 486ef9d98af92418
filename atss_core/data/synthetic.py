"""The built-in synthetic detection dataset "shapes", in COCO format.

Coloured shapes of five classes (circle, rectangle, triangle, star, cross) of
various sizes and aspect ratios, some overlapping, on noisy textured
backgrounds. Everything is a pure function of a seed: image ``i`` of a split
is drawn from its own generator seeded with ``(seed, split, i)``, so the same
parameters always give the same pixels and boxes, and a larger split starts
with the images of a smaller one.

Layout under ``root`` (the data root, ``$ATSS_DATA_DIR`` or ``datasets/``)::

    <root>/<name>/train/000001.jpg ...
    <root>/<name>/val/000001.jpg ...
    <root>/<name>/annotations/instances_train.json
    <root>/<name>/annotations/instances_val.json
    <root>/<name>/manifest.json        (the parameters it was generated with)

The catalog names ``shapes_train`` / ``shapes_val`` (see
``atss_core/config/paths_catalog.py``) are ``<root>/shapes``.

Annotations: ``bbox`` is ``[x, y, w, h]`` of the *visible* pixels of the shape
(a shape partly hidden by a later one gets the box of what is left of it),
with the pixel-inclusive convention of the framework: a shape covering pixel
columns ``x1..x2`` has ``x = x1`` and ``w = x2 - x1 + 1``. ``area`` is the
number of visible pixels, ``iscrowd`` is 0, category ids are 1..5 in
:data:`CLASS_NAMES` order. Every shape keeps at least
``MIN_VISIBLE_FRACTION`` of its pixels visible.

Generate from the command line::

    python -m atss_core.data.synthetic --root datasets --num-train 600 --num-val 100
"""
import argparse
import json
import os
import shutil
import tempfile

import cv2
import numpy as np

from atss_core.utils.io import atomic_write_json

CLASS_NAMES = ("circle", "rectangle", "triangle", "star", "cross")
# Bumped whenever the drawing changes, so that ensure_shapes_dataset
# regenerates datasets written by an older generator.
GENERATOR_VERSION = 1
DEFAULT_NAME = "shapes"
DEFAULTS = {"num_train": 600, "num_val": 100, "image_size": 256, "seed": 0, "max_objects": 6}
# Catalog names of the dataset generated with DEFAULTS under the data root.
CATALOG_SPLITS = {f"{DEFAULT_NAME}_train": "train", f"{DEFAULT_NAME}_val": "val"}

MIN_VISIBLE_FRACTION = 0.6
_SPLIT_CODES = {"train": 0, "val": 1}
_PLACEMENT_ATTEMPTS = 20
_MIN_CONTRAST = 90.0  # summed |colour - background| over B, G, R


class SyntheticDatasetError(RuntimeError):
    """A synthetic dataset folder that cannot be (re)generated safely."""


def split_paths(root, name, split):
    """``(image folder, annotation file)`` of ``split`` ("train" or "val")."""
    base = os.path.join(root, name)
    return (os.path.join(base, split),
            os.path.join(base, "annotations", f"instances_{split}.json"))


def _image_size(image_size):
    """``(width, height)`` of an int (square) or a (width, height) pair."""
    if isinstance(image_size, int):
        width = height = image_size
    else:
        width, height = (int(v) for v in image_size)
    if min(width, height) < 64:
        raise ValueError(f"image_size must be at least 64 pixels on each side, got {image_size!r}")
    return width, height


# --------------------------------------------------------------------------- #
# Drawing
# --------------------------------------------------------------------------- #
def _unit_polygon(category, rng):
    """Outline of a shape as float [K, 2] (x, y) points spanning the unit
    square [0, 1]^2 exactly."""
    if category == "circle":
        angles = np.arange(64) * (2 * np.pi / 64)
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif category == "rectangle":
        points = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    elif category == "triangle":
        apex = rng.uniform(0.0, 1.0)
        points = np.array([[apex, 0.0], [1.0, 1.0], [0.0, 1.0]])
        # Point up, right, down or left.
        for _ in range(rng.integers(4)):
            points = np.stack([1.0 - points[:, 1], points[:, 0]], axis=1)
    elif category == "star":
        angles = rng.uniform(0, 2 * np.pi) + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        points = np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)
    elif category == "cross":
        a = rng.uniform(0.3, 0.4)  # half the arm thickness is 0.5 - a
        b = 1.0 - a
        points = np.array([[a, 0], [b, 0], [b, a], [1, a], [1, b], [b, b],
                           [b, 1], [a, 1], [a, b], [0, b], [0, a], [a, a]], dtype=np.float64)
    else:
        raise ValueError(f"unknown shape category {category!r}; known: {', '.join(CLASS_NAMES)}")
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - lo) / (hi - lo)


def _shape_mask(category, x0, y0, w, h, width, height, rng):
    """Boolean [height, width] mask of a shape filling the box of top-left
    (x0, y0) and size (w, h) pixels."""
    mask = np.zeros((height, width), dtype=np.uint8)
    points = np.round(_unit_polygon(category, rng) * [w - 1, h - 1] + [x0, y0]).astype(np.int32)
    cv2.fillPoly(mask, [points], 1)
    return mask.astype(bool)


def _background(rng, width, height):
    """Float32 [H, W, 3] BGR background: a two-colour gradient, low-frequency
    blotches and a few thin distractor strokes."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    image = c0 + (c1 - c0) * t[..., None]
    cells = rng.integers(3, 9, size=2)
    blotches = rng.normal(0, 1, (cells[0], cells[1], 3)).astype(np.float32)
    image += cv2.resize(blotches, (width, height), interpolation=cv2.INTER_CUBIC) * rng.uniform(10, 35)
    image = np.ascontiguousarray(image, dtype=np.float32)
    for _ in range(rng.integers(0, 6)):
        p0 = (int(rng.integers(width)), int(rng.integers(height)))
        p1 = (int(rng.integers(width)), int(rng.integers(height)))
        cv2.line(image, p0, p1, tuple(float(c) for c in rng.uniform(0, 255, 3)), 1, cv2.LINE_AA)
    return image


def _fill_colour(rng, background_mean):
    """A BGR colour that stands out from ``background_mean`` (random, else the
    background's complement)."""
    for _ in range(10):
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - background_mean).sum() >= _MIN_CONTRAST:
            return colour
    return 255.0 - background_mean


def render_shapes_image(rng, width, height, max_objects=6):
    """Draw one image.

    Args:
        rng (numpy.random.Generator): the only source of randomness.
        width, height (int): image size in pixels.
        max_objects (int): 1..max_objects shapes are placed (fewer when no
            place that keeps every shape visible enough is found).

    Returns:
        (image [height, width, 3] uint8 BGR,
         list of {"category_id": 1..5, "bbox": [x, y, w, h], "area": int},
         one per shape, in drawing order; see the module docstring for the
         box convention).
    """
    image = _background(rng, width, height)
    owner = np.zeros((height, width), dtype=np.int32)  # 0: background, k: shape k
    full_areas, visible_areas, categories = [0], [0], []
    short = min(width, height)
    min_size, max_size = max(12.0, short / 16), short / 2.2
    for _ in range(rng.integers(1, max_objects + 1)):
        for _attempt in range(_PLACEMENT_ATTEMPTS):
            category_id = int(rng.integers(len(CLASS_NAMES))) + 1
            category = CLASS_NAMES[category_id - 1]
            size = np.exp(rng.uniform(np.log(min_size), np.log(max_size)))
            if category == "circle":
                aspect = 1.0
            elif category == "star":
                aspect = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
            else:
                aspect = np.exp(rng.uniform(np.log(0.4), np.log(2.5)))
            w = int(np.clip(round(size * np.sqrt(aspect)), 8, width - 2))
            h = int(np.clip(round(size / np.sqrt(aspect)), 8, height - 2))
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            mask = _shape_mask(category, x0, y0, w, h, width, height, rng)
            covered = np.bincount(owner[mask], minlength=len(full_areas))
            remaining = np.asarray(visible_areas) - covered
            if np.all(remaining[1:] >= MIN_VISIBLE_FRACTION * np.asarray(full_areas[1:])):
                break
        else:
            continue  # no room for another shape
        colour = _fill_colour(rng, image[mask].mean(axis=0))
        # Shading: a linear colour ramp across the shape, in a random direction.
        ys, xs = np.nonzero(mask)
        direction = rng.normal(0, 1, 2)
        ramp = (xs - x0) / w * direction[0] + (ys - y0) / h * direction[1]
        image[ys, xs] = colour + rng.uniform(0, 25) * ramp[:, None]
        visible_areas = list(remaining)
        full_areas.append(int(mask.sum()))
        visible_areas.append(full_areas[-1])
        categories.append(category_id)
        owner[mask] = len(full_areas) - 1

    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.9))
    image += rng.normal(0, rng.uniform(2, 10), image.shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    annotations = []
    for k, category_id in enumerate(categories, start=1):
        ys, xs = np.nonzero(owner == k)
        x1, y1 = int(xs.min()), int(ys.min())
        annotations.append({
            "category_id": category_id,
            "bbox": [x1, y1, int(xs.max()) - x1 + 1, int(ys.max()) - y1 + 1],
            "area": int(xs.size),
        })
    return image, annotations


def image_rng(seed, split, index):
    """The generator of image ``index`` (0-based) of ``split``."""
    return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])


# --------------------------------------------------------------------------- #
# Dataset files
# --------------------------------------------------------------------------- #
def _write_split(base, split, num_images, width, height, seed, max_objects):
    image_dir = os.path.join(base, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image, shapes = render_shapes_image(image_rng(seed, split, index), width, height, max_objects)
        file_name = f"{index + 1:06d}.jpg"
        if not cv2.imwrite(os.path.join(image_dir, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise OSError(f"could not write {os.path.join(image_dir, file_name)}")
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for shape in shapes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **shape})
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(CLASS_NAMES)]
    atomic_write_json(
        {"info": {"description": f"atss synthetic shapes, {split} split, seed {seed}"},
         "images": images, "annotations": annotations, "categories": categories},
        os.path.join(base, "annotations", f"instances_{split}.json"),
    )


def _manifest(num_train, num_val, image_size, seed, max_objects):
    width, height = _image_size(image_size)
    for key, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1),
                            ("max_objects", max_objects, 1)):
        if int(value) < low:
            raise ValueError(f"{key} must be at least {low}, got {value}")
    return {
        "generator": "atss_core.data.synthetic",
        "version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [width, height],
        "seed": int(seed),
        "max_objects": int(max_objects),
        "classes": list(CLASS_NAMES),
    }


def read_manifest(root, name=DEFAULT_NAME):
    """The manifest of ``<root>/<name>``, or None when there is none (or it is
    unreadable)."""
    try:
        with open(os.path.join(root, name, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_complete(root, name, manifest):
    if read_manifest(root, name) != manifest:
        return False
    for split in ("train", "val"):
        image_dir, ann_file = split_paths(root, name, split)
        if not os.path.isfile(ann_file) or not os.path.isdir(image_dir):
            return False
        if len(os.listdir(image_dir)) != manifest[f"num_{split}"]:
            return False
    return True


def generate_shapes_dataset(root, name=DEFAULT_NAME, num_train=DEFAULTS["num_train"],
                            num_val=DEFAULTS["num_val"], image_size=DEFAULTS["image_size"],
                            seed=DEFAULTS["seed"], max_objects=DEFAULTS["max_objects"]):
    """Generate ``<root>/<name>`` (replacing an earlier generated one).

    The files are written to a temporary folder beside it that is renamed into
    place at the end, so an interrupted run leaves no half-written dataset and
    concurrent runs with the same parameters (e.g. the processes of a
    distributed job) agree on the result. A folder ``<root>/<name>`` that
    this generator did not write (no ``manifest.json``) is never replaced:
    :class:`SyntheticDatasetError`.

    Args:
        root (str): the data root.
        name (str): the dataset folder name.
        num_train, num_val (int): images per split.
        image_size (int or (width, height)): image size in pixels (>= 64).
        seed (int): the dataset is a pure function of the parameters.
        max_objects (int): at most this many shapes per image.

    Returns:
        The dataset folder ``<root>/<name>``.
    """
    manifest = _manifest(num_train, num_val, image_size, seed, max_objects)
    final = os.path.join(root, name)
    if os.path.exists(final) and read_manifest(root, name) is None and os.listdir(final):
        raise SyntheticDatasetError(
            f"{os.path.abspath(final)} exists but has no manifest.json, so it was not written by "
            "the shapes generator; not replacing it. Move it away, or generate into another "
            "data root (--root / $ATSS_DATA_DIR) or name."
        )
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the dataset is not
    try:
        width, height = manifest["image_size"]
        for split in ("train", "val"):
            _write_split(tmp, split, manifest[f"num_{split}"], width, height, seed, max_objects)
        atomic_write_json(manifest, os.path.join(tmp, "manifest.json"), indent=2)
        if os.path.exists(final):
            trash = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=root)
            os.replace(final, os.path.join(trash, name))
            shutil.rmtree(trash)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same dataset first.
            if not _is_complete(root, name, manifest):
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def ensure_shapes_dataset(root, name=DEFAULT_NAME, num_train=DEFAULTS["num_train"],
                          num_val=DEFAULTS["num_val"], image_size=DEFAULTS["image_size"],
                          seed=DEFAULTS["seed"], max_objects=DEFAULTS["max_objects"]):
    """``<root>/<name>`` with these parameters: reused when its manifest
    matches and its files are all there, generated otherwise (see
    :func:`generate_shapes_dataset`). Returns ``(folder, generated: bool)``."""
    manifest = _manifest(num_train, num_val, image_size, seed, max_objects)
    if _is_complete(root, name, manifest):
        return os.path.join(root, name), False
    folder = generate_shapes_dataset(root, name, num_train, num_val, image_size, seed, max_objects)
    return folder, True


def ensure_catalog_dataset(dataset_name):
    """Hook for ``build_dataset``: when ``dataset_name`` is a built-in synthetic
    name (``shapes_train`` / ``shapes_val``) that resolves to the default
    location and its files are absent, generate them with :data:`DEFAULTS`.
    A generated dataset is never replaced, whatever its parameters. Returns
    True when it generated something."""
    from atss_core.config.paths_catalog import DatasetCatalog, data_root

    split = CATALOG_SPLITS.get(dataset_name)
    if split is None:
        return False
    root = data_root()
    image_dir, ann_file = split_paths(root, DEFAULT_NAME, split)
    args = DatasetCatalog.get(dataset_name)["args"]
    if (os.path.normpath(args["root"]), os.path.normpath(args["ann_file"])) != (
            os.path.normpath(image_dir), os.path.normpath(ann_file)):
        return False  # registered elsewhere by the user
    if read_manifest(root, DEFAULT_NAME) is not None and os.path.isfile(ann_file):
        return False
    generate_shapes_dataset(root, DEFAULT_NAME, **DEFAULTS)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Generate the synthetic 'shapes' detection dataset (COCO format)")
    parser.add_argument("--root", default=os.environ.get("ATSS_DATA_DIR", "datasets"),
                        help="data root (default: $ATSS_DATA_DIR, else datasets/)")
    parser.add_argument("--name", default=DEFAULT_NAME, help="dataset folder name (default: shapes)")
    parser.add_argument("--num-train", type=int, default=DEFAULTS["num_train"])
    parser.add_argument("--num-val", type=int, default=DEFAULTS["num_val"])
    parser.add_argument("--image-size", type=int, default=DEFAULTS["image_size"],
                        help="width and height in pixels")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--max-objects", type=int, default=DEFAULTS["max_objects"])
    parser.add_argument("--force", action="store_true",
                        help="regenerate even when a dataset with these parameters exists")
    args = parser.parse_args(argv)
    params = dict(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                  seed=args.seed, max_objects=args.max_objects)
    if args.force:
        folder, generated = generate_shapes_dataset(args.root, args.name, **params), True
    else:
        folder, generated = ensure_shapes_dataset(args.root, args.name, **params)
    print(f"{'generated' if generated else 'up to date:'} {os.path.abspath(folder)}")


if __name__ == "__main__":
    main()

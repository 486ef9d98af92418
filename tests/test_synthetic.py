"""The built-in synthetic "shapes" dataset: determinism, COCO validity, boxes,
the manifest logic of ensure_shapes_dataset and the catalog hook."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from atss_core.config.paths_catalog import DatasetCatalog
from atss_core.data import COCODataset, build_dataset
from atss_core.data import synthetic
from atss_core.data.synthetic import (
    CLASS_NAMES,
    SyntheticDatasetError,
    ensure_catalog_dataset,
    ensure_shapes_dataset,
    generate_shapes_dataset,
    image_rng,
    read_manifest,
    render_shapes_image,
    split_paths,
)

SMALL = dict(num_train=8, num_val=4, image_size=96, seed=3, max_objects=5)


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    generate_shapes_dataset(root, **SMALL)
    return root


def test_render_is_a_function_of_the_seed():
    a_image, a_shapes = render_shapes_image(image_rng(7, "train", 2), 128, 96)
    b_image, b_shapes = render_shapes_image(image_rng(7, "train", 2), 128, 96)
    c_image, _ = render_shapes_image(image_rng(8, "train", 2), 128, 96)
    d_image, _ = render_shapes_image(image_rng(7, "val", 2), 128, 96)
    assert a_image.shape == (96, 128, 3) and a_image.dtype == np.uint8
    assert np.array_equal(a_image, b_image) and a_shapes == b_shapes
    assert not np.array_equal(a_image, c_image)
    assert not np.array_equal(a_image, d_image)


def test_generation_is_deterministic(tmp_path, small_dataset):
    other = str(tmp_path)
    generate_shapes_dataset(other, **SMALL)
    for split in ("train", "val"):
        image_dir_a, ann_a = split_paths(small_dataset, "shapes", split)
        image_dir_b, ann_b = split_paths(other, "shapes", split)
        assert _load(ann_a) == _load(ann_b)
        names = sorted(os.listdir(image_dir_a))
        assert names == sorted(os.listdir(image_dir_b))
        for name in names:
            assert np.array_equal(cv2.imread(os.path.join(image_dir_a, name)),
                                  cv2.imread(os.path.join(image_dir_b, name)))


def test_a_larger_split_starts_with_the_smaller_one(tmp_path, small_dataset):
    generate_shapes_dataset(str(tmp_path), **{**SMALL, "num_train": 10})
    small = _load(split_paths(small_dataset, "shapes", "train")[1])
    large = _load(split_paths(str(tmp_path), "shapes", "train")[1])
    assert large["images"][:8] == small["images"]
    assert large["annotations"][:len(small["annotations"])] == small["annotations"]


def test_annotation_file_is_valid_coco(small_dataset):
    image_dir, ann_file = split_paths(small_dataset, "shapes", "train")
    data = _load(ann_file)
    assert [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])] == list(CLASS_NAMES)
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5]
    assert len(data["images"]) == SMALL["num_train"]
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    coco = COCO(ann_file)
    assert len(coco.getImgIds()) == SMALL["num_train"]
    assert len(coco.getAnnIds()) == len(data["annotations"]) > 0
    for img in data["images"]:
        image = cv2.imread(os.path.join(image_dir, img["file_name"]))
        assert image.shape == (img["height"], img["width"], 3)


def test_boxes_lie_inside_the_images_and_match_their_area(small_dataset):
    data = _load(split_paths(small_dataset, "shapes", "train")[1])
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    per_image = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert all(isinstance(v, int) for v in ann["bbox"])
        assert x >= 0 and y >= 0 and w >= 2 and h >= 2
        assert x + w <= width and y + h <= height
        assert 0 < ann["area"] <= w * h
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(CLASS_NAMES)
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    assert set(per_image) == set(sizes)  # every image has a shape
    assert max(per_image.values()) <= SMALL["max_objects"]


def test_every_class_and_a_range_of_sizes_occur():
    counts = np.zeros(len(CLASS_NAMES) + 1, dtype=int)
    widths, aspects = [], []
    for index in range(30):
        _, shapes = render_shapes_image(image_rng(0, "train", index), 160, 160)
        for shape in shapes:
            counts[shape["category_id"]] += 1
            widths.append(shape["bbox"][2])
            aspects.append(shape["bbox"][2] / shape["bbox"][3])
    assert (counts[1:] > 0).all(), counts
    assert min(widths) < 20 and max(widths) > 50
    assert min(aspects) < 0.7 and max(aspects) > 1.4


@pytest.mark.parametrize("category", CLASS_NAMES)
def test_each_shape_fills_the_box_it_is_drawn_in(category):
    # The annotation box is the extent of the visible mask, so a shape must
    # reach all four sides of the box it was placed in.
    rng = np.random.default_rng(0)
    for x0, y0, w, h in [(3, 5, 20, 20), (10, 0, 41, 17), (0, 12, 13, 37)]:
        if category == "circle":
            h = w
        mask = synthetic._shape_mask(category, x0, y0, w, h, 64, 64, rng)
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (x0, y0, w, h)
        assert mask.sum() >= 0.2 * w * h


def test_framework_dataset_reads_it(small_dataset):
    image_dir, ann_file = split_paths(small_dataset, "shapes", "val")
    dataset = COCODataset(ann_file, image_dir, remove_images_without_annotations=True, name="shapes_val")
    assert len(dataset) == SMALL["num_val"]
    assert dataset.categories == {i + 1: n for i, n in enumerate(CLASS_NAMES)}
    image, target, index = dataset[1]
    assert index == 1 and image.shape == (96, 96, 3)
    assert target.mode == "xyxy" and target.size == (96, 96) and len(target) > 0
    labels = target.get_field("labels")
    assert labels.dtype == torch.int64 and bool(((labels >= 1) & (labels <= 5)).all())
    boxes = target.bbox
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 95).all() and (boxes[:, 3] <= 95).all())


def test_ensure_reuses_then_regenerates_on_other_parameters(tmp_path):
    root = str(tmp_path)
    folder, generated = ensure_shapes_dataset(root, **SMALL)
    assert generated and folder == os.path.join(root, "shapes")
    assert read_manifest(root)["seed"] == SMALL["seed"]
    stamp = os.path.getmtime(split_paths(root, "shapes", "train")[1])
    assert ensure_shapes_dataset(root, **SMALL) == (folder, False)
    assert os.path.getmtime(split_paths(root, "shapes", "train")[1]) == stamp
    _, generated = ensure_shapes_dataset(root, **{**SMALL, "seed": 4})
    assert generated and read_manifest(root)["seed"] == 4
    # A missing image makes the dataset incomplete: regenerated.
    image_dir = split_paths(root, "shapes", "val")[0]
    os.remove(os.path.join(image_dir, sorted(os.listdir(image_dir))[0]))
    _, generated = ensure_shapes_dataset(root, **{**SMALL, "seed": 4})
    assert generated and len(os.listdir(image_dir)) == SMALL["num_val"]
    assert not [n for n in os.listdir(root) if n.startswith(".")]  # no temporary folders left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(folder).st_mode & 0o777 == 0o777 & ~umask  # readable as any folder made here


def test_never_replaces_a_folder_it_did_not_write(tmp_path):
    foreign = tmp_path / "shapes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("user data")
    with pytest.raises(SyntheticDatasetError, match="no manifest.json"):
        ensure_shapes_dataset(str(tmp_path), **SMALL)
    assert (foreign / "mine.txt").read_text() == "user data"


@pytest.mark.parametrize("bad, match", [
    ({"image_size": 32}, "image_size"),
    ({"num_train": 0}, "num_train"),
    ({"max_objects": 0}, "max_objects"),
])
def test_invalid_parameters_are_rejected(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        generate_shapes_dataset(str(tmp_path), **{**SMALL, **bad})


def test_catalog_names_generate_the_dataset_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("ATSS_DATA_DIR", str(tmp_path))
    monkeypatch.setitem(synthetic.DEFAULTS, "num_train", 5)
    monkeypatch.setitem(synthetic.DEFAULTS, "num_val", 3)
    monkeypatch.setitem(synthetic.DEFAULTS, "image_size", 96)
    assert not ensure_catalog_dataset("coco128_train")
    assert ensure_catalog_dataset("shapes_train")
    assert not ensure_catalog_dataset("shapes_val")  # both splits were generated
    for name in ("shapes_train", "shapes_val"):
        args = DatasetCatalog.get(name)["args"]
        assert os.path.isdir(args["root"]) and os.path.isfile(args["ann_file"])
    (train,) = build_dataset(["shapes_train"], transforms=None, is_train=True)
    assert len(train) == 5 and train.name == "shapes_train"
    # An existing dataset is kept whatever its parameters.
    monkeypatch.setitem(synthetic.DEFAULTS, "num_train", 6)
    assert not ensure_catalog_dataset("shapes_train")
    assert read_manifest(str(tmp_path))["num_train"] == 5


def test_command_line(tmp_path, capsys):
    synthetic.main(["--root", str(tmp_path), "--num-train", "3", "--num-val", "2", "--image-size", "80"])
    assert "generated" in capsys.readouterr().out
    synthetic.main(["--root", str(tmp_path), "--num-train", "3", "--num-val", "2", "--image-size", "80"])
    assert "up to date" in capsys.readouterr().out
    assert read_manifest(str(tmp_path))["image_size"] == [80, 80]


def test_building_a_catalog_shapes_dataset_generates_it(tmp_path, monkeypatch):
    from atss_core.data import build_dataset

    monkeypatch.setenv("ATSS_DATA_DIR", str(tmp_path))
    datasets = build_dataset(["shapes_val"], transforms=None, is_train=False)
    assert len(datasets[0]) > 0
    assert (tmp_path / "shapes" / "annotations" / "instances_val.json").is_file()

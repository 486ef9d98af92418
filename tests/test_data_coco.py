"""COCODataset and build_dataset: hand-made annotation files and coco128."""
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from atss_core.config.paths_catalog import DatasetCatalog
from atss_core.data import COCODataset, build_dataset
from atss_core.data import build as data_build
from atss_core.data.datasets import ConcatDataset

from conftest import COCO128_DIR, requires_coco128

SHARED_DATA = os.path.dirname(COCO128_DIR)  # the data root that holds coco128/
needs_coco128 = requires_coco128()


def _ann(ann_id, image_id, bbox, category_id=7, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "bbox": bbox, "category_id": category_id,
            "iscrowd": iscrowd, "area": bbox[2] * bbox[3]}


def make_dataset(folder, with_annotations=True):
    """Five 40x30 images; category ids 7 ("seven") and 3 ("three") listed unsorted.

    image 1: a normal box, a crowd box, a degenerate box, a box sticking out of
             the image and one entirely outside it;
    image 2: only boxes 1 pixel wide or high (unusable for training);
    image 3: no annotations;
    image 4: only a crowd box (kept for training, as in the reference);
    image 5: a file that is not an image.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(1, 5):
        image = np.full((30, 40, 3), 10 * i, np.uint8)
        cv2.imwrite(str(folder / "images" / f"{i}.png"), image)
    (folder / "images" / "5.png").write_bytes(b"not an image")
    data = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": 40, "height": 30} for i in (5, 3, 1, 4, 2)
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    if with_annotations:
        data["annotations"] = [
            _ann(1, 1, [10, 5, 20, 10], category_id=3),
            _ann(2, 1, [0, 0, 40, 30], iscrowd=1),
            _ann(3, 1, [5, 5, 0.5, 8]),
            _ann(4, 1, [30, 20, 20, 20]),
            _ann(5, 1, [45, 35, 5, 5]),
            _ann(6, 2, [1, 1, 1, 10]),
            _ann(7, 2, [1, 1, 10, 0.5]),
            _ann(8, 4, [2, 2, 10, 10], iscrowd=1),
            _ann(9, 5, [2, 2, 10, 10]),
        ]
    ann_file = folder / "annotations.json"
    ann_file.write_text(json.dumps(data))
    return str(ann_file), str(folder / "images")


def test_category_mapping_and_ids(tmp_path):
    ann_file, root = make_dataset(tmp_path)
    ds = COCODataset(ann_file, root, remove_images_without_annotations=False)
    # The file's order (7 before 3), as the reference (COCO.getCatIds()), not sorted ids.
    assert ds.json_category_id_to_contiguous_id == {7: 1, 3: 2}
    assert ds.contiguous_category_id_to_json_id == {1: 7, 2: 3}
    assert ds.categories == {1: "seven", 2: "three"}
    assert ds.ids == [1, 2, 3, 4, 5] and ds.id_to_img_map == {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}
    info = ds.get_img_info(2)
    assert {k: info[k] for k in ("id", "height", "width", "file_name")} == {
        "id": 3, "height": 30, "width": 40, "file_name": "3.png"}
    assert ds.name == "annotations"


def test_training_filters_images_and_boxes(tmp_path):
    ann_file, root = make_dataset(tmp_path)
    ds = COCODataset(ann_file, root, remove_images_without_annotations=True, name="hand")
    assert ds.ids == [1, 4, 5]  # 2: only degenerate boxes, 3: no annotations
    image, target, index = ds[0]
    assert index == 0 and image.shape == (30, 40, 3) and image.dtype == np.uint8
    assert target.mode == "xyxy" and target.size == (40, 30)
    # crowd, the 0.5-wide box and the box outside the image are gone; the box
    # sticking out is clipped to x <= 39, y <= 29 (+1 convention).
    assert target.bbox.tolist() == [[10.0, 5.0, 29.0, 14.0], [30.0, 20.0, 39.0, 29.0]]
    assert target.get_field("labels").tolist() == [2, 1]  # json ids 3 and 7: file order 7, 3
    assert target.get_field("labels").dtype == torch.int64
    _, crowd_only, _ = ds[1]
    assert len(crowd_only) == 0 and crowd_only.get_field("labels").dtype == torch.int64


def test_test_mode_keeps_every_image(tmp_path):
    ann_file, root = make_dataset(tmp_path)
    ds = COCODataset(ann_file, root, remove_images_without_annotations=False)
    assert len(ds) == 5
    _, target, _ = ds[2]  # image 3, no annotations
    assert len(target) == 0 and target.bbox.shape == (0, 4)


def test_unreadable_image_training_takes_the_next(tmp_path, caplog):
    ann_file, root = make_dataset(tmp_path)
    ds = COCODataset(ann_file, root, True, name="hand")
    with caplog.at_level(logging.WARNING):
        image, target, index = ds[2]  # image 5 cannot be decoded
    assert index == 0 and image.shape == (30, 40, 3)
    assert "5.png" in caplog.text and "hand" in caplog.text


def test_unreadable_image_test_mode_gives_none(tmp_path, caplog):
    ann_file, root = make_dataset(tmp_path)
    ds = COCODataset(ann_file, root, False, name="hand")
    with caplog.at_level(logging.WARNING):
        assert ds[4] is None
    assert "5.png" in caplog.text
    os.remove(os.path.join(root, "2.png"))
    with caplog.at_level(logging.WARNING):
        assert ds[1] is None
    assert "2.png" in caplog.text


def test_image_size_mismatch_is_skipped(tmp_path, caplog):
    ann_file, root = make_dataset(tmp_path)
    cv2.imwrite(os.path.join(root, "3.png"), np.zeros((31, 40, 3), np.uint8))
    ds = COCODataset(ann_file, root, False)
    with caplog.at_level(logging.WARNING):
        assert ds[2] is None
    assert "40x31" in caplog.text and "40x30" in caplog.text


def test_all_unreadable_raises_instead_of_spinning(tmp_path):
    ann_file, root = make_dataset(tmp_path)
    for name in os.listdir(root):
        Path(root, name).write_bytes(b"")
    ds = COCODataset(ann_file, root, True, name="broken")
    with pytest.raises(RuntimeError, match="cannot be read"):
        ds[0]


def test_test_dev_file_without_annotations(tmp_path):
    ann_file, root = make_dataset(tmp_path, with_annotations=False)
    ds = COCODataset(ann_file, root, False)
    assert len(ds) == 5
    image, target, _ = ds[0]
    assert len(target) == 0 and target.get_field("labels").shape == (0,)


def test_transforms_are_applied(tmp_path):
    ann_file, root = make_dataset(tmp_path)

    def double(image, target):
        image = cv2.resize(image, (80, 60))
        return torch.from_numpy(image).permute(2, 0, 1).float(), target.resize((80, 60))

    ds = COCODataset(ann_file, root, True, transforms=double)
    image, target, _ = ds[0]
    assert image.shape == (3, 60, 80) and target.bbox[0].tolist() == [20.0, 10.0, 58.0, 28.0]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("images"), "no 'images'"),
        (lambda d: d.pop("categories"), "no 'categories'"),
        (lambda d: d["annotations"][0].update(category_id=99), "category_id 99"),
        (lambda d: d["annotations"][0].update(image_id=99), "image_id 99"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bbox"),
        (lambda d: d["images"][0].pop("width"), "lacks width"),
    ],
)
def test_bad_annotation_files_name_the_file(tmp_path, mutate, message):
    ann_file, root = make_dataset(tmp_path)
    data = json.loads(Path(ann_file).read_text())
    mutate(data)
    Path(ann_file).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        COCODataset(ann_file, root, False, name="hand")
    assert ann_file in str(err.value) and "'hand'" in str(err.value)


def test_invalid_json(tmp_path):
    ann_file, root = make_dataset(tmp_path)
    Path(ann_file).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        COCODataset(ann_file, root, False)


@pytest.fixture
def clean_catalog(monkeypatch):
    monkeypatch.setattr(DatasetCatalog, "_registered", {})
    monkeypatch.delenv("ATSS_DATASETS", raising=False)


def test_build_dataset_missing_files_name_path_and_dataset(tmp_path, clean_catalog, monkeypatch):
    ann_file, root = make_dataset(tmp_path)
    DatasetCatalog.register("no_ann", root, str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(["no_ann"], None, is_train=True)
    assert "'no_ann'" in str(err.value) and str(tmp_path / "missing.json") in str(err.value)
    DatasetCatalog.register("no_images", str(tmp_path / "nowhere"), ann_file)
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(["no_images"], None, is_train=False)
    assert "'no_images'" in str(err.value) and str(tmp_path / "nowhere") in str(err.value)
    # A built-in name under an empty data root: the error shows where it looked.
    monkeypatch.setenv("ATSS_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(["coco_2017_val"], None, is_train=False)
    message = str(err.value)
    assert "'coco_2017_val'" in message and str(tmp_path / "empty") in message
    assert "ATSS_DATA_DIR" in message


def test_build_dataset_checks_every_name_first(tmp_path, clean_catalog, monkeypatch):
    ann_file, root = make_dataset(tmp_path)
    DatasetCatalog.register("good", root, ann_file)
    DatasetCatalog.register("bad", root, str(tmp_path / "missing.json"))
    built = []
    monkeypatch.setitem(data_build._FACTORIES, "COCODataset", lambda **kw: built.append(kw))
    with pytest.raises(FileNotFoundError, match="'bad'"):
        build_dataset(["good", "bad"], None, is_train=True)
    assert built == []  # nothing was loaded before the error
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        build_dataset(["nope"], None, is_train=True)
    with pytest.raises(ValueError, match="DATASETS.TRAIN is empty"):
        build_dataset([], None, is_train=True)


def test_build_dataset_register_and_concat(tmp_path, clean_catalog):
    ann_file, root = make_dataset(tmp_path)
    DatasetCatalog.register("hand_a", root, ann_file)
    DatasetCatalog.register("hand_b", root, ann_file)
    (train,) = build_dataset(["hand_a", "hand_b"], None, is_train=True)
    assert isinstance(train, ConcatDataset) and len(train) == 6 and train.name == "hand_a+hand_b"
    _, target, index = train[3]  # first image of hand_b
    assert index == 3 and len(target) == 2
    assert train.get_img_info(4)["id"] == 4
    _, _, index = train[5]  # unreadable image 5 of hand_b -> its image 1, index 3
    assert index == 3
    tests = build_dataset(["hand_a", "hand_b"], None, is_train=False)
    assert [d.name for d in tests] == ["hand_a", "hand_b"] and [len(d) for d in tests] == [5, 5]
    assert tests[0].replace_unreadable is False and train.datasets[0].replace_unreadable is True


def test_build_dataset_from_atss_datasets_file(tmp_path, clean_catalog, monkeypatch):
    ann_file, root = make_dataset(tmp_path)
    listing = tmp_path / "datasets.json"
    listing.write_text(json.dumps({"from_file": {"img_dir": root, "ann_file": ann_file}}))
    monkeypatch.setenv("ATSS_DATASETS", str(listing))
    (ds,) = build_dataset(["from_file"], None, is_train=False)
    assert ds.name == "from_file" and len(ds) == 5


def test_training_set_without_usable_boxes_is_an_error(tmp_path, clean_catalog):
    ann_file, root = make_dataset(tmp_path, with_annotations=False)
    DatasetCatalog.register("unlabelled", root, ann_file)
    with pytest.raises(ValueError, match="'unlabelled'.*no images with boxes"):
        build_dataset(["unlabelled"], None, is_train=True)


@needs_coco128
def test_coco128_through_atss_data_dir(monkeypatch, clean_catalog):
    monkeypatch.setenv("ATSS_DATA_DIR", SHARED_DATA)
    train, = build_dataset(["coco128_train"], None, is_train=True)
    val, = build_dataset(["coco128_val"], None, is_train=False)
    assert len(val) == 128 and val.ids == sorted(val.ids)
    assert len(train) == 126  # two train images have no annotations
    assert len(val.categories) == 80 and val.categories[1] == "person"
    assert val.json_category_id_to_contiguous_id[90] == 80
    assert val.contiguous_category_id_to_json_id[12] == 13  # COCO skips id 12
    image, target, index = val[0]
    info = val.get_img_info(0)
    assert image.shape == (info["height"], info["width"], 3) and image.dtype == np.uint8
    anns = [a for a in val.coco.imgToAnns[info["id"]] if not a["iscrowd"]]
    assert len(target) == len(anns) > 0
    labels = target.get_field("labels")
    assert labels.dtype == torch.int64 and labels.min() >= 1 and labels.max() <= 80
    expected = sorted(val.json_category_id_to_contiguous_id[a["category_id"]] for a in anns)
    assert sorted(labels.tolist()) == expected

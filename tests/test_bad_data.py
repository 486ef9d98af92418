"""Valid-looking but broken data: what the user sees for each case (reliability issue).

1. annotation ids that repeat or start at 0: renumbered, evaluation exact;
2. repeated image ids: refused;
3. NaN / inf / string boxes, string or missing ids and names: errors naming the
   file, the record and the field; every box outside its image: skipped;
4. MODEL.ATSS.NUM_CLASSES that does not match the dataset: ConfigError;
5. images left out of training: one summary line + OUTPUT_DIR/skipped_images.txt.
"""
import copy
import json
import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from atss_core.config import ConfigError, cfg as default_cfg
from atss_core.config.paths_catalog import DatasetCatalog
from atss_core.data import COCODataset, build_dataset, make_data_loader
from atss_core.data.build import SKIPPED_IMAGES_FILE, check_num_classes
from atss_core.engine.coco_eval import (
    EvaluationError,
    do_coco_evaluation,
    evaluate_coco_results,
    evaluate_results_file,
    load_coco_annotations,
    with_valid_annotation_ids,
)
from atss_core.structures import BoxList

from conftest import COCO128_DIR, requires_coco128
from test_eval import gt_predictions, make_coco_json, perfect_results, write_json

needs_coco128 = requires_coco128()
COCO_LOGGER = "atss_core.data.datasets.coco"


@pytest.fixture
def clean_catalog(monkeypatch):
    monkeypatch.setattr(DatasetCatalog, "_registered", {})
    monkeypatch.delenv("ATSS_DATASETS", raising=False)


# ---------------------------------------------------------------- 1. annotation ids

def _set_ids(data, mode):
    """Annotation ids as a converter might write them."""
    for k, ann in enumerate(data["annotations"]):
        if mode == "all_repeat":
            ann["id"] = 1
        elif mode == "some_repeat":
            ann["id"] = k // 2 + 1
        elif mode == "zero_based":
            ann["id"] = k
        elif mode == "missing":
            del ann["id"]
        elif mode == "strings":
            ann["id"] = f"a{k}"
    return data


def _pycocotools_ap(ann_file, results):
    """AP of pycocotools on its own (no renumbering)."""
    coco_gt = COCO(ann_file)
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[0]


@pytest.mark.parametrize("mode", ["all_repeat", "some_repeat", "zero_based"])
def test_repeated_or_zero_annotation_ids_perfect_detections_score_one(tmp_path, mode, caplog):
    ann_file = write_json(tmp_path / "instances.json", _set_ids(make_coco_json(), mode))
    # The defect: pycocotools alone scores perfect detections below 1 on this file.
    assert _pycocotools_ap(ann_file, perfect_results()) < 0.99

    # Evaluation path: load_coco_annotations + evaluate_coco_results.
    with caplog.at_level(logging.WARNING, logger="atss_core"):
        coco = load_coco_annotations(ann_file)
    assert f"annotation file {ann_file}: renumbered its 7 annotation ids 1..7" in caplog.text
    assert ("repeat" if "repeat" in mode else "id 0 is not positive") in caplog.text
    assert sorted(coco.anns) == list(range(1, 8))
    metrics, _ = evaluate_coco_results(coco, perfect_results())
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)

    # Training / test_net path: the dataset's COCO, predictions from its targets.
    caplog.clear()
    root = tmp_path / "images"
    root.mkdir()
    with caplog.at_level(logging.WARNING, logger="atss_core"):
        dataset = COCODataset(ann_file, str(root), False, name="hand")
    assert "renumbered" in caplog.text and ann_file in caplog.text and "'hand'" in caplog.text
    out = tmp_path / "out"
    metrics = do_coco_evaluation(dataset, gt_predictions(dataset), str(out), "hand")
    assert metrics["AP"] == pytest.approx(1.0)

    # A bbox.json evaluated against the file (tools/test_net.py --results style).
    assert evaluate_results_file(str(out / "bbox.json"), ann_file)["AP"] == pytest.approx(1.0)

    # A COCO made by pycocotools itself is fixed at evaluation time too.
    with caplog.at_level(logging.WARNING, logger="atss_core"):
        metrics, _ = evaluate_coco_results(COCO(ann_file), perfect_results(), source="raw")
    assert metrics["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["missing", "strings"])
def test_missing_or_non_integer_annotation_ids_are_renumbered(tmp_path, mode, caplog):
    ann_file = write_json(tmp_path / "instances.json", _set_ids(make_coco_json(), mode))
    with caplog.at_level(logging.WARNING, logger="atss_core"):
        coco = load_coco_annotations(ann_file)
    assert ("have no id" if mode == "missing" else "not an integer") in caplog.text
    assert evaluate_coco_results(coco, perfect_results())[0]["AP"] == pytest.approx(1.0)


def test_valid_ids_are_left_alone(tmp_path, caplog):
    data = make_coco_json()
    ann_file = write_json(tmp_path / "instances.json", data)
    with caplog.at_level(logging.WARNING, logger="atss_core"):
        coco = load_coco_annotations(ann_file)
    assert "renumbered" not in caplog.text
    assert sorted(coco.anns) == sorted(a["id"] for a in data["annotations"])
    assert with_valid_annotation_ids(coco) is coco


def test_missing_iscrowd_and_area_are_filled_in(tmp_path, caplog):
    data = make_coco_json(with_crowd=False)
    for ann in data["annotations"]:
        del ann["iscrowd"], ann["area"]
    ann_file = write_json(tmp_path / "instances.json", data)
    with pytest.raises(KeyError):  # pycocotools alone
        _pycocotools_ap(ann_file, perfect_results())
    with caplog.at_level(logging.WARNING, logger="atss_core"):
        coco = load_coco_annotations(ann_file)
    assert "'area' (6 annotations), 'iscrowd' (6 annotations)" in caplog.text
    assert evaluate_coco_results(coco, perfect_results())[0]["AP"] == pytest.approx(1.0)


def _coco128_variant(tmp_path, mode):
    ann = os.path.join(COCO128_DIR, "annotations", "instances_val2017.json")
    with open(ann) as f:
        data = json.load(f)
    return write_json(tmp_path / f"val_{mode}.json", _set_ids(data, mode)), data


@needs_coco128
@pytest.mark.parametrize("mode", ["some_repeat", "zero_based"])
def test_coco128_perfect_detections_score_one_with_bad_ids(tmp_path, mode):
    ann_file, data = _coco128_variant(tmp_path, mode)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"],
                "bbox": a["bbox"], "score": 1.0} for a in data["annotations"] if not a["iscrowd"]]
    assert _pycocotools_ap(ann_file, results) < 0.9999  # the defect on real data
    metrics, _ = evaluate_coco_results(load_coco_annotations(ann_file), results)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    # Through the dataset (the path of tools/test_net.py), predictions = annotations.
    dataset = COCODataset(ann_file, os.path.join(COCO128_DIR, "val2017"), False, name="val")
    predictions = {}
    for index in range(len(dataset)):
        info = dataset.get_img_info(index)
        anns = [a for a in dataset.coco.imgToAnns[info["id"]] if not a["iscrowd"]]
        boxes = BoxList(torch.tensor([a["bbox"] for a in anns]).reshape(-1, 4),
                        (info["width"], info["height"]), mode="xywh").convert("xyxy")
        boxes.add_field("labels", torch.tensor(
            [dataset.json_category_id_to_contiguous_id[a["category_id"]] for a in anns],
            dtype=torch.int64))
        boxes.add_field("scores", torch.ones(len(anns)))
        predictions[index] = boxes
    metrics = do_coco_evaluation(dataset, predictions, None, "val")
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- 2. image ids

def test_repeated_image_ids_are_refused(tmp_path):
    data = make_coco_json()
    data["images"][2]["id"] = data["images"][0]["id"]  # c.jpg takes a.jpg's id 42
    ann_file = write_json(tmp_path / "instances.json", data)
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError) as err:
        COCODataset(ann_file, str(tmp_path / "images"), True, name="hand")
    message = str(err.value)
    assert ann_file in message and "'hand'" in message
    assert "image ids repeat" in message and "id 42 (a.jpg, c.jpg)" in message
    with pytest.raises(EvaluationError, match=r"image ids repeat.*id 42"):
        load_coco_annotations(ann_file)


# ---------------------------------------------------------------- 3. malformed records

def _ann0(d):
    return d["annotations"][0]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: _ann0(d).update(bbox=[10.0, 20.0, float("nan"), 150.0]),
         [r"annotation 1 \(record #0, image_id 42\)", "'bbox'", "non-finite"]),
        (lambda d: _ann0(d).update(bbox=[float("inf"), 20.0, 200.0, 150.0]),
         [r"annotation 1 \(record #0", "'bbox'", "non-finite"]),
        (lambda d: _ann0(d).update(bbox=[10.0, "20", 200.0, 150.0]),
         [r"annotation 1 \(record #0", "'bbox'", "value #1 '20' is not a number"]),
        (lambda d: _ann0(d).update(bbox=None), [r"annotation 1 \(record #0", "'bbox'"]),
        (lambda d: _ann0(d).update(category_id="3"), [r"annotation 1 .*category_id '3'"]),
        (lambda d: _ann0(d).update(image_id="42"), [r"annotation 1 .*image_id '42'"]),
        (lambda d: _ann0(d).update(area="big"), [r"annotation 1 .*'area' 'big'"]),
        (lambda d: _ann0(d).update(iscrowd="no"), [r"annotation 1 .*'iscrowd' 'no'"]),
        (lambda d: d["annotations"].__setitem__(0, [1, 2]), [r"record #0.*must be an object"]),
        (lambda d: d["images"][0].update(id="42"),
         [r"image #0 \(id '42', file_name 'a.jpg'\)", "'id' must be an integer"]),
        (lambda d: d["images"][1].pop("id"), [r"image #1 \(record #1\).*lacks id"]),
        (lambda d: d["images"][0].update(width="640"),
         [r"image #0 \(id 42, file_name 'a.jpg'\)", "'width' must be a positive integer"]),
        (lambda d: d["images"][0].update(height=0), [r"image #0 .*'height'"]),
        (lambda d: d["images"][0].update(file_name=None), [r"image #0 .*'file_name'"]),
        (lambda d: d["categories"][1].pop("name"),
         [r"category #1 \(id 3, name None\)", "lacks 'name'"]),
        (lambda d: d["categories"][0].pop("id"), [r"category #0 .*lacks 'id'"]),
        (lambda d: d["categories"][0].update(id="7"), [r"category #0 .*'id' must be an integer"]),
        (lambda d: d["categories"][1].update(id=7), [r"category id 7 appears twice"]),
        (lambda d: d.update(annotations={}), ["'annotations' must be a list"]),
    ],
)
def test_malformed_records_name_file_record_and_field(tmp_path, mutate, expected):
    data = make_coco_json()
    mutate(data)
    ann_file = write_json(tmp_path / "instances.json", data)
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError) as err:
        COCODataset(ann_file, str(tmp_path / "images"), True, name="hand")
    message = str(err.value)
    assert ann_file in message and "'hand'" in message
    for pattern in expected:
        assert re.search(pattern, message), (pattern, message)
    with pytest.raises(EvaluationError) as err:  # the same for the evaluation tools
        load_coco_annotations(ann_file)
    assert ann_file in str(err.value)


def test_malformed_annotations_are_all_counted(tmp_path):
    data = make_coco_json()
    for ann in data["annotations"][:4]:
        ann["bbox"] = ann["bbox"][:3] + [float("nan")]
    ann_file = write_json(tmp_path / "instances.json", data)
    text = Path(ann_file).read_text()
    assert "NaN" in text  # what json.dump writes and json.load reads back
    with pytest.raises(EvaluationError, match=r"annotation 1 .*annotation 2 .*annotation 3 .*"
                                              r"\(4 malformed annotations in all\)"):
        load_coco_annotations(ann_file)


# ---------------------------------------------------------------- data with problems

def _noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def make_bad_dataset(folder):
    """Seven 40x30 JPEGs, two categories:

    1: fine; 2: its only box lies outside the image; 3: file missing;
    4: only a 1-pixel-wide box; 5: no annotations; 6: truncated JPEG; 7: fine.
    """
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in (1, 2, 4, 5, 6, 7):
        cv2.imwrite(str(images / f"{i}.jpg"), _noise(30, 40, i))
    data = (images / "6.jpg").read_bytes()
    (images / "6.jpg").write_bytes(data[: len(data) // 2])
    boxes = {1: [5, 5, 20, 15], 2: [45, 35, 10, 10], 3: [5, 5, 20, 15], 4: [5, 5, 1, 15],
             6: [5, 5, 20, 15], 7: [10, 8, 12, 12]}
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 30}
                   for i in range(1, 8)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0} for i, b in boxes.items()],
    }
    ann_file = folder / "bad.json"
    ann_file.write_text(json.dumps(coco))
    return str(ann_file), str(images)


def _records(caplog, level=logging.WARNING):
    return [r for r in caplog.records if r.name == COCO_LOGGER and r.levelno >= level]


def test_every_box_outside_its_image_is_skipped_for_training(tmp_path, caplog):
    ann_file, root = make_bad_dataset(tmp_path)
    with caplog.at_level(logging.INFO, logger="atss_core"):
        train = COCODataset(ann_file, root, True, name="bad")
    assert train.ids == [1, 6, 7]
    assert [(i, reason) for i, _, reason in train.skipped] == [
        (2, "every box lies outside the image"), (3, "image file missing"),
        (4, "no box wider and taller than 1 pixel")]
    assert train.skipped[1][1] == os.path.join(root, "3.jpg")
    assert train.num_unlabelled == 1
    # ONE line: how many, why, the first names.
    (line,) = [r.getMessage() for r in caplog.records if r.name == COCO_LOGGER]
    assert "dataset 'bad': training on 3 of the 7 images" in line
    assert "1 without annotations left out" in line
    assert "3 skipped: 1 every box lies outside the image, 1 image file missing, 1 no box" in line
    assert "first: 2.jpg, 3.jpg, 4.jpg" in line

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="atss_core"):
        test = COCODataset(ann_file, root, False, name="bad")
    assert len(test) == 7 and test.missing_ids == {3}
    (line,) = [r.getMessage() for r in _records(caplog)]
    assert "1 image file missing, 1 every box lies outside the image" in line
    assert "skipped_image_ids" in line
    assert test[2] is None  # 3.jpg: no second warning, it is in the summary
    assert len(_records(caplog)) == 1


def test_clean_training_set_logs_one_info_line(tmp_path, caplog):
    ann_file, root = make_bad_dataset(tmp_path)
    data = json.loads(Path(ann_file).read_text())
    data["images"] = [im for im in data["images"] if im["id"] in (1, 5, 7)]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (1, 5, 7)]
    Path(ann_file).write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="atss_core"):
        ds = COCODataset(ann_file, root, True, name="ok")
    assert ds.skipped == [] and ds.ids == [1, 7]
    (record,) = [r for r in caplog.records if r.name == COCO_LOGGER]
    assert record.levelno == logging.INFO and "1 without annotations" in record.getMessage()


def loader_cfg(output_dir, *opts):
    c = default_cfg.clone()
    c.merge_from_list([
        "DATASETS.TRAIN", ("bad",), "DATASETS.TEST", ("bad",),
        "MODEL.ATSS.NUM_CLASSES", 3,
        "INPUT.MIN_SIZE_TRAIN", (32,), "INPUT.MAX_SIZE_TRAIN", 64,
        "INPUT.MIN_SIZE_TEST", 32, "INPUT.MAX_SIZE_TEST", 64,
        "SOLVER.IMS_PER_BATCH", 1, "SOLVER.MAX_ITER", 6, "TEST.IMS_PER_BATCH", 1,
        "DATALOADER.NUM_WORKERS", 0, "DATALOADER.ASPECT_RATIO_GROUPING", False,
        "OUTPUT_DIR", str(output_dir), *opts,
    ])
    return c


def _skipped_file(output_dir):
    lines = (Path(output_dir) / SKIPPED_IMAGES_FILE).read_text().splitlines()
    assert lines[0].startswith("#")
    return [line.split("\t") for line in lines[1:]]


@pytest.mark.parametrize("workers", [0, 1])
def test_train_loader_lists_skipped_images_in_output_dir(tmp_path, clean_catalog, caplog,
                                                         workers):
    ann_file, root = make_bad_dataset(tmp_path)
    DatasetCatalog.register("bad", root, ann_file)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="atss_core"):
        loader = make_data_loader(loader_cfg(out, "DATALOADER.NUM_WORKERS", workers), True)
    rows = _skipped_file(out)
    assert [(r[0], r[1], os.path.basename(r[2]), r[3]) for r in rows] == [
        ("bad", "2", "2.jpg", "every box lies outside the image"),
        ("bad", "3", "3.jpg", "image file missing"),
        ("bad", "4", "4.jpg", "no box wider and taller than 1 pixel")]
    assert f"3 training images left out; the list is in {out / SKIPPED_IMAGES_FILE}" in caplog.text

    # Two epochs over 1.jpg, 6.jpg, 7.jpg: the truncated 6.jpg is found while
    # decoding, replaced, warned about once (per process) and appended once.
    caplog.clear()
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="atss_core"):
        batches = list(loader)
    assert len(batches) == 6
    read = [loader.dataset.get_img_info(i)["file_name"] for _, _, idx in batches for i in idx]
    assert "6.jpg" not in read and set(read) == {"1.jpg", "7.jpg"}
    if workers == 0:  # a worker's warnings go to its own stderr
        warnings = [r.getMessage() for r in _records(caplog)]
        assert len(warnings) == 1 and "6.jpg cannot be read" in warnings[0]
        assert "using another image instead" in warnings[0]
    rows = _skipped_file(out)
    assert len(rows) == 4 and os.path.basename(rows[3][2]) == "6.jpg"
    assert rows[3][3] == "cannot be decoded (truncated or not an image) (found while reading)"


def test_stale_skipped_list_is_removed_and_no_output_dir_writes_nothing(tmp_path, clean_catalog):
    ann_file, root = make_bad_dataset(tmp_path)
    data = json.loads(Path(ann_file).read_text())
    data["images"] = [im for im in data["images"] if im["id"] in (1, 7)]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (1, 7)]
    Path(ann_file).write_text(json.dumps(data))
    DatasetCatalog.register("bad", root, ann_file)
    out = tmp_path / "out"
    out.mkdir()
    (out / SKIPPED_IMAGES_FILE).write_text("# from an earlier run\n")
    make_data_loader(loader_cfg(out), True)
    assert not (out / SKIPPED_IMAGES_FILE).exists()
    loader = make_data_loader(loader_cfg(""), True)
    assert loader.dataset.skip_log is None


def test_dataset_without_any_image_file_stops_before_inference(tmp_path, clean_catalog):
    ann_file, root = make_bad_dataset(tmp_path)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    DatasetCatalog.register("bad", str(empty), ann_file)
    for is_train in (True, False):
        with pytest.raises(FileNotFoundError) as err:
            build_dataset(["bad"], None, is_train=is_train)
        message = str(err.value)
        assert "'bad'" in message and "none of the 7 images" in message
        assert str(empty) in message and "1.jpg" in message


def test_training_set_with_every_image_skipped_says_why(tmp_path, clean_catalog):
    ann_file, root = make_bad_dataset(tmp_path)
    data = json.loads(Path(ann_file).read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (2, 3, 4)]
    Path(ann_file).write_text(json.dumps(data))
    DatasetCatalog.register("bad", root, ann_file)
    with pytest.raises(ValueError, match=r"'bad'.*no images with boxes.*left out: every box "
                                         r"lies outside the image, image file missing, no box"):
        build_dataset(["bad"], None, is_train=True)


# ---------------------------------------------------------------- 4. NUM_CLASSES

def test_check_num_classes(tmp_path):
    ann_file, root = make_bad_dataset(tmp_path)
    ds = COCODataset(ann_file, root, True, name="bad")
    check_num_classes(ds, 3)
    with pytest.raises(ConfigError) as err:
        check_num_classes(ds, 5)
    message = str(err.value)
    assert "MODEL.ATSS.NUM_CLASSES is 5" in message and "'bad'" in message
    assert "2 categories" in message and "set MODEL.ATSS.NUM_CLASSES 3" in message
    assert ann_file in message


def test_loaders_refuse_a_mismatched_num_classes(tmp_path, clean_catalog, caplog):
    ann_file, root = make_bad_dataset(tmp_path)
    DatasetCatalog.register("bad", root, ann_file)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"NUM_CLASSES is 81 .*'bad'.*2 categories"):
        make_data_loader(loader_cfg(out, "MODEL.ATSS.NUM_CLASSES", 81), is_train=True)
    with pytest.raises(ConfigError, match=r"NUM_CLASSES is 2 .*'bad'.*2 categories"):
        make_data_loader(loader_cfg(out, "MODEL.ATSS.NUM_CLASSES", 2), is_train=True)
    # Testing too: the model's labels are the dataset's categories in file order, so
    # any other count would name the wrong classes.
    for num_classes in (2, 81):
        with pytest.raises(ConfigError, match=rf"NUM_CLASSES is {num_classes} .*'bad'"):
            make_data_loader(loader_cfg(out, "MODEL.ATSS.NUM_CLASSES", num_classes), is_train=False)
    assert len(make_data_loader(loader_cfg(out), is_train=False)) == 1


@needs_coco128
def test_num_classes_5_on_coco128_is_refused_before_training(monkeypatch, clean_catalog):
    monkeypatch.setenv("ATSS_DATA_DIR", os.path.dirname(COCO128_DIR))
    c = loader_cfg("", "DATASETS.TRAIN", ("coco128_train",), "DATASETS.TEST", ("coco128_val",),
                   "MODEL.ATSS.NUM_CLASSES", 5)
    for is_train, name in ((True, "coco128_train"), (False, "coco128_val")):
        with pytest.raises(ConfigError) as err:
            make_data_loader(c, is_train=is_train)
        message = str(err.value)
        assert f"'{name}'" in message and "80 categories" in message
        assert "set MODEL.ATSS.NUM_CLASSES 81" in message


def test_concatenated_training_sets_need_the_same_categories(tmp_path, clean_catalog):
    ann_file, root = make_bad_dataset(tmp_path)
    data = json.loads(Path(ann_file).read_text())
    data["categories"][1]["name"] = "c"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    DatasetCatalog.register("bad", root, ann_file)
    DatasetCatalog.register("other", root, str(other))
    with pytest.raises(ConfigError, match=r"'bad'.*'other'.*category lists"):
        build_dataset(["bad", "other"], None, is_train=True)
    (both,) = build_dataset(["bad", "bad"], None, is_train=True)
    check_num_classes(both, 3)
    with pytest.raises(ConfigError, match="'bad'"):
        check_num_classes(both, 4)


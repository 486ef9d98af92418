"""COCO evaluation: results format, metrics, errors (hand-made annotations)."""
import copy
import json
import logging
import os

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from atss_core.data.datasets import COCODataset
from atss_core.engine.coco_eval import (
    METRIC_NAMES,
    EvaluationError,
    check_expected_results,
    do_coco_evaluation,
    evaluate_coco_results,
    evaluate_results_file,
    load_coco_annotations,
    predictions_to_coco_results,
    validate_results,
)
from atss_core.engine.inference import rescale_to_original, summarize_timing
from atss_core.structures import BoxList

# Two categories with non-contiguous json ids, listed unsorted: contiguous labels follow
# the file's order (1 -> 7 "dog", 2 -> 3 "cat"), as the reference's COCO.getCatIds().
# objects of every COCO size (small < 32^2 <= medium < 96^2 <= large), one crowd region.
CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
IMAGES = [
    {"id": 42, "file_name": "a.jpg", "width": 640, "height": 480},
    {"id": 5, "file_name": "b.jpg", "width": 300, "height": 500},
    {"id": 17, "file_name": "c.jpg", "width": 200, "height": 200},
]
BOXES = [  # image id, category id, [x, y, w, h]
    (42, 3, [10.0, 20.0, 200.0, 150.0]),
    (42, 7, [300.0, 200.0, 20.0, 25.0]),
    (42, 3, [400.0, 50.0, 60.0, 70.0]),
    (5, 7, [0.0, 0.0, 150.5, 300.25]),
    (5, 3, [100.0, 350.0, 12.0, 9.0]),
    (17, 7, [50.0, 60.0, 40.0, 45.0]),
]


def make_coco_json(with_crowd=True, with_annotations=True):
    data = {"images": copy.deepcopy(IMAGES), "categories": copy.deepcopy(CATEGORIES)}
    if with_annotations:
        anns = [
            {"id": i + 1, "image_id": img, "category_id": cat, "bbox": list(box),
             "area": box[2] * box[3], "iscrowd": 0}
            for i, (img, cat, box) in enumerate(BOXES)
        ]
        if with_crowd:
            anns.append({"id": 100, "image_id": 17, "category_id": 3,
                         "bbox": [120.0, 120.0, 60.0, 60.0], "area": 3600.0, "iscrowd": 1})
        data["annotations"] = anns
    return data


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


@pytest.fixture
def ann_file(tmp_path):
    return write_json(tmp_path / "instances.json", make_coco_json())


@pytest.fixture
def dataset(tmp_path, ann_file):
    root = tmp_path / "images"
    root.mkdir()
    return COCODataset(ann_file, str(root), remove_images_without_annotations=False, name="hand")


def index_of(dataset, image_id):
    return next(i for i in range(len(dataset)) if dataset.get_img_info(i)["id"] == image_id)


def perfect_results():
    return [{"image_id": img, "category_id": cat, "bbox": list(box), "score": 1.0}
            for img, cat, box in BOXES]


def gt_predictions(dataset):
    """Ground truth of every image as predictions in original pixels (xyxy with
    the +1 convention), score 1."""
    out = {}
    for index in range(len(dataset)):
        info = dataset.get_img_info(index)
        target = dataset.get_target(index)
        target.add_field("scores", torch.ones(len(target)))
        assert target.size == (info["width"], info["height"])
        out[index] = target
    return out


def test_perfect_results_give_ap_one(ann_file):
    coco = load_coco_annotations(ann_file)
    metrics, summary = evaluate_coco_results(coco, perfect_results())
    assert list(metrics) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        if name != "AR1":
            assert metrics[name] == pytest.approx(1.0), name
    # One detection per image and category finds 2 of the 3 cats (image 42 has two).
    assert metrics["AR1"] == pytest.approx((2 / 3 + 1) / 2)
    assert summary.count("Average Precision") == 6 and summary.count("Average Recall") == 6


def test_no_results_give_zero_without_crashing(ann_file):
    coco = load_coco_annotations(ann_file)
    metrics, _ = evaluate_coco_results(coco, [], per_class=True)
    for name in METRIC_NAMES:
        assert metrics[name] == 0.0, name
    assert metrics["per_class_AP"] == {"cat": 0.0, "dog": 0.0}


def test_per_class_ap_and_missing_ground_truth(ann_file):
    coco = load_coco_annotations(ann_file)
    only_dogs = [r for r in perfect_results() if r["category_id"] == 7]
    metrics, _ = evaluate_coco_results(coco, only_dogs, per_class=True)
    # Categories in json id order: cat (3), dog (7).
    assert list(metrics["per_class_AP"].items()) == [("cat", 0.0), ("dog", 1.0)]
    assert metrics["AP"] == pytest.approx(0.5)
    # Evaluated on image 17 alone: no cat there (the crowd region is ignored).
    metrics, _ = evaluate_coco_results(coco, only_dogs, image_ids=[17], per_class=True)
    assert metrics["per_class_AP"]["cat"] == -1.0
    assert metrics["APs"] == -1.0 and metrics["AP"] == pytest.approx(1.0)


def test_do_coco_evaluation_writes_bbox_and_metrics_matching_pycocotools(tmp_path, dataset,
                                                                        ann_file):
    predictions = gt_predictions(dataset)
    # Perturb to get metrics strictly between 0 and 1.
    predictions[index_of(dataset, 42)].bbox[0] += torch.tensor([30.0, 0.0, 30.0, 0.0])
    predictions[index_of(dataset, 5)].add_field("scores", torch.tensor([0.4, 0.9]))
    out = tmp_path / "out"
    timing = {"model_time_per_image": 0.01}
    metrics = do_coco_evaluation(dataset, predictions, str(out), "hand", per_class_ap=True,
                                 timing=timing)

    with open(out / "bbox.json") as f:
        results = json.load(f)
    assert len(results) == len(BOXES)
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        assert r["image_id"] in {42, 5, 17} and r["category_id"] in {3, 7}
        assert len(r["bbox"]) == 4
    # The +1 convention round trip: xywh written = the annotation's xywh.
    untouched = [r for r in results if r["image_id"] == 17]
    assert untouched == [{"image_id": 17, "category_id": 7, "bbox": [50.0, 60.0, 40.0, 45.0],
                          "score": 1.0}]

    with open(out / "metrics.json") as f:
        written = json.load(f)
    assert written["dataset"] == "hand" and written["num_images"] == 3
    assert written["timing"] == timing
    assert set(written["per_class_AP"]) == {"cat", "dog"}
    assert 0.0 < written["AP"] < 1.0
    assert written == json.loads(json.dumps(metrics))

    # An independent evaluation of bbox.json with pycocotools' own loader.
    coco_gt = COCO(ann_file)
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(out / "bbox.json")), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    for name, value in zip(METRIC_NAMES, evaluator.stats):
        assert written[name] == pytest.approx(float(value), abs=1e-12), name
    assert evaluate_results_file(str(out / "bbox.json"), ann_file)["AP"] == pytest.approx(written["AP"])


def test_perfect_predictions_through_dataset_give_ap_one(tmp_path, dataset):
    metrics = do_coco_evaluation(dataset, gt_predictions(dataset), str(tmp_path), "hand")
    assert metrics["AP"] == pytest.approx(1.0)
    assert "timing" not in metrics and "per_class_AP" not in metrics


def test_empty_predictions_through_dataset(tmp_path, dataset):
    empty = {i: BoxList(torch.zeros(0, 4), (info["width"], info["height"]))
             for i, info in enumerate(dataset.get_img_info(i) for i in range(len(dataset)))}
    for b in empty.values():
        b.add_field("scores", torch.zeros(0))
        b.add_field("labels", torch.zeros(0, dtype=torch.int64))
    metrics = do_coco_evaluation(dataset, empty, str(tmp_path), "hand")
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0
    with open(tmp_path / "bbox.json") as f:
        assert json.load(f) == []


def test_skipped_images_are_left_out_and_listed(tmp_path, dataset, caplog):
    predictions = gt_predictions(dataset)
    del predictions[index_of(dataset, 5)]  # image 5 could not be read
    with caplog.at_level(logging.WARNING, logger="atss_core"):
        metrics = do_coco_evaluation(dataset, predictions, str(tmp_path), "hand")
    assert "1 of 3 images have no predictions" in caplog.text and "image ids 5" in caplog.text
    assert metrics["AP"] == pytest.approx(1.0) and metrics["num_images"] == 2
    assert metrics["skipped_image_ids"] == [5]
    # Nothing readable at all: the annotation file does not describe these images.
    with pytest.raises(EvaluationError, match="no image has predictions"):
        do_coco_evaluation(dataset, {}, str(tmp_path / "none"), "hand")
    assert not (tmp_path / "none").exists()


def test_split_without_annotations_writes_only_bbox_json(tmp_path, caplog):
    ann = write_json(tmp_path / "image_info_test.json", make_coco_json(with_annotations=False))
    (tmp_path / "images").mkdir()
    dataset = COCODataset(ann, str(tmp_path / "images"), False, name="test_dev")
    prediction = BoxList(torch.tensor([[1.0, 2.0, 10.0, 20.0]]), (640, 480))
    prediction.add_field("scores", torch.tensor([0.5]))
    prediction.add_field("labels", torch.tensor([2]))
    predictions = {index_of(dataset, 42): prediction}
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="atss_core"):
        assert do_coco_evaluation(dataset, predictions, str(out), "test_dev") is None
    assert sorted(os.listdir(out)) == ["bbox.json"]
    with open(out / "bbox.json") as f:
        assert json.load(f) == [{"image_id": 42, "category_id": 3,
                                 "bbox": [1.0, 2.0, 10.0, 19.0], "score": 0.5}]
    assert "ready to upload to the COCO evaluation server" in caplog.text
    with pytest.raises(EvaluationError, match="no 'annotations'"):
        evaluate_coco_results(dataset.coco, [])


def test_foreign_image_and_category_ids_are_errors(tmp_path, ann_file):
    coco = load_coco_annotations(ann_file)
    foreign_image = perfect_results() + [
        {"image_id": 999, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(EvaluationError, match=r"image ids 999 are not in the annotation file"):
        evaluate_coco_results(coco, foreign_image)
    foreign_category = perfect_results() + [
        {"image_id": 42, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(EvaluationError, match=r"category ids 1 are not categories"):
        validate_results(foreign_category, coco, "x")
    path = write_json(tmp_path / "bbox.json", foreign_category)
    with pytest.raises(EvaluationError, match=r"bbox\.json.*category ids 1"):
        evaluate_results_file(path, ann_file)
    with pytest.raises(EvaluationError, match="bbox"):
        validate_results([{"image_id": 42, "category_id": 3, "bbox": [0, 0, -1, 5], "score": 1}],
                         coco, "x")
    with pytest.raises(EvaluationError, match="score"):
        validate_results([{"image_id": 42, "category_id": 3, "bbox": [0, 0, 1, 5],
                           "score": float("nan")}], coco, "x")
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_results_file(path, str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(EvaluationError, match="not valid JSON"):
        evaluate_results_file(str(tmp_path / "broken.json"), ann_file)


def test_predictions_with_wrong_size_or_labels_are_errors(dataset):
    prediction = BoxList(torch.tensor([[1.0, 2.0, 10.0, 20.0]]), (320, 240))
    prediction.add_field("scores", torch.tensor([0.5]))
    prediction.add_field("labels", torch.tensor([1]))
    index = index_of(dataset, 42)
    with pytest.raises(EvaluationError, match=r"image 42 .* size \(320, 240\).*\(640, 480\)"):
        predictions_to_coco_results({index: prediction}, dataset)
    prediction = prediction.resize((640, 480))
    assert predictions_to_coco_results({index: prediction}, dataset)[0]["category_id"] == 7
    prediction.add_field("labels", torch.tensor([3]))
    with pytest.raises(EvaluationError, match="labels 3 .*NUM_CLASSES"):
        predictions_to_coco_results({index: prediction}, dataset)


def test_rescale_to_original_and_mismatched_images(dataset):
    # 640x480 read at shorter side 240 -> 320x240 input.
    index_42, index_5 = index_of(dataset, 42), index_of(dataset, 5)
    prediction = BoxList(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (320, 240))
    rescaled = rescale_to_original({index_42: prediction}, dataset)[index_42]
    assert rescaled.size == (640, 480)
    assert torch.allclose(rescaled.bbox, torch.tensor([[20.0, 40.0, 60.0, 80.0]]))
    # Truncated side of the resize rule: 300x500 at shorter side 7 -> 7x11 (11.67 truncated).
    small = BoxList(torch.zeros(0, 4), (7, 11))
    assert rescale_to_original({index_5: small}, dataset)[index_5].size == (300, 500)
    # A portrait input for a landscape annotation: the images are not the annotated ones.
    with pytest.raises(EvaluationError, match=r"image 42 .*240x320.*640x480"):
        rescale_to_original({index_42: BoxList(torch.zeros(0, 4), (240, 320))}, dataset)


def test_summarize_timing():
    timing = summarize_timing(
        [{"model_time": 1.0, "total_time": 2.0, "num_images": 10},
         {"model_time": 3.0, "total_time": 4.0, "num_images": 10}], warmup_iters=2)
    assert timing == {"model_time_per_image": 0.2, "total_time_per_image": 0.3,
                      "num_devices": 2, "num_timed_images": 20, "warmup_iters": 2}
    untimed = summarize_timing([{"model_time": 0.0, "total_time": 0.0, "num_images": 0}], 3)
    assert untimed["model_time_per_image"] is None


def test_check_expected_results(caplog):
    metrics = {"AP": 0.39, "AP50": 0.57}
    assert check_expected_results(metrics, [["bbox", "AP", 0.393, 0.002]], 4)
    with caplog.at_level(logging.ERROR, logger="atss_core"):
        assert not check_expected_results(metrics, [["bbox", "AP50", 0.60, 0.001]], 4)
    assert "outside the expected" in caplog.text
    with pytest.raises(EvaluationError, match="only task 'bbox'"):
        check_expected_results(metrics, [["segm", "AP", 0.3, 0.1]], 4)

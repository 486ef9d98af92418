"""Per-class F-measure thresholds (atss_core.engine.thresholds and its tool)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from atss_core.engine.coco_eval import EvaluationError, load_coco_annotations
from atss_core.engine.thresholds import (
    best_f1_threshold,
    compute_class_thresholds,
    load_class_thresholds,
    save_class_thresholds,
    thresholds_to_dict,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# json ids 2, 5, 9, 11 -> contiguous 1..4: cat, dog, bird, cow.
CATEGORIES = [{"id": 9, "name": "bird"}, {"id": 2, "name": "cat"}, {"id": 11, "name": "cow"},
              {"id": 5, "name": "dog"}]


def _ann(i, image, cat, box, crowd=0):
    return {"id": i, "image_id": image, "category_id": cat, "bbox": box,
            "area": box[2] * box[3], "iscrowd": crowd}


def _det(image, cat, box, score):
    return {"image_id": image, "category_id": cat, "bbox": box, "score": score}


@pytest.fixture
def ann_file(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100},
                   {"id": 2, "file_name": "2.jpg", "width": 100, "height": 100}],
        "categories": CATEGORIES,
        "annotations": [
            _ann(1, 1, 2, [10, 10, 30, 30]),            # cat A
            _ann(2, 1, 2, [50, 50, 30, 30]),            # cat B
            _ann(3, 2, 2, [0, 0, 40, 40]),              # cat C
            _ann(4, 2, 2, [60, 60, 30, 30], crowd=1),   # crowd of cats
            _ann(5, 2, 5, [20, 20, 50, 50]),            # dog D
            _ann(6, 1, 11, [0, 0, 20, 20]),             # cow, never found
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path)


RESULTS = [
    _det(1, 2, [10, 10, 30, 30], 0.9),    # cat A: TP
    _det(2, 2, [25, 25, 40, 40], 0.8),    # cat C badly localised (IoU 0.08): FP
    _det(2, 2, [80, 0, 10, 10], 0.6),     # nothing there: FP
    _det(1, 2, [50, 50, 30, 30], 0.4),    # cat B: TP
    _det(2, 2, [62, 62, 25, 25], 0.95),   # inside the crowd region: ignored
    _det(2, 5, [20, 20, 50, 50], 0.7),    # dog D: TP
    _det(2, 5, [21, 20, 50, 50], 0.65),   # duplicate of D: FP
    _det(1, 9, [0, 0, 10, 10], 0.3),      # bird: no ground truth anywhere
    _det(1, 11, [70, 70, 20, 20], 0.5),   # cow in the wrong place: FP
]


def test_best_f1_threshold_by_hand():
    scores = np.array([0.5, 0.9, 0.7, 0.8, 0.6])
    is_tp = np.array([False, True, True, False, True])
    # Sorted: .9 T, .8 F, .7 T, .6 T, .5 F with 4 ground truths -> F at .6 is 0.75.
    threshold, f1, precision, recall = best_f1_threshold(scores, is_tp, 4)
    assert (threshold, precision, recall) == (0.6, 0.75, 0.75)
    assert f1 == pytest.approx(0.75)


def test_best_f1_threshold_keeps_ties_together():
    # At 0.6 both boxes are kept (P 2/3, R 1): not the TP alone (which would be F 1).
    threshold, f1, _, _ = best_f1_threshold(np.array([0.9, 0.6, 0.6]),
                                            np.array([True, True, False]), 2)
    assert threshold == 0.6 and f1 == pytest.approx(0.8)
    threshold, _, _, _ = best_f1_threshold(np.array([0.9, 0.6, 0.6]),
                                           np.array([True, False, False]), 2)
    assert threshold == 0.9


def test_best_f1_threshold_without_evidence():
    assert best_f1_threshold(np.array([0.5]), np.array([False]), 0) is None
    assert best_f1_threshold(np.array([0.5]), np.array([False]), 3) is None
    assert best_f1_threshold(np.zeros(0), np.zeros(0, dtype=bool), 3) is None


def test_compute_class_thresholds(ann_file):
    coco = load_coco_annotations(ann_file)
    thresholds = compute_class_thresholds(coco, RESULTS, default=0.25)
    by_name = {t.name: t for t in thresholds}
    assert [t.name for t in thresholds] == ["cat", "dog", "bird", "cow"]
    cat = by_name["cat"]
    # .9 T, .8 F, .6 F, .4 T over 3 cats (the crowd detection ignored): best at .4.
    assert cat.source == "f1" and cat.threshold == pytest.approx(0.4)
    assert (cat.precision, cat.recall) == (0.5, pytest.approx(2 / 3))
    assert cat.f1 == pytest.approx(4 / 7) and cat.num_gt == 3 and cat.num_detections == 4
    dog = by_name["dog"]
    assert dog.threshold == pytest.approx(0.7) and dog.f1 == 1.0
    assert (by_name["bird"].source, by_name["bird"].threshold) == ("no_ground_truth", 0.25)
    assert (by_name["cow"].source, by_name["cow"].threshold) == ("no_true_positive", 0.25)
    # At IoU 0.05 the badly placed cat is a TP: .9 T, .8 T, .6 F, .4 T -> F 6/7 at .4.
    loose = {t.name: t for t in compute_class_thresholds(coco, RESULTS, iou_threshold=0.05)}
    assert loose["cat"].threshold == pytest.approx(0.4) and loose["cat"].f1 == pytest.approx(6 / 7)


def test_thresholds_file_round_trip(tmp_path, ann_file):
    coco = load_coco_annotations(ann_file)
    thresholds = compute_class_thresholds(coco, RESULTS)
    path = str(tmp_path / "thresholds.json")
    save_class_thresholds(thresholds, path)
    with open(path) as f:
        data = json.load(f)
    assert list(data) == ["cat", "dog", "bird", "cow"]
    assert data == dict(thresholds_to_dict(thresholds))
    loaded = load_class_thresholds(path, ["cat", "dog", "bird", "cow"])
    assert loaded.shape == (5,) and loaded[0] == 0
    assert torch.allclose(loaded[1:], torch.tensor([0.4, 0.7, 0.5, 0.5]))


def test_load_class_thresholds_errors(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"cat": 0.3, "zebra": 0.2}))
    with pytest.raises(EvaluationError, match="'zebra'"):
        load_class_thresholds(str(path), ["cat", "dog"])
    path.write_text(json.dumps({"cat": 0.3}))
    with pytest.raises(EvaluationError, match="lacks the classes 'dog'"):
        load_class_thresholds(str(path), ["cat", "dog"])
    assert load_class_thresholds(str(path), ["cat", "dog"], default=0.6).tolist() == \
        pytest.approx([0.0, 0.3, 0.6])
    path.write_text(json.dumps({"cat": 1.5}))
    with pytest.raises(EvaluationError, match="in \\[0, 1\\]"):
        load_class_thresholds(str(path), ["cat"])
    path.write_text(json.dumps([0.3]))
    with pytest.raises(EvaluationError, match="must hold an object"):
        load_class_thresholds(str(path), ["cat"])
    with pytest.raises(EvaluationError, match="cannot read"):
        load_class_thresholds(str(tmp_path / "missing.json"), ["cat"])


def test_compute_class_thresholds_errors(ann_file):
    coco = load_coco_annotations(ann_file)
    with pytest.raises(EvaluationError, match="image ids 99"):
        compute_class_thresholds(coco, [_det(99, 2, [0, 0, 5, 5], 0.5)])
    with pytest.raises(EvaluationError, match="IoU threshold"):
        compute_class_thresholds(coco, RESULTS, iou_threshold=0.0)


def test_tool(tmp_path, ann_file):
    results = tmp_path / "bbox.json"
    results.write_text(json.dumps(RESULTS))
    out, details = tmp_path / "thresholds.json", tmp_path / "details.json"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "compute_class_thresholds.py"),
           "--results", str(results), "--ann-file", ann_file, "--output", str(out),
           "--details", str(details), "--default", "0.3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == pytest.approx(
        {"cat": 0.4, "dog": 0.7, "bird": 0.3, "cow": 0.3})
    assert [d["source"] for d in json.loads(details.read_text())] == \
        ["f1", "f1", "no_ground_truth", "no_true_positive"]
    assert "cat" in proc.stderr and "max F1" in proc.stderr
    # Results of another annotation file: a clear error, no file written.
    results.write_text(json.dumps([_det(7, 2, [0, 0, 5, 5], 0.5)]))
    out.unlink()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "image ids 7 are not in the annotation file" in proc.stderr
    assert not out.exists()

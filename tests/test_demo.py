"""demo/atss_demo.py headless: drawn images written, unreadable files skipped."""
import json

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_cfg

from atss_core.modeling.detector import build_detection_model
from atss_core.utils.checkpoint import DetectronCheckpointer
from demo import atss_demo
from demo.predictor import ATSSDemo, class_names_for

OPTS = ["MODEL.BACKBONE.CONV_BODY", "R-18-FPN-RETINANET", "MODEL.RESNETS.TRANS_FUNC", "BasicBlockWithFixedBatchNorm",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "64",
        "MODEL.ATSS.NUM_CONVS", "1", "MODEL.ATSS.NUM_CLASSES", "4", "MODEL.ATSS.INFERENCE_TH", "0.0",
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]


@pytest.fixture
def checkpoint(tmp_path):
    cfg = load_cfg("atss_R_50_FPN_1x", OPTS)
    model = build_detection_model(cfg)
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.fill_(0.0)  # every class scores ~0.5: plenty of detections
    path = DetectronCheckpointer(cfg, model, save_dir=str(tmp_path)).save("model_final")
    return path


def write_images(folder):
    folder.mkdir()
    rng = np.random.RandomState(0)
    cv2.imwrite(str(folder / "a.jpg"), rng.randint(0, 255, (120, 160, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "b.png"), rng.randint(0, 255, (90, 70, 3), dtype=np.uint8))
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")


def test_demo_writes_drawn_images(tmp_path, checkpoint, capsys):
    images = tmp_path / "images"
    write_images(images)
    out = tmp_path / "out"
    atss_demo.main(["--config-file", f"{REPO_ROOT}/configs/atss/atss_R_50_FPN_1x.yaml", "--weights", checkpoint,
                    "--images-dir", str(images), "--output-dir", str(out), "--min-image-size", "96",
                    "--confidence-threshold", "0.1", *OPTS, "MODEL.DEVICE", "cpu"])
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err
    assert "inference time" in captured.out and "processed 2 of 3 images" in captured.out
    a = cv2.imread(str(out / "a.jpg"))
    assert a.shape == (120, 160, 3)
    assert (out / "b.jpg").exists() and not (out / "broken.jpg").exists()


def test_per_class_thresholds(tmp_path, checkpoint):
    cfg = load_cfg("atss_R_50_FPN_1x", OPTS + ["INPUT.MIN_SIZE_TEST", "96"])
    names = class_names_for(cfg)
    assert names == ["class 1", "class 2", "class 3"]
    image = np.random.RandomState(1).randint(0, 255, (100, 100, 3), dtype=np.uint8)
    everything = ATSSDemo(cfg, checkpoint, confidence_threshold=0.0).predict(image)
    assert len(everything) > 0 and set(everything.get_field("labels").tolist()) == {1, 2, 3}
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"class 1": 0.0, "class 2": 1.0}))
    kept = ATSSDemo(cfg, checkpoint, confidence_threshold=1.0, class_thresholds=str(path)).predict(image)
    assert set(kept.get_field("labels").tolist()) == {1}
    assert kept.size == (100, 100) and float(kept.bbox[:, 2].max()) <= 100

"""atss_core.engine.predictor.Predictor: built from a config and a checkpoint,
run on arrays and files, batched, thresholded, boxes in the original pixels
(as tools/test_net.py computes them), and clear errors for bad inputs."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from conftest import COCO128_DIR, config_path, load_cfg, requires_coco128

from atss_core.config import ConfigError
from atss_core.config.paths_catalog import DatasetCatalog
from atss_core.data import make_data_loader
from atss_core.data.datasets.coco import read_image_file
from atss_core.data.transforms import build_transforms
from atss_core.engine.bbox_aug import build_bbox_aug
from atss_core.engine.coco_eval import EvaluationError
from atss_core.engine.inference import compute_on_dataset, rescale_to_original
from atss_core.engine.predictor import COCO_CLASS_NAMES, Detections, Predictor, UntrainedModelError
from atss_core.modeling.detector import build_detection_model
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.boxlist_ops import box_iou
from atss_core.structures.image_list import to_image_list
from atss_core.utils.checkpoint import DetectronCheckpointer

CONFIG = config_path("cpu/atss_R_18_FPN_coco128")
# Small inputs, every candidate kept by the model (INFERENCE_TH 0), no dataset
# needed (the class names are then COCO's, the config having 81 classes).
SMALL = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160", "MODEL.ATSS.INFERENCE_TH", "0.0",
         "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0"]
VAL_DIR = os.path.join(COCO128_DIR, "val2017")
VAL_ANN = os.path.join(COCO128_DIR, "annotations", "instances_val2017.json")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint of the small model whose scores spread over (0, 1)
    (classification bias 0, logits scaled up): detections at every threshold."""
    cfg = load_cfg(CONFIG, SMALL)
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.fill_(0.0)
        model.rpn.head.cls_logits.weight.mul_(20.0)
    return DetectronCheckpointer(cfg, model, save_dir=str(tmp_path_factory.mktemp("ckpt"))).save("model_final")


@pytest.fixture(scope="module")
def predictor(weights):
    return Predictor.from_config(CONFIG, weights, opts=SMALL, device="cpu", score_threshold=0.0)


def like(predictor, **kwargs):
    """A Predictor of the same model with other settings."""
    return Predictor(predictor.cfg, model=predictor.model, **kwargs)


def random_images(sizes, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def reference_like_test_net(predictor, image):
    """What tools/test_net.py computes for one image: the test transforms,
    to_image_list, the model, the boxes resized to the original image."""
    cfg = predictor.cfg
    tensor, _ = build_transforms(cfg, is_train=False)(image, None)
    with torch.no_grad():
        output = predictor.model(to_image_list([tensor], cfg.DATALOADER.SIZE_DIVISIBILITY))[0]
    return output.resize((image.shape[1], image.shape[0]))


def assert_same(ours, ref, min_fraction=0.99):
    """tests/test_parity.py's tolerance: same label, IoU > 0.99 and |score
    difference| < 1e-3, matched as sets both ways; one detection in a hundred
    may differ (a near-tie at the top-k cut or in NMS)."""
    if isinstance(ref, Detections):
        ref = ref.to_boxlist()
    ours = ours.to_boxlist()
    assert ours.size == ref.size
    assert abs(len(ours) - len(ref)) <= max(1, int(0.01 * len(ref)))
    if len(ref) == 0:
        return
    same = (
        (ours.get_field("labels")[:, None] == ref.get_field("labels")[None])
        & (box_iou(ours.bbox, ref.bbox) > 0.99)
        & ((ours.get_field("scores")[:, None] - ref.get_field("scores")[None]).abs() < 1e-3)
    )
    assert same.any(0).float().mean() >= min_fraction
    assert same.any(1).float().mean() >= min_fraction


# ------------------------------------------------------------------ building
def test_from_config_loads_the_weights(predictor, weights):
    cfg = predictor.cfg
    assert cfg.is_frozen() and cfg.INPUT.MIN_SIZE_TEST == 96 and cfg.MODEL.DEVICE == "cpu"
    assert predictor.device == torch.device("cpu") and not predictor.model.training
    assert predictor.batch_size == cfg.TEST.IMS_PER_BATCH == 4
    assert predictor.class_names == COCO_CLASS_NAMES
    saved = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    state = predictor.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_untrained_weights_are_refused(tmp_path):
    with pytest.raises(UntrainedModelError, match="no weights were given"):
        Predictor.from_config(CONFIG, None, opts=SMALL, device="cpu")  # the config's MODEL.WEIGHT is ""
    with pytest.raises(UntrainedModelError, match="catalog://ImageNetPretrained/MSRA/R-50"):
        Predictor.from_config(CONFIG, "catalog://ImageNetPretrained/MSRA/R-50", opts=SMALL)
    untrained = Predictor.from_config(CONFIG, None, opts=SMALL, device="cpu", allow_untrained=True)
    assert isinstance(untrained.predict(random_images([(50, 60)])[0]), Detections)


def test_construction_errors(predictor, tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        Predictor.from_config(tmp_path / "nope.yaml", "w.pth")
    with pytest.raises(ValueError, match="not both"):
        like(predictor, weights="w.pth")
    with pytest.raises(ValueError, match="score_threshold"):
        like(predictor, score_threshold=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        like(predictor, batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            like(predictor, device="cuda")


def test_reexported_where_users_look():
    import atss_core.engine as engine

    assert engine.Predictor is Predictor and engine.Detections is Detections
    with pytest.raises(AttributeError):
        engine.NoSuchThing  # noqa: B018


# ------------------------------------------------------------------ arrays
def test_numpy_images_give_test_net_detections_in_original_pixels(predictor):
    images = random_images([(120, 160), (90, 70), (200, 100)])
    results = predictor.predict(images)
    assert isinstance(results, list) and len(results) == 3
    for image, det in zip(images, results):
        h, w = image.shape[:2]
        assert det.image_size == (w, h) and len(det) > 10
        assert det.boxes.dtype == np.float32 and det.boxes.shape == (len(det), 4)
        assert det.scores.dtype == np.float32 and det.labels.dtype == np.int64
        assert det.names == [COCO_CLASS_NAMES[label - 1] for label in det.labels]
        assert det.labels.min() >= 1 and det.labels.max() <= 80
        # original pixels: within the image, and beyond the resized input's extent
        assert det.boxes.min() >= 0 and det.boxes[:, [0, 2]].max() <= w and det.boxes[:, [1, 3]].max() <= h
        ref = reference_like_test_net(predictor, image)
        assert_same(det, ref, min_fraction=1.0)
        assert np.allclose(det.boxes, ref.bbox.numpy(), atol=1e-3)
        assert np.allclose(det.scores, ref.get_field("scores").numpy(), atol=1e-5)
    # the resized input is 96 pixels on its shorter side, the boxes reach beyond it
    assert results[2].boxes[:, 3].max() > 160


def test_single_image_and_to_boxlist(predictor):
    image = random_images([(80, 100)])[0]
    det = predictor.predict(image)
    assert isinstance(det, Detections)
    boxlist = det.to_boxlist()
    assert isinstance(boxlist, BoxList) and boxlist.size == (100, 80) and boxlist.mode == "xyxy"
    assert torch.equal(boxlist.get_field("labels"), torch.from_numpy(det.labels))
    assert np.array_equal(boxlist.bbox.numpy(), det.boxes)
    assert predictor.predict([]) == []
    # a non-contiguous view (an RGB array flipped to BGR) is the same image
    assert_same(predictor.predict(np.ascontiguousarray(image[:, :, ::-1])[:, :, ::-1]), det, min_fraction=1.0)


def test_image_list_input_is_the_network_input(predictor):
    """An ImageList (what the data loaders give) runs as it is; the boxes are in
    the pixels of its image_sizes, i.e. of the resized input."""
    image = random_images([(120, 160)])[0]
    tensor, _ = predictor.transforms(image, None)
    batch = to_image_list([tensor], predictor.cfg.DATALOADER.SIZE_DIVISIBILITY)
    (det,) = predictor.predict(batch)
    h, w = tensor.shape[-2:]
    assert det.image_size == (w, h)
    # the same detections as from the array, scaled to the resized input
    expected = predictor.predict(image).to_boxlist().resize((w, h))
    assert_same(det, Detections(expected.bbox.numpy(), expected.get_field("scores").numpy(),
                                expected.get_field("labels").numpy(), det.names, (w, h)), min_fraction=1.0)


# ------------------------------------------------------------------ batching
def test_batched_equals_one_by_one(predictor):
    # sizes whose padded inputs differ, repeat and interleave
    images = random_images([(120, 160), (90, 70), (121, 161), (200, 100), (90, 70), (60, 300), (120, 160)],
                           seed=1)
    alone = like(predictor, score_threshold=0.0, batch_size=1).predict(images)
    for batch_size in (2, 3, 8):
        batched = like(predictor, score_threshold=0.0, batch_size=batch_size).predict(images)
        for a, b in zip(alone, batched):
            assert_same(b, a)
    # an image's detections do not depend on its neighbours in the batch
    small, big = images[1], images[3]
    with_big = like(predictor, batch_size=2).predict([small, big])[0]
    assert_same(with_big, alone[1], min_fraction=1.0)


@requires_coco128()
def test_files_give_what_test_net_computes(predictor, tmp_path, monkeypatch):
    """The detections of files equal tools/test_net.py's predictions (its data
    loader, compute_on_dataset, rescale_to_original) on the same images: as
    sets (the predictor batches images of one size, the loader here does not,
    and a batch rounds the channels-last convolutions differently, which can
    swap detections of nearly equal scores)."""
    with open(VAL_ANN) as f:
        ann = json.load(f)
    ann["images"] = ann["images"][:6]
    ids = {img["id"] for img in ann["images"]}
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in ids]
    ann_file = tmp_path / "subset.json"
    ann_file.write_text(json.dumps(ann))
    monkeypatch.setitem(DatasetCatalog._registered, "predictor_subset",
                        {"factory": "COCODataset", "img_dir": VAL_DIR, "ann_file": str(ann_file)})
    cfg = predictor.cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(["DATASETS.TEST", "('predictor_subset',)", "TEST.IMS_PER_BATCH", "1"])
    loader = make_data_loader(cfg, is_train=False)[0]
    predictions, _ = compute_on_dataset(predictor.model, loader, torch.device("cpu"), show_progress=False)
    predictions = rescale_to_original(predictions, loader.dataset)
    paths = [os.path.join(VAL_DIR, loader.dataset.get_img_info(i)["file_name"]) for i in range(6)]
    results = predictor.predict(paths)
    for i, det in enumerate(results):
        assert_same(det, predictions[i], min_fraction=1.0)
        assert len(det.boxes) == len(predictions[i])


@requires_coco128()
def test_paths_are_decoded_like_the_dataset(predictor):
    names = sorted(os.listdir(VAL_DIR))[:3]
    paths = [os.path.join(VAL_DIR, n) for n in names]
    from_paths = predictor.predict(paths)
    from pathlib import Path

    assert predictor.predict(Path(paths[0])).image_size == from_paths[0].image_size
    decoded = [read_image_file(p) for p in paths]
    for det, array in zip(from_paths, predictor.predict(decoded)):
        assert np.array_equal(det.boxes, array.boxes) and np.array_equal(det.scores, array.scores)
    # cv2.imread gives the same pixels for these files (no EXIF orientation)
    assert all(np.array_equal(cv2.imread(p), d) for p, d in zip(paths, decoded))
    mixed = predictor.predict([decoded[0], paths[1]])
    assert np.array_equal(mixed[1].boxes, from_paths[1].boxes)


# ------------------------------------------------------------------ thresholds
def test_global_score_threshold(predictor):
    image = random_images([(120, 160)], seed=2)[0]
    everything = predictor.predict(image)
    cut = float(np.median(everything.scores))
    kept = like(predictor, score_threshold=cut).predict(image)
    expected = everything.scores >= cut
    assert 0 < len(kept) < len(everything) and len(kept) == int(expected.sum())
    assert np.array_equal(kept.boxes, everything.boxes[expected])
    assert np.array_equal(kept.labels, everything.labels[expected])
    assert kept.scores.min() >= cut


def test_per_class_thresholds_dict_and_file(predictor, tmp_path):
    image = random_images([(120, 160)], seed=3)[0]
    everything = predictor.predict(image)
    labels, counts = np.unique(everything.labels, return_counts=True)
    assert len(labels) >= 3
    first, second = (COCO_CLASS_NAMES[label - 1] for label in labels[np.argsort(-counts)[:2]])
    thresholds = {first: 0.0, second: 1.0}  # first: all kept; second: none; others: the global 0.99
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(thresholds))
    for source in (thresholds, str(path), path):
        kept = like(predictor, score_threshold=0.99, class_thresholds=source).predict(image)
        assert second not in kept.names and first in kept.names
        assert kept.names.count(first) == everything.names.count(first)
        others = [s for s, n in zip(kept.scores, kept.names) if n != first]
        assert all(s >= 0.99 for s in others)
    with pytest.raises(EvaluationError, match="mapping names classes the model does not have: 'unicorn'"):
        like(predictor, class_thresholds={"unicorn": 0.5})
    with pytest.raises(EvaluationError, match="in \\[0, 1\\]"):
        like(predictor, class_thresholds={"person": 2})
    with pytest.raises(EvaluationError, match="cannot read"):
        like(predictor, class_thresholds=str(tmp_path / "missing.json"))


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs_name_the_input(predictor, tmp_path, monkeypatch):
    good = random_images([(40, 50)])[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    missing = str(tmp_path / "missing.jpg")
    cases = [
        ([good, good.astype(np.float32)], TypeError, r"images\[1\]: .*dtype float32"),
        ([good, good[:, :, 0]], ValueError, r"images\[1\]: .*\[H, W, 3\], got \[40, 50\]"),
        ([np.zeros((40, 50, 4), np.uint8)], ValueError, r"images\[0\]: .*got \[40, 50, 4\]"),
        ([np.zeros((0, 50, 3), np.uint8)], ValueError, r"images\[0\]: the image is empty"),
        ([good, missing], FileNotFoundError, r"images\[1\]: .*missing\.jpg: no such file"),
        ([good, str(broken)], ValueError, r"images\[1\]: .*broken\.jpg: not a readable image"),
        ([good, 3], TypeError, r"images\[1\]: expected a BGR uint8 numpy array .* got int"),
        ([torch.zeros(40, 50, 3, dtype=torch.uint8)], TypeError, r"images\[0\]: .* got Tensor"),
        (missing, FileNotFoundError, r"^image: .*missing\.jpg: no such file"),
        (good.astype(np.float64), TypeError, r"^image: .*dtype float64"),
        (5, TypeError, "predict\\(\\) takes an image"),
    ]
    for images, error, match in cases:
        with pytest.raises(error, match=match):
            predictor.predict(images)
    # the inputs are checked before any image is run
    monkeypatch.setattr(Predictor, "_predict_group", lambda *a: pytest.fail("ran the model"))
    with pytest.raises(FileNotFoundError):
        like(predictor, batch_size=1).predict([good, good, missing])


# ------------------------------------------------------------------ test-time augmentation
def test_test_time_augmentation_as_test_net(predictor):
    cfg = predictor.cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(["TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.H_FLIP", "True",
                         "TEST.BBOX_AUG.SCALES", "(64,)", "TEST.BBOX_AUG.MAX_SIZE", "160"])
    aug = Predictor(cfg, model=predictor.model, score_threshold=0.0, batch_size=2)
    images = random_images([(120, 160), (90, 70), (120, 160)], seed=4)
    bbox_aug = build_bbox_aug(cfg)
    with torch.no_grad():  # each image alone: its own padding
        refs = [bbox_aug(predictor.model, [image], torch.device("cpu"))[0] for image in images]
    for image, det, ref in zip(images, aug.predict(images), refs):
        assert_same(det, ref.resize((image.shape[1], image.shape[0])), min_fraction=1.0)

"""Parity with the reference ATSS implementation (../shared/reference).

The reference was run with deterministic synthetic weights on one COCO image;
we load the same weights, in the layout of the released checkpoints, through
DetectronCheckpointer and compare head outputs and detections.
"""
import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import REFERENCE_DIR, load_cfg, requires_reference

from atss_core.modeling.detector import build_detection_model
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.boxlist_ops import box_iou
from atss_core.structures.image_list import ImageList, to_image_list
from atss_core.utils.checkpoint import DetectronCheckpointer

pytestmark = requires_reference()


def reference_weights_module():
    sys.path.insert(0, REFERENCE_DIR)
    try:
        import reference_weights
    finally:
        sys.path.remove(REFERENCE_DIR)
    return reference_weights


def write_reference_checkpoint(config_name, path):
    """The synthetic weights in the released layout: {"model": {"module." + k: v}}."""
    rw = reference_weights_module()
    with open(os.path.join(REFERENCE_DIR, "keys", config_name + ".json")) as f:
        spec = json.load(f)
    state = rw.make_state_dict(spec)
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, path)
    return spec


@pytest.fixture(scope="module")
def fixture():
    with open(os.path.join(REFERENCE_DIR, "parity", "r50_single.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def r50_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("weights") / "ATSS_R_50_FPN_1x_synthetic.pth")
    write_reference_checkpoint("atss_R_50_FPN_1x", path)
    cfg = load_cfg("atss_R_50_FPN_1x")
    model = build_detection_model(cfg).eval()
    DetectronCheckpointer(cfg, model).load(path)
    return model


def fixture_input(fx):
    png = cv2.imread(os.path.join(REFERENCE_DIR, "parity", fx["images"][0]["png"]), cv2.IMREAD_COLOR)
    assert list(png.shape[:2]) == fx["images"][0]["resized_hw"]
    image = png.astype(np.float32) - np.asarray(fx["pixel_mean_bgr"], dtype=np.float32)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def assert_same_detections(ours, ref, min_fraction=0.99):
    """Same label, IoU > 0.99 and |score diff| < 1e-3, as a set, both ways."""
    rb = torch.tensor(ref["boxes"]).reshape(-1, 4)
    rs = torch.tensor(ref["scores"])
    rl = torch.tensor(ref["labels"])
    assert abs(len(ours) - len(rb)) <= max(1, int(0.01 * len(rb)))
    iou = box_iou(ours.bbox, rb)
    same = (
        (ours.get_field("labels")[:, None] == rl[None])
        & (iou > 0.99)
        & ((ours.get_field("scores")[:, None] - rs[None]).abs() < 1e-3)
    )
    assert same.any(0).float().mean() >= min_fraction
    assert same.any(1).float().mean() >= min_fraction


def relative_error(ours, ref):
    ref = torch.as_tensor(ref)
    return float((ours - ref).norm() / ref.norm())


def test_head_outputs_and_detections_match_reference(r50_model, fixture):
    image = fixture_input(fixture)
    images = to_image_list([image], 32)
    assert list(images.tensors.shape[-2:]) == fixture["padded_hw"]
    with torch.no_grad():
        features = r50_model.backbone(images.tensors)
        cls, reg, ctr = r50_model.rpn.head(features)
        detections = r50_model(images)
    for sample in fixture["head_samples"]:
        level = sample["level"]
        assert list(cls[level].shape) == sample["shape_cls"]
        assert list(reg[level].shape) == sample["shape_reg"]
        n, c, y, x = (torch.tensor(v) for v in sample["idx"])
        assert relative_error(cls[level][n, c, y, x], sample["cls"]) < 1e-4
        assert relative_error(reg[level][n, c % 4, y, x], sample["reg"]) < 1e-4
        assert relative_error(ctr[level][n, 0, y, x], sample["ctr"]) < 1e-4
        fpn_mean = float(features[level].abs().mean())
        assert abs(fpn_mean - sample["fpn_abs_mean"]) / sample["fpn_abs_mean"] < 1e-4
    assert len(detections) == 1
    assert detections[0].size == (fixture["images"][0]["resized_hw"][1], fixture["images"][0]["resized_hw"][0])
    assert_same_detections(detections[0], fixture["detections"][0])


def test_batch_with_padding(r50_model, fixture):
    """The fixture image batched with a smaller image (so the batch pads to the
    fixture's padded size) still gives the reference detections, and the small
    image gets the same detections as alone at that padded size."""
    image = fixture_input(fixture)
    small = image[:, 100:500, 200:900].flip(-1).contiguous()
    padded_small = ImageList(to_image_list([image, small], 32).tensors[1:].clone(), [(400, 700)])
    with torch.no_grad():
        batch = r50_model(to_image_list([image, small], 32))
        alone = r50_model(padded_small)
    assert_same_detections(batch[0], fixture["detections"][0])
    assert batch[1].size == (700, 400) and len(batch[1]) > 0
    assert torch.equal(batch[1].get_field("labels"), alone[0].get_field("labels"))
    assert torch.allclose(batch[1].bbox, alone[0].bbox, atol=1e-3)
    assert float(batch[1].bbox[:, 2].max()) <= 699 and float(batch[1].bbox[:, 3].max()) <= 399


def test_dcn_zoo_config_with_still_offsets_equals_plain_model(fixture, tmp_path):
    """A DCNv2 zoo model whose offsets are zero (mask sigmoid(0) = 0.5) computes
    what the plain model computes with those 3x3 weights halved: the deformable
    layers sit where the reference puts them and sample as it does."""
    path = str(tmp_path / "dcn.pth")
    write_reference_checkpoint("atss_dcnv2_R_50_FPN_1x", path)
    dcn_cfg = load_cfg("atss_dcnv2_R_50_FPN_1x")
    dcn_model = build_detection_model(dcn_cfg).eval()
    DetectronCheckpointer(dcn_cfg, dcn_model).load(path)
    plain_state = {}
    for k, v in dcn_model.state_dict().items():
        if ".offset." in k:
            v.zero_()  # in place: the DCN model now has still offsets
            continue
        if k.endswith(".conv.weight"):
            plain_state[k.replace(".conv.weight", ".weight")] = 0.5 * v
        else:
            plain_state[k.replace(".conv.bias", ".bias")] = v
    plain_cfg = load_cfg("atss_R_50_FPN_1x")
    plain_model = build_detection_model(plain_cfg).eval()
    plain_model.load_state_dict(plain_state, strict=True)

    image = fixture_input(fixture)[:, :256, :320].contiguous()
    with torch.no_grad():
        ours = dcn_model.rpn.head(dcn_model.backbone(image[None]))
        plain = plain_model.rpn.head(plain_model.backbone(image[None]))
    for a_levels, b_levels in zip(ours, plain):
        for a, b in zip(a_levels, b_levels):
            assert relative_error(a, b) < 1e-4


def test_training_losses_match_reference(r50_model, fixture):
    """The whole training forward (sample selection + losses) on the fixture
    image and its ground truth gives the reference's three losses."""
    info = fixture["images"][0]
    target = BoxList(torch.tensor(info["gt_boxes"]), (info["resized_hw"][1], info["resized_hw"][0]))
    target.add_field("labels", torch.tensor(info["gt_labels"]))
    r50_model.train()
    try:
        with torch.no_grad():
            losses = r50_model(to_image_list([fixture_input(fixture)], 32), [target])
    finally:
        r50_model.eval()
    assert set(losses) == {"loss_cls", "loss_reg", "loss_centerness"}
    for name, expected in fixture["losses"].items():
        assert f"{float(losses[name]):.4g}" == f"{expected:.4g}", name
        assert abs(float(losses[name]) - expected) <= 1e-5 * abs(expected), name

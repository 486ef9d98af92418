"""The whole detector exported to ONNX (tools/export_model.py, atss_core/export)
and run in ONNX Runtime gives the detections of the PyTorch model.

Compared as sets (assert_same_detections of test_parity: same label, IoU > 0.99,
score within 1e-3, >= 99% matched both ways), at the export size and at other
sizes (H and W are dynamic): the R-50 of the parity fixture with the shared
synthetic weights (also against the reference's own detections), the DCNv2 R-50, a small
quick-start model (plain, DCNv2, RGB-normalised, POINT regression), a model with no detection,
the ONNX NonMaxSuppression against the repository's NMS, the torch.export
program, and the refusals.
"""
import os
import sys

import numpy as np
import pytest
import torch

from conftest import REFERENCE_DIR, REPO_ROOT, load_cfg, needs_ext, requires_reference

onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install -e .[export]")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install -e .[export]")

from test_parity import assert_same_detections, write_reference_checkpoint  # noqa: E402

from atss_core.data.transforms.transforms import Normalize, resize_image  # noqa: E402
from atss_core.export import ExportableATSS, ExportError  # noqa: E402
from atss_core.export.exporter import (  # noqa: E402
    _quiet_tracing,
    compare_detections,
    export_onnx,
    export_torch,
    onnx_session,
    resolve_opset,
    run_onnx,
)
from atss_core.layers import ml_nms  # noqa: E402
from atss_core.modeling.detector import build_detection_model  # noqa: E402
from atss_core.structures.bounding_box import BoxList  # noqa: E402
from atss_core.structures.image_list import to_image_list  # noqa: E402
from atss_core.utils.checkpoint import DetectronCheckpointer  # noqa: E402

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import export_model  # noqa: E402

QUICK_START = "quick_start/atss_R_18_shapes"
DCN_OPTS = ["MODEL.RESNETS.STAGE_WITH_DCN", "(False, True, True, True)", "MODEL.ATSS.USE_DCN_IN_TOWER", "True"]
RGB_OPTS = ["INPUT.TO_BGR255", "False", "INPUT.PIXEL_MEAN", "[0.485, 0.456, 0.406]",
            "INPUT.PIXEL_STD", "[0.229, 0.224, 0.225]"]


def eager(model, cfg, image):
    """The normal path: uint8 [1, H, W, 3] BGR -> Normalize -> model(ImageList) -> BoxList."""
    normalize = Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, cfg.INPUT.TO_BGR255)
    x, _ = normalize(torch.as_tensor(image)[0].permute(2, 0, 1).float())
    with torch.no_grad():
        return model(to_image_list([x], cfg.DATALOADER.SIZE_DIVISIBILITY))[0]


def as_boxlist(out, image):
    boxes = BoxList(torch.from_numpy(out["boxes"]), (image.shape[2], image.shape[1]))
    boxes.add_field("scores", torch.from_numpy(out["scores"]))
    boxes.add_field("labels", torch.from_numpy(out["labels"]))
    return boxes


def as_dict(boxlist):
    return {"boxes": boxlist.bbox.flatten().tolist(), "scores": boxlist.get_field("scores").tolist(),
            "labels": boxlist.get_field("labels").tolist()}


def check_outputs(out, image, num_classes, max_detections):
    k = len(out["scores"])
    assert out["boxes"].shape == (k, 4) and out["boxes"].dtype == np.float32
    assert out["scores"].dtype == np.float32 and out["labels"].dtype == np.int64 and out["labels"].shape == (k,)
    assert k <= max_detections
    assert np.all(np.diff(out["scores"]) <= 0)  # by descending score
    if k:
        assert out["labels"].min() >= 1 and out["labels"].max() <= num_classes
        assert out["boxes"].min() >= 0
        assert out["boxes"][:, 2].max() <= image.shape[2] - 1 and out["boxes"][:, 3].max() <= image.shape[1] - 1


def assert_matches_eager(session, model, cfg, image):
    out = run_onnx(session, image)
    check_outputs(out, image, cfg.MODEL.ATSS.NUM_CLASSES - 1, cfg.TEST.DETECTIONS_PER_IMG)
    ref = eager(model, cfg, image)
    assert len(ref) > 0
    assert_same_detections(as_boxlist(out, image), as_dict(ref))
    return out, ref


def random_image(h, w, seed):
    return torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def small_model(opts=(), seed=0, detections=True):
    """The quick-start model, freshly initialised; ``detections``: class biases
    spread around -1 so that many anchors pass INFERENCE_TH (a fresh head's
    prior probability of 0.01 passes none)."""
    cfg = load_cfg(QUICK_START, list(opts))
    torch.manual_seed(seed)
    model = build_detection_model(cfg).eval()
    if detections:
        with torch.no_grad():
            model.rpn.head.cls_logits.bias.normal_(-1.0, 1.0)
            for name, p in model.rpn.head.named_parameters():
                if ".offset." in name:  # deformable convs that really deform
                    p.normal_(0.0, 0.05)
    return cfg, model


# ---------------------------------------------------------------- R-50 parity
@pytest.fixture(scope="module")
def fixture():
    import json

    with open(os.path.join(REFERENCE_DIR, "parity", "r50_single.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def r50(tmp_path_factory, fixture):
    """The parity fixture's R-50 (shared synthetic weights), its photo (800x1201,
    already resized by the reference rule) and its ONNX export, traced on a
    448x640 crop: every size the tests run differs from it."""
    import cv2

    folder = tmp_path_factory.mktemp("r50")
    weights = str(folder / "ATSS_R_50_FPN_1x_synthetic.pth")
    write_reference_checkpoint("atss_R_50_FPN_1x", weights)
    cfg = load_cfg("atss_R_50_FPN_1x", ["MODEL.WEIGHT", weights])
    model = build_detection_model(cfg).eval()
    DetectronCheckpointer(cfg, model).load(weights)
    png = cv2.imread(os.path.join(REFERENCE_DIR, "parity", fixture["images"][0]["png"]), cv2.IMREAD_COLOR)
    path = str(folder / "atss_r50.onnx")
    assert export_onnx(model, cfg, path, torch.from_numpy(png[100:548, 200:840].copy())[None]) == 17
    return cfg, model, png, path


@requires_reference()
def test_r50_onnx_matches_pytorch_and_reference_at_two_sizes(r50, fixture):
    cfg, model, png, path = r50
    session = onnx_session(path, threads=torch.get_num_threads())
    full = torch.from_numpy(png)[None]
    out, _ = assert_matches_eager(session, model, cfg, full)
    assert_same_detections(as_boxlist(out, full), fixture["detections"][0])  # the reference's own
    # the same photo as the test rule would give it with a shorter side of 512
    small = torch.from_numpy(resize_image(png, 512, 1333).copy())[None]
    assert small.shape[1:3] == (512, 768)
    assert_matches_eager(session, model, cfg, small)


@requires_reference()
def test_onnx_graph_uses_standard_operators_only(r50):
    model = onnx.load(r50[3])
    assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    ops = {node.op_type for node in model.graph.node}
    assert {"NonMaxSuppression", "TopK", "Conv", "Pad"} <= ops
    (image,) = model.graph.input
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [1, "height", "width", 3]
    assert [o.name for o in model.graph.output] == ["boxes", "scores", "labels"]


@requires_reference()
def test_dcnv2_r50_onnx_matches_pytorch_at_two_sizes(tmp_path):
    """The zoo's atss_dcnv2_R_50_FPN_1x (13 DeformConv in the backbone, one per
    tower) with the shared synthetic weights, its offset convolutions scaled by
    0.01. Unscaled, they move samples by up to ~200 pixels and make that model
    chaotic: an input change of 1e-4 (of 0..255) changes 88% of the PyTorch
    model's own detections, so float rounding alone (ONNX Runtime's DeformConv
    agrees with ours to ~3e-7 per layer given the same inputs) leaves 17%
    matched. Scaled, the offsets stay within ~3 pixels, as a trained model's."""
    weights = str(tmp_path / "dcn.pth")
    write_reference_checkpoint("atss_dcnv2_R_50_FPN_1x", weights)
    cfg = load_cfg("atss_dcnv2_R_50_FPN_1x")
    model = build_detection_model(cfg).eval()
    DetectronCheckpointer(cfg, model).load(weights)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".offset." in name:
                p.mul_(0.01)
    path = str(tmp_path / "dcn.onnx")
    assert export_onnx(model, cfg, path, random_image(256, 320, seed=20)) == 19
    assert sum(n.op_type == "DeformConv" for n in onnx.load(path).graph.node) == 13 + 2 * 5
    session = onnx_session(path, threads=torch.get_num_threads())
    assert_matches_eager(session, model, cfg, random_image(256, 320, seed=21))
    assert_matches_eager(session, model, cfg, random_image(320, 416, seed=22))


# ------------------------------------------------------------ small models
@pytest.mark.parametrize("variant, opts, opset", [
    ("plain", (), 17),
    ("dcnv2", DCN_OPTS, 19),
    ("rgb", RGB_OPTS, 17),
    ("point", ["MODEL.ATSS.REGRESSION_TYPE", "POINT"], 17),
])
def test_small_model_onnx_matches_pytorch_at_three_sizes(tmp_path, variant, opts, opset):
    cfg, model = small_model(opts)
    path = str(tmp_path / f"{variant}.onnx")
    assert export_onnx(model, cfg, path, random_image(192, 256, seed=1)) == opset
    if variant == "dcnv2":
        assert "DeformConv" in {n.op_type for n in onnx.load(path).graph.node}
    session = onnx_session(path, threads=torch.get_num_threads())
    assert_matches_eager(session, model, cfg, random_image(192, 256, seed=2))
    # other sizes, not multiples of SIZE_DIVISIBILITY (padding in the graph); the
    # smallest has one-pixel P6 and P7 maps
    assert_matches_eager(session, model, cfg, random_image(256, 330, seed=3))
    assert_matches_eager(session, model, cfg, random_image(100, 37, seed=4))


def test_tool_exports_a_saved_checkpoint_and_verifies_it(tmp_path, capsys):
    cfg, model = small_model()
    weights = str(tmp_path / "model_final.pth")
    torch.save({"model": model.state_dict()}, weights)
    path = str(tmp_path / "atss.onnx")
    status = export_model.cli(["--config-file", os.path.join(REPO_ROOT, "configs", "atss", QUICK_START + ".yaml"),
                               "--format", "onnx", "--output", path, "--height", "160", "--width", "224",
                               "MODEL.WEIGHT", weights])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "ONNX opset 17" in out and "traced on 160x224" in out and "100.0% of PyTorch's" in out
    session = onnx_session(path, threads=torch.get_num_threads())
    assert_matches_eager(session, model, cfg, random_image(256, 256, seed=4))


def test_no_detection_gives_empty_outputs(tmp_path):
    cfg, model = small_model(detections=False)  # prior probability 0.01 < INFERENCE_TH
    path = str(tmp_path / "empty.onnx")
    export_onnx(model, cfg, path, random_image(128, 160, seed=5))
    image = random_image(128, 160, seed=6)
    out = run_onnx(onnx_session(path), image)
    assert len(eager(model, cfg, image)) == 0
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)


def test_batch_is_one_image(tmp_path):
    cfg, model = small_model()
    path = str(tmp_path / "one.onnx")
    export_onnx(model, cfg, path, random_image(128, 128, seed=7))
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run_onnx(onnx_session(path), random_image(128, 128, seed=8).repeat(2, 1, 1, 1))


# ------------------------------------------------------------------- NMS
class _NMSOnly(torch.nn.Module):
    def forward(self, boxes, scores, labels):
        from atss_core.export.onnx_model import _ClasswiseNMS

        return _ClasswiseNMS.apply(boxes, scores, labels, 3, 0.6, -0.5)


def test_onnx_nms_keeps_what_the_repository_nms_keeps(tmp_path):
    """NonMaxSuppression on boxes widened by one pixel = the +1 IoU; a pair at
    exactly the threshold keeps both (IoU > threshold suppresses); class-wise;
    non-candidates (score -1) never kept."""
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 60, (400, 2), generator=g).float()
    wh = torch.randint(0, 30, (400, 2), generator=g).float()
    boxes = torch.cat([xy, xy + wh], 1)
    # 10x10 and 10x6 inside it: +1 IoU exactly 0.6 (0.5 without the +1)
    boxes = torch.cat([boxes, torch.tensor([[0.0, 0, 9, 9], [0.0, 0, 9, 5]])])
    scores = torch.rand(402, generator=g)
    scores[400:] = torch.tensor([0.9, 0.8])
    scores[:40] = -1.0
    labels = torch.randint(1, 4, (402,), generator=g)
    labels[400:] = 2
    path = str(tmp_path / "nms.onnx")
    with torch.no_grad(), _quiet_tracing():
        torch.onnx.export(_NMSOnly(), (boxes, scores, labels), path, dynamo=False, opset_version=17,
                          input_names=["boxes", "scores", "labels"], output_names=["keep"],
                          dynamic_axes={"boxes": {0: "n"}, "scores": {0: "n"}, "labels": {0: "n"}})
    keep_onnx = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"boxes": boxes.numpy(), "scores": scores.numpy(), "labels": labels.numpy()})[0]
    valid = torch.arange(40, 402)
    expected = valid[ml_nms(boxes[valid], scores[valid], labels[valid], 0.6)]
    assert sorted(keep_onnx.tolist()) == expected.tolist()
    assert {400, 401} <= set(keep_onnx.tolist())
    assert len(expected) < 362  # some boxes were suppressed
    # the eager form of the op (what torch.export runs) keeps the same
    assert sorted(_NMSOnly()(boxes, scores, labels).tolist()) == expected.tolist()


@pytest.mark.parametrize("modulated, stride, padding, dilation, groups, dg", [
    (True, 1, 1, 1, 1, 1),
    (True, 2, 1, 1, 4, 2),  # ResNeXt-like groups, two offset groups, stride 2
    (True, 1, 2, 2, 1, 1),
    (False, 1, 1, 1, 2, 1),  # DCNv1: no mask
])
def test_deform_conv_exports_as_onnx_deformconv(tmp_path, modulated, stride, padding, dilation, groups, dg):
    """Every attribute of the repository's deformable convolution maps onto ONNX
    DeformConv; offsets of several pixels, many samples outside the input."""
    from atss_core.layers import DFConv2d

    torch.manual_seed(0)
    layer = DFConv2d(8, 12, with_modulated_dcn=modulated, kernel_size=3, stride=stride, groups=groups,
                     padding=padding, dilation=dilation, deformable_groups=dg, bias=modulated).eval()
    with torch.no_grad():
        layer.offset.weight.normal_(0.0, 0.5)
        layer.offset.bias.normal_(0.0, 2.0)
    from atss_core.export.onnx_model import _with_exportable_deform_convs

    exportable = _with_exportable_deform_convs(torch.nn.Sequential(layer))
    x = torch.randn(1, 8, 11, 13)
    path = str(tmp_path / "dcn.onnx")
    with torch.no_grad(), _quiet_tracing():
        torch.onnx.export(exportable, (x,), path, dynamo=False, opset_version=19, input_names=["x"],
                          dynamic_axes={"x": {2: "h", 3: "w"}})
    assert "DeformConv" in {n.op_type for n in onnx.load(path).graph.node}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in [(1, 8, 11, 13), (1, 8, 17, 9)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = layer(x)
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == tuple(expected.shape)
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------- torch.export + refusals
@needs_ext
def test_torch_export_program_matches_pytorch(tmp_path):
    cfg, model = small_model()
    path = str(tmp_path / "atss.pt2")
    export_torch(model, cfg, path, random_image(192, 256, seed=9))
    program = torch.export.load(path).module()
    for seed, (h, w) in enumerate([(192, 256), (256, 330)]):
        image = random_image(h, w, seed=10 + seed)
        with torch.no_grad():
            boxes, scores, labels = program(image)
        out = {"boxes": boxes.numpy(), "scores": scores.numpy(), "labels": labels.numpy()}
        check_outputs(out, image, 5, 100)
        assert_same_detections(as_boxlist(out, image), as_dict(eager(model, cfg, image)))


def test_refusals():
    cfg, model = small_model(DCN_OPTS, detections=False)
    with pytest.raises(ExportError, match="DeformConv.*opset >= 19"):
        resolve_opset(model, 17)
    assert resolve_opset(model) == 19
    with pytest.raises(ExportError, match="opsets 11..20"):
        resolve_opset(model, 21)
    aug_cfg = load_cfg(QUICK_START, ["TEST.BBOX_AUG.ENABLED", "True"])
    with pytest.raises(ExportError, match="TEST.BBOX_AUG.ENABLED False"):
        ExportableATSS(build_detection_model(aug_cfg), aug_cfg)


def test_tool_errors_are_one_line(tmp_path, capsys):
    config = os.path.join(REPO_ROOT, "configs", "atss", QUICK_START + ".yaml")
    out = str(tmp_path / "a.onnx")
    assert export_model.cli(["--config-file", config, "--output", out]) == 2
    assert "MODEL.WEIGHT is empty" in capsys.readouterr().err
    r50_config = os.path.join(REPO_ROOT, "configs", "atss", "atss_R_50_FPN_1x.yaml")
    assert export_model.cli(["--config-file", r50_config, "--output", out]) == 2
    assert "ImageNet backbone weights" in capsys.readouterr().err  # the config's catalog:// default
    assert export_model.cli(["--config-file", config, "--output", out, "TEST.BBOX_AUG.ENABLED", "True",
                             "MODEL.WEIGHT", "w.pth"]) == 2
    assert "test-time augmentation is not exported" in capsys.readouterr().err
    assert export_model.cli(["--config-file", config, "--output", out, "MODEL.WEIGHT",
                             str(tmp_path / "missing.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    cfg, model = small_model(detections=False)
    weights = str(tmp_path / "w.pth")
    torch.save({"model": model.state_dict()}, weights)
    assert export_model.cli(["--config-file", config, "--output", out, "--opset", "9",
                             "MODEL.WEIGHT", weights]) == 2
    assert "opsets 11..20" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_compare_detections():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20]], dtype=np.float32)
    scores = np.array([0.9, 0.5], dtype=np.float32)
    labels = np.array([1, 2])
    assert compare_detections(boxes, scores, labels, boxes, scores, labels) == (1.0, 1.0)
    assert compare_detections(boxes, scores, labels, boxes[:1], scores[:1], labels[:1]) == (0.5, 1.0)
    assert compare_detections(boxes, scores, np.array([1, 3]), boxes, scores, labels) == (0.5, 0.5)
    assert compare_detections(boxes[:0], scores[:0], labels[:0], boxes[:0], scores[:0], labels[:0]) == (1.0, 1.0)

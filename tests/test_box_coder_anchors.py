"""Anchors and the box coder against the reference's formulas."""
import math

import pytest
import torch

from conftest import load_cfg

from atss_core.modeling.rpn.anchor_generator import cell_anchors_for_level, make_anchor_generator
from atss_core.modeling.rpn.box_coder import BoxCoder


def test_cell_anchors_are_the_references():
    cfg = load_cfg("atss_R_50_FPN_1x")
    gen = make_anchor_generator(cfg)
    expected = [[-27.5, -27.5, 35.5, 35.5], [-55.5, -55.5, 71.5, 71.5], [-111.5, -111.5, 143.5, 143.5],
                [-223.5, -223.5, 287.5, 287.5], [-447.5, -447.5, 575.5, 575.5]]
    for level, box in enumerate(expected):
        assert getattr(gen.cell_anchors, str(level)).tolist() == [box]


def test_retinanet_style_cell_anchors():
    # Three ratios, three octave scales at stride 8, size 32. Worked by hand: the
    # base window (0.5, 0.5, 7.5, 7.5) has centre 4; ratio 0.5 rounds to 11 x 6
    # (numpy rounds 5.5 to even), scaled by 4 to 44 x 24.
    a = cell_anchors_for_level(8, (32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)), (0.5, 1.0, 2.0))
    assert a.shape == (9, 4)
    assert a[0].tolist() == [-17.5, -7.5, 25.5, 15.5]
    assert a[3].tolist() == [-11.5, -11.5, 19.5, 19.5]


def test_grid_order_is_location_major():
    cfg = load_cfg("atss_R_50_FPN_1x", ["MODEL.ATSS.ASPECT_RATIOS", "(0.5, 1.0, 2.0)"])
    gen = make_anchor_generator(cfg)
    anchors = gen([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)])
    assert [len(a) for a in anchors] == [18, 6, 3, 3, 3]
    cell = getattr(gen.cell_anchors, "0")
    # location (y=1, x=2), anchor 1
    assert torch.equal(anchors[0][(1 * 3 + 2) * 3 + 1], cell[1] + torch.tensor([16.0, 8.0, 16.0, 8.0]))


def reference_box_encode(gt, anchors):
    out = []
    for g, a in zip(gt.tolist(), anchors.tolist()):
        aw, ah = a[2] - a[0] + 1, a[3] - a[1] + 1
        ax, ay = (a[2] + a[0]) / 2, (a[3] + a[1]) / 2
        gw, gh = g[2] - g[0] + 1, g[3] - g[1] + 1
        gx, gy = (g[2] + g[0]) / 2, (g[3] + g[1]) / 2
        out.append([10 * (gx - ax) / aw, 10 * (gy - ay) / ah, 5 * math.log(gw / aw), 5 * math.log(gh / ah)])
    return torch.tensor(out)


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 500
    wh = torch.rand(n, 2, generator=g) * 300 + 2
    return torch.cat([xy, xy + wh], dim=1)


def test_box_encode_matches_reference_and_round_trips():
    coder = BoxCoder("BOX")
    gt, anchors = random_boxes(50, 0), random_boxes(50, 1)
    deltas = coder.encode(gt, anchors)
    assert torch.allclose(deltas, reference_box_encode(gt, anchors), atol=1e-4)
    assert torch.allclose(coder.decode(deltas, anchors), gt, atol=1e-3)


def test_box_decode_clamps_large_scales():
    coder = BoxCoder("BOX")
    anchors = torch.tensor([[0.0, 0.0, 63.0, 63.0]])
    big = coder.decode(torch.tensor([[0.0, 0.0, 1000.0, 1000.0]]), anchors)
    width = float(big[0, 2] - big[0, 0] + 1)
    assert width == pytest.approx(64 * 1000 / 16, rel=1e-4)


def test_point_coder_matches_reference_and_round_trips():
    coder = BoxCoder("POINT", anchor_size=64, anchor_stride=8)
    gt, anchors = random_boxes(40, 2), random_boxes(40, 3)
    t = coder.encode(gt, anchors)
    aw = anchors[:, 2] - anchors[:, 0] + 1
    acx = (anchors[:, 2] + anchors[:, 0]) / 2
    assert torch.allclose(t[:, 0], 8 * (acx - gt[:, 0]) / aw, atol=1e-5)
    assert torch.allclose(t[:, 2], 8 * (gt[:, 2] - acx) / aw, atol=1e-5)
    assert torch.allclose(coder.decode(t, anchors), gt, atol=1e-3)


def test_unknown_regression_type():
    with pytest.raises(ValueError, match="BOX or POINT"):
        BoxCoder("CORNER")


def test_maskrcnn_benchmark_style_weights_and_clip():
    """BoxCoder(weights=..., bbox_xform_clip=...) as in maskrcnn-benchmark."""
    gt, anchors = random_boxes(30, 4), random_boxes(30, 5)
    default = BoxCoder("BOX")
    same = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    assert torch.equal(same.encode(gt, anchors), default.encode(gt, anchors))
    unit = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    t = unit.encode(gt, anchors)
    assert torch.allclose(t * torch.tensor([10.0, 10.0, 5.0, 5.0]), default.encode(gt, anchors), atol=1e-5)
    assert torch.allclose(unit.decode(t, anchors), gt, atol=1e-3)
    clipped = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=math.log(2.0))
    box = clipped.decode(torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.tensor([[0.0, 0.0, 63.0, 63.0]]))
    assert float(box[0, 2] - box[0, 0] + 1) == pytest.approx(128.0)
    with pytest.raises(ValueError, match="4 positive numbers"):
        BoxCoder(weights=(1.0, 1.0, 1.0))

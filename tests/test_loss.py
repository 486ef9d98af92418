"""The ATSS loss (atss_core/modeling/rpn/loss.py).

* against a straightforward float64 re-implementation with the reference's
  data flow (per-image targets from the loop version of sample selection,
  positives picked by index, focal loss written out) on synthetic head
  outputs: values and gradients, every sample selection rule, both
  regression types;
* the corner cases: no positives anywhere, several workers.

The losses of the reference on its parity fixture are checked in test_parity.py.
"""
import math

import pytest
import torch
from test_sample_selection import loop_select, make_anchors, random_boxes

from atss_core.config import cfg as default_cfg
from atss_core.modeling.rpn import loss as loss_module
from atss_core.modeling.rpn.box_coder import BoxCoder, make_box_coder
from atss_core.modeling.rpn.loss import (
    ATSSLossComputation,
    flatten_head_outputs,
    make_atss_loss_evaluator,
    permute_and_flatten,
)
from atss_core.modeling.rpn.sample_selection import SampleSelector
from atss_core.structures.bounding_box import BoxList

HW = (128, 192)  # padded input
NUM_CLASSES = 5
GAMMA, ALPHA, REG_WEIGHT = 2.0, 0.25, 2.0


# --------------------------------------------------------------------------- #
# Straightforward version (float64, reference data flow)
# --------------------------------------------------------------------------- #
def _focal_loss_sum(logits, labels):
    p = logits.sigmoid()
    classes = torch.arange(1, logits.shape[1] + 1)
    is_target = (labels[:, None] == classes[None]).to(logits.dtype)
    counted = (labels[:, None] >= 0).to(logits.dtype)
    pos = -ALPHA * (1 - p) ** GAMMA * torch.log(p)
    neg = -(1 - ALPHA) * p ** GAMMA * torch.log(1 - p)
    return (is_target * pos + (1 - is_target) * counted * neg).sum()


def _giou_losses(pred, target):
    px1, py1, px2, py2 = pred.unbind(1)
    px2, py2 = torch.max(px1, px2), torch.max(py1, py2)
    tx1, ty1, tx2, ty2 = target.unbind(1)
    inter = torch.zeros_like(px1)
    iw, ih = torch.min(px2, tx2) - torch.max(px1, tx1), torch.min(py2, ty2) - torch.max(py1, ty1)
    ok = (iw > 0) & (ih > 0)
    inter[ok] = iw[ok] * ih[ok]
    enclosing = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (torch.max(py2, ty2) - torch.min(py1, ty1)) + 1e-7
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter + 1e-7
    return 1 - (inter / union - (enclosing - union) / enclosing)


def straightforward_loss(box_cls, box_regression, centerness, targets, anchors, coder, positive_type="ATSS",
                         workers=1, reduce_factor=1.0):
    """``reduce_factor``: what the sum over workers multiplies a local sum by."""
    num_anchors = centerness[0].shape[1]
    N = len(targets)
    anchors_flat = torch.cat(anchors)
    labels, reg_targets = [], []
    for t in targets:
        lab, matched = loop_select(anchors, t.bbox, t.get_field("labels"), positive_type,
                                   num_anchors_per_location=num_anchors)
        labels.append(lab)
        reg_targets.append(coder.encode(matched, anchors_flat))
    labels, reg_targets = torch.cat(labels), torch.cat(reg_targets).double()

    cls, reg, ctr = [], [], []
    for c, r, o in zip(box_cls, box_regression, centerness):
        _, A, H, W = o.shape
        cls.append(c.view(N, A, -1, H, W).permute(0, 3, 4, 1, 2).reshape(N, H * W * A, -1))
        reg.append(r.view(N, A, 4, H, W).permute(0, 3, 4, 1, 2).reshape(N, H * W * A, 4))
        ctr.append(o.permute(0, 2, 3, 1).reshape(N, -1))
    cls = torch.cat(cls, 1).reshape(-1, box_cls[0].shape[1] // centerness[0].shape[1]).double()
    reg = torch.cat(reg, 1).reshape(-1, 4).double()
    ctr = torch.cat(ctr, 1).reshape(-1).double()
    anchors_all = anchors_flat.repeat(N, 1).double()

    pos = torch.nonzero(labels > 0).squeeze(1)
    num_pos_avg = max(len(pos) * reduce_factor / workers, 1.0)
    loss_cls = _focal_loss_sum(cls, labels) / num_pos_avg
    if len(pos) == 0:
        return loss_cls, reg[pos].sum(), ctr[pos].sum()
    target_boxes = coder.decode(reg_targets[pos], anchors_all[pos])
    a = anchors_all[pos]
    cx, cy = (a[:, 2] + a[:, 0]) / 2, (a[:, 3] + a[:, 1]) / 2
    l, t = cx - target_boxes[:, 0], cy - target_boxes[:, 1]
    r, b = target_boxes[:, 2] - cx, target_boxes[:, 3] - cy
    ctr_t = torch.sqrt(torch.min(l, r) / torch.max(l, r) * torch.min(t, b) / torch.max(t, b))
    pred_boxes = coder.decode(reg[pos], a)
    loss_reg = (_giou_losses(pred_boxes, target_boxes) * ctr_t).sum() / (ctr_t.sum() * reduce_factor / workers)
    loss_ctr = torch.nn.functional.binary_cross_entropy_with_logits(ctr[pos], ctr_t, reduction="sum") / num_pos_avg
    return loss_cls, loss_reg * REG_WEIGHT, loss_ctr


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #
def head_outputs(num_images, num_anchors=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(math.ceil(HW[0] / s), math.ceil(HW[1] / s)) for s in (8, 16, 32, 64, 128)]
    box_cls = [torch.randn(num_images, num_anchors * NUM_CLASSES, h, w, generator=g) - 2 for h, w in shapes]
    box_reg = [0.5 * torch.randn(num_images, num_anchors * 4, h, w, generator=g) for h, w in shapes]
    ctr = [torch.randn(num_images, num_anchors, h, w, generator=g) for h, w in shapes]
    for t in box_cls + box_reg + ctr:
        t.requires_grad_(True)
    return box_cls, box_reg, ctr


def boxlist(boxes, labels):
    t = BoxList(boxes, (HW[1], HW[0]))
    t.add_field("labels", labels)
    return t


def make_targets(kinds, seed=0):
    out = []
    for i, kind in enumerate(kinds):
        if kind == "empty":
            out.append(boxlist(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)))
        else:
            boxes, _ = random_boxes(kind, (HW[0] - 8, HW[1] - 8), min_size=6, max_size=120, seed=seed + i)
            labels = torch.randint(1, NUM_CLASSES + 1, (kind,), generator=torch.Generator().manual_seed(seed + i))
            out.append(boxlist(boxes, labels))
    return out


def loss_computation(positive_type="ATSS", regression_type="BOX", num_anchors=1):
    return ATSSLossComputation(
        SampleSelector(positive_type, topk=9, num_anchors_per_location=num_anchors),
        BoxCoder(regression_type), gamma=GAMMA, alpha=ALPHA, reg_loss_weight=REG_WEIGHT,
    )


def check_against_straightforward(positive_type, regression_type, kinds, num_anchors=1, seed=0):
    if num_anchors == 1:
        anchors = make_anchors(HW)
    else:
        anchors = make_anchors(HW, aspect_ratios=(0.5, 1.0, 2.0), scales_per_octave=3)
    inputs = head_outputs(len(kinds), num_anchors, seed=seed)
    targets = make_targets(kinds, seed=seed)
    ours = loss_computation(positive_type, regression_type, num_anchors)(*inputs, targets, anchors)
    expected = straightforward_loss(*inputs, targets, anchors, BoxCoder(regression_type), positive_type)
    for name, a, b in zip(("cls", "reg", "ctr"), ours, expected):
        assert a.dtype == torch.float32 and a.dim() == 0
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-7, msg=lambda m: f"loss_{name}: {m}")
    leaves = [t for group in inputs for t in group]
    grads = torch.autograd.grad(sum(ours), leaves)
    expected_grads = torch.autograd.grad(sum(expected), leaves, allow_unused=True)
    for g, e in zip(grads, expected_grads):
        e = torch.zeros_like(g) if e is None else e
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    return ours


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("positive_type", ["ATSS", "SSC", "IoU", "TOPK"])
@pytest.mark.parametrize("regression_type", ["BOX", "POINT"])
def test_matches_straightforward_version(positive_type, regression_type):
    losses = check_against_straightforward(positive_type, regression_type, [6, 3])
    assert all(torch.isfinite(l) for l in losses) and losses[1] > 0


def test_several_anchors_per_location_and_an_empty_image():
    check_against_straightforward("ATSS", "BOX", [5, "empty"], num_anchors=9, seed=3)


def test_no_positives_anywhere():
    anchors = make_anchors(HW)
    inputs = head_outputs(2)
    targets = make_targets(["empty", "empty"])
    loss_cls, loss_reg, loss_ctr = loss_computation()(*inputs, targets, anchors)
    expected = straightforward_loss(*inputs, targets, anchors, BoxCoder("BOX"))
    torch.testing.assert_close(loss_cls.double(), expected[0], rtol=2e-5, atol=0)
    assert loss_reg.item() == 0 and loss_ctr.item() == 0
    assert loss_reg.requires_grad and loss_ctr.requires_grad
    leaves = [t for group in inputs for t in group]
    grads = torch.autograd.grad(loss_cls + loss_reg + loss_ctr, leaves)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(not g.any() for g in grads[len(inputs[0]):])  # regression and centerness: zero


@pytest.mark.parametrize("factor", [2.0, 3.0])
def test_normalisers_are_summed_over_workers(monkeypatch, factor):
    """Two workers whose sums are ``factor`` times the local ones."""
    monkeypatch.setattr(loss_module, "get_world_size", lambda: 2)
    monkeypatch.setattr(loss_module, "all_reduce_sum", lambda t: t * factor)
    anchors = make_anchors(HW)
    inputs = head_outputs(2, seed=1)
    targets = make_targets([4, 2], seed=1)
    ours = loss_computation()(*inputs, targets, anchors)
    expected = straightforward_loss(*inputs, targets, anchors, BoxCoder("BOX"), workers=2, reduce_factor=factor)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-7)


def test_no_host_sync_in_the_step(monkeypatch):
    """No .item()/.tolist() on tensors while computing the loss."""
    anchors = make_anchors(HW)
    inputs = head_outputs(2, seed=2)
    targets = make_targets([3, 4], seed=2)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in the loss step")

    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", forbidden)
    monkeypatch.setattr(torch.Tensor, "__bool__", forbidden)
    loss_computation()(*inputs, targets, anchors)


def test_flatten_order_matches_anchor_order():
    """Row i of the flattened outputs belongs to anchor i: level, y, x, anchor."""
    N, A, C = 2, 3, 4
    shapes = [(3, 5), (2, 3)]
    box_cls, box_reg, ctr = [], [], []
    offset = 0
    for H, W in shapes:
        # value = ((n * R + anchor index) * 10 + k)
        y, x, a = torch.meshgrid(torch.arange(H), torch.arange(W), torch.arange(A), indexing="ij")
        index = offset + (y * W + x) * A + a  # [H, W, A]
        offset += H * W * A
        index = index.permute(2, 0, 1)  # [A, H, W]
        box_cls.append(torch.stack([torch.stack([index * 10 + k for k in range(C)], 1) for _ in range(N)])
                       .reshape(N, A * C, H, W))
        box_reg.append(torch.stack([torch.stack([index * 10 + k for k in range(4)], 1) for _ in range(N)])
                       .reshape(N, A * 4, H, W))
        ctr.append(torch.stack([index * 10 for _ in range(N)]))
    cls_flat, reg_flat, ctr_flat = flatten_head_outputs(box_cls, box_reg, ctr)
    rows = torch.arange(offset)
    assert torch.equal(cls_flat[1], rows[:, None] * 10 + torch.arange(C))
    assert torch.equal(reg_flat[0], rows[:, None] * 10 + torch.arange(4))
    assert torch.equal(ctr_flat[1], rows * 10)
    H, W = shapes[0]
    assert torch.equal(permute_and_flatten(box_cls[0], N, A, C, H, W), cls_flat[:, : H * W * A])


def test_make_atss_loss_evaluator_reads_the_config():
    cfg = default_cfg.clone()
    cfg.defrost()
    cfg.MODEL.ATSS.POSITIVE_TYPE = "TOPK"
    cfg.MODEL.ATSS.TOPK = 5
    cfg.MODEL.ATSS.REG_LOSS_WEIGHT = 1.5
    loss = make_atss_loss_evaluator(cfg, make_box_coder(cfg))
    assert loss.sample_selector.positive_type == "TOPK" and loss.sample_selector.topk == 5
    assert loss.reg_loss_weight == 1.5

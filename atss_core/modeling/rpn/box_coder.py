"""Box regression targets of ATSS, ``MODEL.ATSS.REGRESSION_TYPE``:

BOX
    Faster R-CNN deltas from the anchor, with weights (10, 10, 5, 5) and the
    reference's inclusive-pixel widths (w = x2 - x1 + 1):
    dx = 10 (gx - ax) / aw, dy = 10 (gy - ay) / ah, dw = 5 log(gw / aw),
    dh = 5 log(gh / ah).
POINT
    Distances from the anchor centre to the four sides (l, t, r, b), in units of
    the anchor width (height) divided by ``ANCHOR_SIZES[0] / ANCHOR_STRIDES[0]``
    (8 in the paper's configs), i.e. in units of the level's stride.

All boxes are xyxy in input-image pixels: ``[..., 4]`` tensors, boxes and
anchors broadcast against each other (e.g. [N, R, 4] boxes of N images
with their [R, 4] anchors).
"""
import math

import torch

_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Largest dw / dh allowed into exp() when decoding.
_BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _log(x):
    """``torch.log(x)`` correctly rounded to ``x.dtype`` on every device: computed
    in float64 and rounded once. The float32 ``torch.log`` is within 1-2 ulp but
    its last bit depends on the CPU's code path (it differed between an Intel and
    an AMD CPU); rounding a float64 log gives the same targets everywhere, those
    of the reference's fixtures (``tests/test_sample_selection.py``)."""
    return torch.log(x.double()).to(x.dtype)


def _centre_size(boxes):
    widths = boxes[..., 2] - boxes[..., 0] + 1
    heights = boxes[..., 3] - boxes[..., 1] + 1
    ctr_x = (boxes[..., 2] + boxes[..., 0]) / 2
    ctr_y = (boxes[..., 3] + boxes[..., 1]) / 2
    return widths, heights, ctr_x, ctr_y


class BoxCoder:
    """Encodes xyxy boxes as regression targets relative to anchors and back."""

    def __init__(self, regression_type="BOX", anchor_size=64.0, anchor_stride=8.0, *,
                 weights=_BOX_WEIGHTS, bbox_xform_clip=_BBOX_XFORM_CLIP):
        """``weights`` (wx, wy, ww, wh) and ``bbox_xform_clip`` (largest dw / dh
        into ``exp``) of the BOX type, as maskrcnn-benchmark's
        ``BoxCoder(weights=..., bbox_xform_clip=...)``; ATSS uses the defaults."""
        if regression_type not in ("BOX", "POINT"):
            raise ValueError(f"regression_type must be BOX or POINT, got {regression_type!r}")
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4 or min(weights) <= 0:
            raise ValueError(f"weights must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}")
        self.regression_type = regression_type
        self.weights = weights
        self.bbox_xform_clip = float(bbox_xform_clip)
        # POINT: anchor size in units of the stride.
        self.point_norm = float(anchor_size) / float(anchor_stride)

    def encode(self, gt_boxes, anchors):
        """Targets [..., 4] that turn ``anchors`` [..., 4] into ``gt_boxes`` [..., 4]."""
        aw, ah, ax, ay = _centre_size(anchors)
        if self.regression_type == "POINT":
            n = self.point_norm
            return torch.stack(
                (
                    n * (ax - gt_boxes[..., 0]) / aw,
                    n * (ay - gt_boxes[..., 1]) / ah,
                    n * (gt_boxes[..., 2] - ax) / aw,
                    n * (gt_boxes[..., 3] - ay) / ah,
                ),
                dim=-1,
            )
        gw, gh, gx, gy = _centre_size(gt_boxes)
        wx, wy, ww, wh = self.weights
        return torch.stack(
            (
                wx * (gx - ax) / aw,
                wy * (gy - ay) / ah,
                ww * _log(gw / aw),
                wh * _log(gh / ah),
            ),
            dim=-1,
        )

    def decode(self, preds, anchors):
        """xyxy boxes [..., 4] from regression outputs ``preds`` [..., 4] at ``anchors`` [..., 4]."""
        anchors = anchors.to(preds.dtype)
        aw, ah, ax, ay = _centre_size(anchors)
        if self.regression_type == "POINT":
            n = self.point_norm
            return torch.stack(
                (
                    ax - preds[..., 0] / n * aw,
                    ay - preds[..., 1] / n * ah,
                    ax + preds[..., 2] / n * aw,
                    ay + preds[..., 3] / n * ah,
                ),
                dim=-1,
            )
        wx, wy, ww, wh = self.weights
        dx = preds[..., 0] / wx
        dy = preds[..., 1] / wy
        dw = (preds[..., 2] / ww).clamp(max=self.bbox_xform_clip)
        dh = (preds[..., 3] / wh).clamp(max=self.bbox_xform_clip)
        ctr_x = dx * aw + ax
        ctr_y = dy * ah + ay
        half_w = 0.5 * (torch.exp(dw) * aw - 1)
        half_h = 0.5 * (torch.exp(dh) * ah - 1)
        return torch.stack((ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h), dim=-1)


def make_box_coder(cfg):
    atss = cfg.MODEL.ATSS
    return BoxCoder(atss.REGRESSION_TYPE, atss.ANCHOR_SIZES[0], atss.ANCHOR_STRIDES[0])

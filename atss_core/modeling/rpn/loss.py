"""Training loss of the ATSS head.

For a batch of N images with ``R`` anchors each (all levels), the targets come
from :mod:`.sample_selection` (labels ``0`` negative, ``-1`` ignored,
``1..C`` positive; regression targets ``box_coder.encode(matched_boxes,
anchors)``) and the three terms are, with ``P`` the positives of all workers
divided by the number of workers (at least 1):

``loss_cls``
    sigmoid focal loss summed over all non-ignored anchors and classes, / P.
``loss_reg``
    GIoU loss of the decoded predicted box against the decoded target box of
    each positive, weighted by its centerness target, / (sum of the
    centerness targets of all workers / number of workers), times
    ``REG_LOSS_WEIGHT``.
``loss_centerness``
    binary cross-entropy (with logits) of the predicted centerness against
    the centerness target of each positive, summed, / P.

The centerness target of a positive is
``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``, (l, t, r, b) the
distances from the anchor centre to the sides of the (decoded) target box.

Values are the reference implementation's, computed in float32 whatever
the dtype of the head outputs. The step has no host
synchronisation: normalisers stay tensors and positives are selected with
masks (non-positives contribute exact zeros), so when there are no positives
anywhere ``loss_reg`` and ``loss_centerness`` are 0, still attached to the
graph.

Head output layout: per level ``box_cls`` [N, A*C, H, W], ``box_regression``
[N, A*4, H, W], ``centerness`` [N, A, H, W]; :func:`permute_and_flatten`
turns each into [N, H*W*A, K] (anchor index ``(y * W + x) * A + a``, the
order of :class:`AnchorGenerator`), and levels are concatenated.
"""
import torch
from torch.nn import functional as F

from atss_core.layers.sigmoid_focal_loss import SigmoidFocalLoss
from atss_core.utils.comm import all_reduce_sum, get_world_size

from .sample_selection import make_sample_selector
from .utils import permute_and_flatten

__all__ = [
    "ATSSLossComputation",
    "centerness_targets",
    "flatten_head_outputs",
    "giou_loss",
    "make_atss_loss_evaluator",
    "permute_and_flatten",
]


def flatten_head_outputs(box_cls, box_regression, centerness):
    """Lists over levels of head outputs -> ([N, R, C], [N, R, 4], [N, R]).

    R = sum over levels of H_l * W_l * A: level by level, then location
    (row-major y, x), then anchor -- the order of the anchors.
    """
    cls_flat, reg_flat, ctr_flat = [], [], []
    for cls, reg, ctr in zip(box_cls, box_regression, centerness):
        N, A, H, W = ctr.shape
        cls_flat.append(permute_and_flatten(cls, N, A, cls.shape[1] // A, H, W))
        reg_flat.append(permute_and_flatten(reg, N, A, 4, H, W))
        ctr_flat.append(permute_and_flatten(ctr, N, A, 1, H, W))
    return torch.cat(cls_flat, dim=1), torch.cat(reg_flat, dim=1), torch.cat(ctr_flat, dim=1).squeeze(2)


def centerness_targets(boxes, anchors):
    """Centerness [M] of the centres of ``anchors`` [M, 4] in xyxy ``boxes`` [M, 4].

    Only meaningful for centres inside the boxes (positives); other rows may
    be NaN and must be masked by the caller.
    """
    cx = (anchors[:, 2] + anchors[:, 0]) / 2
    cy = (anchors[:, 3] + anchors[:, 1]) / 2
    l, t = cx - boxes[:, 0], cy - boxes[:, 1]
    r, b = boxes[:, 2] - cx, boxes[:, 3] - cy
    return torch.sqrt(
        (torch.minimum(l, r) / torch.maximum(l, r)) * (torch.minimum(t, b) / torch.maximum(t, b))
    )


def giou_loss(pred_boxes, target_boxes):
    """Per-row GIoU loss ``1 - GIoU`` [M] of xyxy ``pred_boxes`` and
    ``target_boxes`` [M, 4], as the reference computes it: the predicted box's
    x2/y2 are raised to at least x1/y1, areas have no +1, the intersection
    counts only where it is not empty, and 1e-7 is added to the union and to
    the enclosing area."""
    px1, py1 = pred_boxes[:, 0], pred_boxes[:, 1]
    px2 = torch.maximum(px1, pred_boxes[:, 2])
    py2 = torch.maximum(py1, pred_boxes[:, 3])
    tx1, ty1, tx2, ty2 = target_boxes.unbind(dim=1)
    pred_area = (px2 - px1) * (py2 - py1)
    target_area = (tx2 - tx1) * (ty2 - ty1)

    ix1, iy1 = torch.maximum(px1, tx1), torch.maximum(py1, ty1)
    ix2, iy2 = torch.minimum(px2, tx2), torch.minimum(py2, ty2)
    overlaps = (ix2 > ix1) & (iy2 > iy1)
    intersection = torch.where(overlaps, (ix2 - ix1) * (iy2 - iy1), torch.zeros_like(ix1))

    ex1, ey1 = torch.minimum(px1, tx1), torch.minimum(py1, ty1)
    ex2, ey2 = torch.maximum(px2, tx2), torch.maximum(py2, ty2)
    enclosing = (ex2 - ex1) * (ey2 - ey1) + 1e-7

    union = pred_area + target_area - intersection + 1e-7
    gious = intersection / union - (enclosing - union) / enclosing
    return 1 - gious


class ATSSLossComputation:
    """``loss(box_cls, box_regression, centerness, targets, anchors)`` ->
    ``(loss_cls, loss_reg, loss_centerness)`` scalars (see the module docstring).

    Args:
        sample_selector (SampleSelector): assigns anchors to objects.
        box_coder (BoxCoder): regression targets and box decoding.
        gamma, alpha (float): focal loss parameters.
        reg_loss_weight (float): factor of ``loss_reg``.

    Call arguments: ``box_cls``, ``box_regression``, ``centerness``: lists over
    levels of the head outputs; ``targets``: list of N BoxLists (xyxy, field
    ``labels`` int64 in 1..C); ``anchors``: list over levels of [A_l, 4]
    anchors, the same for every image.
    """

    def __init__(self, sample_selector, box_coder, gamma=2.0, alpha=0.25, reg_loss_weight=2.0):
        self.sample_selector = sample_selector
        self.box_coder = box_coder
        self.cls_loss_func = SigmoidFocalLoss(gamma, alpha)
        self.reg_loss_weight = float(reg_loss_weight)

    def prepare_targets(self, targets, anchors, grid_sizes=None):
        """Labels [N, R] (int64; 0, -1 or 1..C) and regression targets [N, R, 4].
        ``grid_sizes``: the (H_l, W_l) of each level's feature map (see
        :class:`SampleSelector`)."""
        labels, matched_boxes = self.sample_selector(anchors, targets, grid_sizes)
        return labels, self.box_coder.encode(matched_boxes, torch.cat(anchors, dim=0))

    def __call__(self, box_cls, box_regression, centerness, targets, anchors):
        grid_sizes = [tuple(level.shape[-2:]) for level in box_cls]
        labels, reg_targets = self.prepare_targets(targets, anchors, grid_sizes)
        cls_flat, reg_flat, ctr_flat = flatten_head_outputs(box_cls, box_regression, centerness)
        num_classes = cls_flat.shape[-1]
        num_images = labels.shape[0]

        # Rows image-major like the labels; computed in float32 whatever the
        # head's dtype (boxes of ~1000 px need float32 precision).
        labels = labels.reshape(-1)
        cls_flat = cls_flat.reshape(-1, num_classes).float()
        reg_flat = reg_flat.reshape(-1, 4).float()
        ctr_flat = ctr_flat.reshape(-1).float()
        flat_anchors = torch.cat(anchors, dim=0).float().repeat(num_images, 1)
        is_pos = labels > 0

        world_size = get_world_size()
        num_pos = all_reduce_sum(is_pos.sum().to(torch.float32))
        num_pos_avg = torch.clamp(num_pos / world_size, min=1.0)

        loss_cls = self.cls_loss_func(cls_flat, labels) / num_pos_avg

        # Non-positive rows get a zero regression target so that every row is
        # finite (their targets may come from degenerate boxes); their weights
        # are exactly zero, and so are their gradients.
        zero = reg_flat.new_zeros(())
        reg_targets = torch.where(is_pos[:, None], reg_targets.reshape(-1, 4).float(), zero)
        target_boxes = self.box_coder.decode(reg_targets, flat_anchors)
        ctr_targets = torch.where(is_pos, centerness_targets(target_boxes, flat_anchors), zero)
        ctr_sum_avg = all_reduce_sum(ctr_targets.sum()) / world_size

        pred_boxes = self.box_coder.decode(reg_flat, flat_anchors)
        reg_sum = (giou_loss(pred_boxes, target_boxes) * ctr_targets).sum()
        # No positive anywhere: the sum is 0 (still attached to the graph).
        loss_reg = reg_sum / torch.where(ctr_sum_avg > 0, ctr_sum_avg, torch.ones_like(ctr_sum_avg))

        loss_centerness = F.binary_cross_entropy_with_logits(
            ctr_flat, ctr_targets, weight=is_pos.to(ctr_flat.dtype), reduction="sum"
        ) / num_pos_avg
        return loss_cls, loss_reg * self.reg_loss_weight, loss_centerness


def make_atss_loss_evaluator(cfg, box_coder):
    """ATSSLossComputation from ``cfg.MODEL.ATSS`` and the model's box coder."""
    atss = cfg.MODEL.ATSS
    return ATSSLossComputation(
        make_sample_selector(cfg),
        box_coder,
        gamma=atss.LOSS_GAMMA,
        alpha=atss.LOSS_ALPHA,
        reg_loss_weight=atss.REG_LOSS_WEIGHT,
    )

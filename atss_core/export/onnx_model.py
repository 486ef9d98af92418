"""The whole ATSS detector as one export-friendly module (ONNX, ``torch.export``).

:class:`ExportableATSS` wraps a built detector (its backbone, head, anchor
generator and box coder are used as they are, not copied in code) and
re-implements only the steps of inference whose eager form cannot be exported:
preprocessing, padding and the post-processor.

Contract of ``ExportableATSS.forward(image)`` (and of the exported graph):

* input ``image``: ``uint8`` ``[1, H, W, 3]``, BGR (as ``cv2.imread`` gives),
  **already resized by the reference rule** (shorter side ``INPUT.MIN_SIZE_TEST``,
  longer side at most ``INPUT.MAX_SIZE_TEST``, Pillow bilinear:
  :func:`atss_core.data.transforms.transforms.resize_image`); H and W are
  dynamic, the batch is 1;
* inside: cast to float, ``INPUT.PIXEL_MEAN`` / ``PIXEL_STD`` normalisation
  (``TO_BGR255`` False: to RGB in 0..1 first), zero padding at the bottom/right
  to a multiple of ``DATALOADER.SIZE_DIVISIBILITY``, backbone + FPN, head,
  anchors for the input's size, box decoding, score threshold
  ``MODEL.ATSS.INFERENCE_TH``, the ``PRE_NMS_TOP_N`` best per level, clipping to
  the image, class-wise NMS (``MODEL.ATSS.NMS_TH``, the ONNX
  ``NonMaxSuppression`` operator) and the ``TEST.DETECTIONS_PER_IMG`` best;
* outputs ``boxes`` float32 ``[K, 4]`` (x1, y1, x2, y2 in the pixels of the
  input image, inclusive-pixel convention of this repository), ``scores``
  float32 ``[K]`` (sqrt(class probability x centerness)) and ``labels`` int64
  ``[K]`` (contiguous 1..NUM_CLASSES-1), sorted by descending score.

The detections equal those of ``model(images)`` as a set (same boxes, scores,
labels; the order differs: the eager model returns them in index order, this
one by score). Differences possible only at exact ties: a box whose IoU with a
better box of its class is within float rounding of ``NMS_TH``, scores tied at
the ``PRE_NMS_TOP_N`` or ``DETECTIONS_PER_IMG`` boundary (the eager
post-processor keeps every box tied with the last one, this one exactly
``DETECTIONS_PER_IMG``).

NMS: ONNX ``NonMaxSuppression`` suppresses a box whose IoU with a kept box is
``> iou_threshold`` (as this repository's kernels), but computes areas as
``(x2 - x1) * (y2 - y1)``; the boxes are widened by one pixel (x2 + 1, y2 + 1)
before it, so that its IoU is the +1 IoU of this repository. Class-wise NMS uses
the operator's class dimension (scores ``[1, C, M]``, a box scoring only in its
own class), so boxes are not shifted per class and keep their precision.

Deformable convolutions (DCNv2 configs) are exported as the ONNX ``DeformConv``
operator (opset >= 19), which ONNX Runtime runs on the CPU.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from atss_core.layers import _ext
from atss_core.layers.deform_conv import DeformConv, ModulatedDeformConv, modulated_deform_conv
from atss_core.layers.nms import ml_nms
from atss_core.modeling.rpn.utils import permute_and_flatten

__all__ = [
    "DEFAULT_OPSET",
    "DCN_MIN_OPSET",
    "ExportError",
    "ExportableATSS",
    "has_deformable_conv",
    "min_opset",
]

# Opsets the TorchScript-based exporter writes: NonMaxSuppression needs 11,
# DeformConv 19, and that exporter stops at 20.
DEFAULT_OPSET = 17
DCN_MIN_OPSET = 19
MIN_OPSET = 11
MAX_OPSET = 20
# Score given to non-candidates: below every real score (>= 0) and below the
# NMS operator's score threshold, so NMS never keeps them.
_INVALID = -1.0
_NMS_SCORE_THRESHOLD = -0.5


class ExportError(ValueError):
    """A config or model that cannot be exported as asked (message says why and what to do)."""


def has_deformable_conv(model):
    return any(isinstance(m, (ModulatedDeformConv, DeformConv)) for m in model.modules())


def min_opset(model):
    """Lowest ONNX opset that can hold ``model``."""
    return DCN_MIN_OPSET if has_deformable_conv(model) else MIN_OPSET


# --------------------------------------------------------------------- ops
class _ClasswiseNMS(torch.autograd.Function):
    """Class-wise NMS with the repository's conventions, as the ONNX
    ``NonMaxSuppression`` operator when exported.

    ``boxes`` [M, 4] xyxy (+1 convention), ``scores`` [M] (boxes scoring
    ``<= score_threshold`` are not kept), ``labels`` [M] in 1..num_classes;
    returns the indices of the kept boxes [S] (in no particular order). Eager:
    the repository's ``ml_nms``. ONNX: the operator on the boxes widened by one
    pixel (its IoU is then the +1 IoU) with scores [1, num_classes, M], each box
    scoring only in its own class (below the threshold elsewhere).
    """

    @staticmethod
    def forward(ctx, boxes, scores, labels, num_classes, iou_threshold, score_threshold):
        valid = scores > score_threshold
        if _ext.is_loaded():  # the op itself: torch.export keeps it as one node
            keep = torch.ops.atss.ml_nms(boxes.contiguous(), scores.contiguous(),
                                         torch.where(valid, labels, 0), iou_threshold)
        else:
            keep = ml_nms(boxes, scores, torch.where(valid, labels, 0), iou_threshold)
        return keep[valid[keep]]

    @staticmethod
    def symbolic(g, boxes, scores, labels, num_classes, iou_threshold, score_threshold):
        def const(value, dtype=torch.float32):
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        classes = const([[c] for c in range(1, num_classes + 1)], labels.type().dtype())
        in_class = g.op("Equal", g.op("Unsqueeze", labels, const([0], torch.int64)), classes)
        class_scores = g.op("Where", in_class, g.op("Unsqueeze", scores, const([0], torch.int64)),
                            const(score_threshold - 1.0))
        selected = g.op(
            "NonMaxSuppression",
            g.op("Unsqueeze", g.op("Add", boxes, const([0.0, 0.0, 1.0, 1.0])), const([0], torch.int64)),
            g.op("Unsqueeze", class_scores, const([0], torch.int64)),
            const([2 ** 31 - 1], torch.int64),
            const([iou_threshold]),
            const([score_threshold]),
            center_point_box_i=0,
        )
        return g.op("Gather", selected, const(2, torch.int64), axis_i=1)


class _DeformConvFn(torch.autograd.Function):
    """The repository's deformable convolution (``mask`` None: DCNv1), exported
    as ONNX ``DeformConv`` (opset 19): inputs X, W, offset, B, mask; the offset
    layout ((y, x) per kernel tap, per offset group) is the same."""

    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, stride, padding, dilation, groups, dg):
        if mask is None:
            n, c, ho, wo = offset.shape
            mask = offset.new_ones((n, c // 2, ho, wo))
        # Computed outside the ONNX tracer: the pure-PyTorch fallback (no compiled
        # kernels) would otherwise leave its own ops in the traced subgraph.
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return modulated_deform_conv(input, offset, mask, weight, bias, stride, padding, dilation,
                                         groups, dg)
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(g, input, offset, mask, weight, bias, stride, padding, dilation, groups, dg):
        kernel = weight.type().sizes()[-2:]
        if bias is None or (hasattr(bias, "node") and bias.node().mustBeNone()):
            bias = g.op("Constant", value_t=torch.zeros(weight.type().sizes()[0]))
        inputs = [input, weight, offset, bias]
        if mask is not None and not (hasattr(mask, "node") and mask.node().mustBeNone()):
            inputs.append(mask)
        return g.op(
            "DeformConv", *inputs,
            dilations_i=list(dilation), group_i=groups, kernel_shape_i=list(kernel),
            offset_group_i=dg, pads_i=[padding[0], padding[1], padding[0], padding[1]],
            strides_i=list(stride),
        )


class _ExportableDeformConv(nn.Module):
    """Stands in for a :class:`ModulatedDeformConv` / :class:`DeformConv` (same
    parameters, shared with it) in the exported copy of the model."""

    def __init__(self, conv):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups, self.deformable_groups = conv.groups, conv.deformable_groups

    def forward(self, input, offset, mask=None):
        return _DeformConvFn.apply(input, offset, mask, self.weight, self.bias, self.stride,
                                   self.padding, self.dilation, self.groups, self.deformable_groups)


def _with_exportable_deform_convs(module):
    """``module`` itself when it has no deformable convolution, else a copy whose
    deformable convolutions export as ONNX ``DeformConv`` (parameters shared)."""
    if not has_deformable_conv(module):
        return module
    module = copy.copy(module)
    module._modules = dict(module._modules)
    for name, child in module._modules.items():
        if isinstance(child, (ModulatedDeformConv, DeformConv)):
            module._modules[name] = _ExportableDeformConv(child)
        elif child is not None:
            module._modules[name] = _with_exportable_deform_convs(child)
    return module


def _topk_size(values, k):
    """``min(k, len(values))``, traced as a graph value when exporting (the
    input's size is dynamic)."""
    if torch.jit.is_tracing():
        n = torch._shape_as_tensor(values)[0].unsqueeze(0)
        return torch.min(torch.cat((torch.tensor([k], dtype=n.dtype), n)))
    return min(k, values.shape[0])


def _clamp(values, high):
    """``values`` clamped to [0, high]; ``high`` a number or a 0-dim tensor."""
    if isinstance(high, torch.Tensor):
        return values.clamp(min=0).minimum(high)
    return values.clamp(min=0, max=high)


# ------------------------------------------------------------------ module
class ExportableATSS(nn.Module):
    """``ExportableATSS(model, cfg)(image) -> (boxes, scores, labels)``; see the
    module docstring for the contract. ``model`` is a built (and loaded)
    :class:`~atss_core.modeling.detector.ATSSDetector`; its modules are shared,
    not copied (a model with deformable convolutions gets light copies of the
    containers that hold them)."""

    def __init__(self, model, cfg):
        super().__init__()
        rpn = model.rpn
        post = rpn.box_selector_test
        aug = cfg.TEST.BBOX_AUG
        if aug.ENABLED:
            raise ExportError(
                "TEST.BBOX_AUG.ENABLED is True: test-time augmentation is not exported (the graph "
                "runs the single-scale test); pass TEST.BBOX_AUG.ENABLED False"
            )
        if post.min_size > 0:
            raise ExportError(f"a post-processor min_size of {post.min_size} is not exported (ATSS uses 0)")
        self.backbone = _with_exportable_deform_convs(model.backbone)
        self.head = _with_exportable_deform_convs(rpn.head)
        self.anchor_generator = rpn.anchor_generator
        self.box_coder = post.box_coder
        self.pre_nms_thresh = float(post.pre_nms_thresh)
        self.pre_nms_top_n = int(post.pre_nms_top_n)
        self.nms_thresh = float(post.nms_thresh)
        self.detections_per_img = int(post.detections_per_img)
        self.size_divisibility = int(model.size_divisibility)
        self.num_classes = int(cfg.MODEL.ATSS.NUM_CLASSES) - 1
        self.num_anchors = len(cfg.MODEL.ATSS.ASPECT_RATIOS) * int(cfg.MODEL.ATSS.SCALES_PER_OCTAVE)
        self.to_bgr255 = bool(cfg.INPUT.TO_BGR255)
        for name, value in (("pixel_mean", cfg.INPUT.PIXEL_MEAN), ("pixel_std", cfg.INPUT.PIXEL_STD)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32).reshape(1, 3, 1, 1))

    def preprocess(self, image):
        """uint8 [1, H, W, 3] BGR -> normalised float [1, 3, H', W'] padded to SIZE_DIVISIBILITY."""
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        if not self.to_bgr255:
            x = x.flip(1) / 255.0
        x = (x - self.pixel_mean) / self.pixel_std
        d = self.size_divisibility
        if d > 0:
            h, w = x.shape[-2], x.shape[-1]
            x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
        return x

    def _level_candidates(self, cls, reg, ctr, anchors, h, w):
        """The PRE_NMS_TOP_N best (anchor, class) pairs of one level (fewer when
        the level has fewer): boxes [k, 4], scores [k] (-1 for pairs that
        are not candidates), labels [k]."""
        A, C = self.num_anchors, self.num_classes
        H, W = cls.shape[-2], cls.shape[-1]
        scores = permute_and_flatten(cls, 1, A, C, H, W).reshape(-1, C).sigmoid()
        reg = permute_and_flatten(reg, 1, A, 4, H, W).reshape(-1, 4)
        ctr = permute_and_flatten(ctr, 1, A, 1, H, W).reshape(-1, 1).sigmoid()
        combined = (scores * ctr).masked_fill(scores <= self.pre_nms_thresh, _INVALID).reshape(-1)
        top, index = combined.topk(_topk_size(combined, self.pre_nms_top_n))
        anchor_index = torch.div(index, C, rounding_mode="floor")
        labels = index - anchor_index * C + 1
        boxes = self.box_coder.decode(reg[anchor_index], anchors[anchor_index])
        x, y = _clamp(boxes[:, 0::2], w - 1), _clamp(boxes[:, 1::2], h - 1)
        boxes = torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)
        valid = top > _INVALID
        scores = torch.where(valid, top.clamp(min=0).sqrt(), torch.full_like(top, _INVALID))
        return boxes, scores, labels

    def postprocess(self, logits, bbox_reg, centerness, anchors, h, w):
        per_level = [
            self._level_candidates(c, r, t, a, h, w)
            for c, r, t, a in zip(logits, bbox_reg, centerness, anchors)
        ]
        boxes = torch.cat([p[0] for p in per_level])
        scores = torch.cat([p[1] for p in per_level])
        labels = torch.cat([p[2] for p in per_level])
        keep = _ClasswiseNMS.apply(boxes, scores, labels, self.num_classes, self.nms_thresh,
                                   _NMS_SCORE_THRESHOLD)
        if self.detections_per_img > 0:
            kept_scores = scores[keep]
            _, best = kept_scores.topk(_topk_size(kept_scores, self.detections_per_img))
            keep = keep[best]
        else:  # all of them, by descending score
            keep = keep[scores[keep].argsort(descending=True)]
        return boxes[keep], scores[keep], labels[keep]

    def forward(self, image):
        if torch.jit.is_tracing():  # ONNX: the size as a graph value
            shape = torch._shape_as_tensor(image).to(torch.float32)
            h, w = shape[1], shape[2]
        else:
            h, w = image.shape[1], image.shape[2]
        x = self.preprocess(image)
        features = self.backbone(x)
        logits, bbox_reg, centerness = self.head(features)
        anchors = self.anchor_generator(features)
        return self.postprocess(logits, bbox_reg, centerness, anchors, h, w)

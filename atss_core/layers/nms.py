"""Greedy non-maximum suppression, plain and class-wise (multi-label).

Conventions (those of the reference ATSS / maskrcnn-benchmark kernels):

- boxes are ``[N, 4]`` in ``(x1, y1, x2, y2)`` pixel coordinates, inclusive, so
  ``area = (x2 - x1 + 1) * (y2 - y1 + 1)`` and the intersection width is
  ``max(0, min(x2) - max(x1) + 1)`` (likewise the height);
- boxes are visited by descending score; a stable sort keeps ties in input order;
- a box is suppressed by a kept box when their IoU ``> iou_threshold``
  (strictly: the reference's detection path runs its CUDA kernel, which does
  this; a pair at exactly the threshold keeps both boxes);
- the result is an int64 tensor of the indices of the kept boxes, in
  ascending index order (as the reference's kernels return them; not by score).

The compiled kernels of ``atss_core._C`` are used when available for the
device; otherwise an equivalent pure-PyTorch implementation runs.
"""
import numpy as np
import torch

from atss_core.layers import _ext

__all__ = ["nms", "ml_nms"]

_NMS_DTYPES = (torch.float32, torch.float64)
# Rows of the IoU matrix computed at once by the fallback (bounds its memory).
_ROW_CHUNK = 1024


def _check(boxes, scores, labels, iou_threshold):
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.size(1) != 4:
        raise ValueError(f"boxes must be a [N, 4] tensor, got {_shape(boxes)}")
    if not boxes.is_floating_point():
        raise TypeError(f"boxes must be a floating point tensor, got {boxes.dtype}")
    if not isinstance(scores, torch.Tensor) or scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must be a [N] tensor with N={boxes.size(0)}, got {_shape(scores)}")
    if scores.device != boxes.device:
        raise ValueError(f"scores is on {scores.device} but boxes is on {boxes.device}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape != boxes.shape[:1]:
            raise ValueError(f"labels must be a [N] tensor with N={boxes.size(0)}, got {_shape(labels)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if labels.device != boxes.device:
            raise ValueError(f"labels is on {labels.device} but boxes is on {boxes.device}")
    if not isinstance(iou_threshold, (int, float)):
        raise TypeError(f"iou_threshold must be a number, got {type(iou_threshold).__name__}")


def _shape(x):
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _prepare(boxes, scores):
    """Common dtype for boxes and scores: float32 unless both are float64."""
    dtype = torch.promote_types(boxes.dtype, scores.dtype)
    if dtype not in _NMS_DTYPES:
        dtype = torch.float32
    return boxes.detach().to(dtype).contiguous(), scores.detach().to(dtype).contiguous()


def nms(boxes, scores, iou_threshold):
    """Greedy NMS.

    Args:
        boxes (Tensor[N, 4]): xyxy boxes, +1 width convention.
        scores (Tensor[N]): one score per box.
        iou_threshold (float): suppress boxes whose IoU with a kept box is ``>`` this.

    Returns:
        LongTensor[K]: indices of the kept boxes, in ascending order.
    """
    _check(boxes, scores, None, iou_threshold)
    return _dispatch("nms", boxes, scores, None, float(iou_threshold))


def ml_nms(boxes, scores, labels, iou_threshold):
    """Class-wise greedy NMS: a box only suppresses boxes with the same label.

    Args:
        boxes (Tensor[N, 4]): xyxy boxes, +1 width convention.
        scores (Tensor[N]): one score per box.
        labels (Tensor[N], integer): class of each box.
        iou_threshold (float): suppression threshold (IoU ``>``).

    Returns:
        LongTensor[K]: indices of the kept boxes, in ascending order.
    """
    _check(boxes, scores, labels, iou_threshold)
    return _dispatch("ml_nms", boxes, scores, labels, float(iou_threshold))


def _dispatch(name, boxes, scores, labels, iou_threshold):
    if boxes.size(0) == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes, scores = _prepare(boxes, scores)
    if labels is not None:
        labels = labels.detach().to(torch.int64).contiguous()
    if _ext.has_kernel(boxes.device, boxes.dtype, _NMS_DTYPES, _NMS_DTYPES):
        if labels is None:
            return _ext.ops().nms(boxes, scores, iou_threshold)
        return _ext.ops().ml_nms(boxes, scores, labels, iou_threshold)
    _ext.warn_fallback(name, boxes.device)
    return _nms_torch(boxes, scores, labels, iou_threshold)


def _suppression_rows(boxes, labels, start, stop, iou_threshold):
    """Bool matrix [stop - start, N - start]: entry (i, j) says box start + i suppresses
    box start + j (only j > i can be set)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    r, c = slice(start, stop), slice(start, None)
    w = torch.minimum(x2[r, None], x2[c]).sub_(torch.maximum(x1[r, None], x1[c])).add_(1).clamp_(min=0)
    h = torch.minimum(y2[r, None], y2[c]).sub_(torch.maximum(y1[r, None], y1[c])).add_(1).clamp_(min=0)
    inter = w.mul_(h)
    union = (area[r, None] + area[c]).sub_(inter)
    sup = inter.div_(union) > iou_threshold
    if labels is not None:
        sup &= labels[r, None] == labels[c]
    return sup.triu_(diagonal=1)


def _nms_torch(boxes, scores, labels, iou_threshold):
    """Pure-PyTorch NMS: suppression matrix with tensor ops (in row chunks), greedy pass in numpy."""
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    if labels is not None:
        labels = labels[order]
    n = boxes.size(0)
    removed = np.zeros(n, dtype=bool)
    keep = []
    for start in range(0, n, _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, n)
        sup = _suppression_rows(boxes, labels, start, stop, iou_threshold).cpu().numpy()
        for i in range(start, stop):
            if not removed[i]:
                keep.append(i)
                removed[i:] |= sup[i - start, i - start:]
    keep = torch.tensor(keep, dtype=torch.int64, device=boxes.device)
    return order[keep].sort().values



def _register_compiled():
    """Fake tensor rules of the compiled ops (data-dependent output length) for torch.compile."""

    def fake(boxes, *args):
        n = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((n,), dtype=torch.int64)

    torch.library.register_fake("atss::nms", fake)
    torch.library.register_fake("atss::ml_nms", fake)


if _ext.is_loaded():
    _register_compiled()

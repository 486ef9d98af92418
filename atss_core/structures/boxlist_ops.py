"""Operations on :class:`BoxList` (all with the reference's +1 box convention)."""
import torch

from .bounding_box import BoxList


def box_area(boxes):
    """Areas [...] of xyxy ``boxes`` [..., 4] with the +1 convention."""
    return (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)


def paired_box_iou(boxes1, boxes2):
    """IoU of xyxy boxes [..., 4] with the boxes [..., 4] they broadcast
    against (+1 convention): ``paired_box_iou(a[:, None], b[None])`` is
    :func:`box_iou`, ``paired_box_iou(a, b)`` the IoU of ``a[i]`` with ``b[i]``."""
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(boxes1) + box_area(boxes2) - inter)


def box_iou(boxes1, boxes2):
    """Pairwise IoU [N, M] of xyxy boxes [N, 4] and [M, 4] (+1 convention)."""
    return paired_box_iou(boxes1[:, None, :], boxes2[None, :, :])


def boxlist_iou(boxlist1, boxlist2):
    """IoU [N, M] between the boxes of two BoxLists of the same image."""
    if boxlist1.size != boxlist2.size:
        raise ValueError(f"boxlists must be of the same image, got {boxlist1} and {boxlist2}")
    return box_iou(boxlist1.convert("xyxy").bbox, boxlist2.convert("xyxy").bbox)


def cat_boxlist(bboxes):
    """Concatenate BoxLists of the same image size, mode and fields."""
    if not bboxes:
        raise ValueError("cat_boxlist needs at least one BoxList")
    size, mode = bboxes[0].size, bboxes[0].mode
    fields = set(bboxes[0].fields())
    for b in bboxes:
        if b.size != size or b.mode != mode or set(b.fields()) != fields:
            raise ValueError("cat_boxlist needs BoxLists of one image size, mode and field set")
    out = BoxList(torch.cat([b.bbox for b in bboxes], dim=0), size, mode)
    for field in bboxes[0].fields():
        out.add_field(field, torch.cat([b.get_field(field) for b in bboxes], dim=0))
    return out


def boxlist_nms(boxlist, nms_thresh, max_proposals=-1, score_field="scores"):
    """Class-agnostic NMS of a BoxList by its ``score_field``."""
    from ..layers.nms import nms

    if nms_thresh <= 0:
        return boxlist
    mode = boxlist.mode
    boxlist = boxlist.convert("xyxy")
    keep = nms(boxlist.bbox, boxlist.get_field(score_field), nms_thresh)
    if max_proposals > 0:
        keep = keep[:max_proposals]
    return boxlist[keep].convert(mode)


def boxlist_ml_nms(boxlist, nms_thresh, max_proposals=-1, score_field="scores", label_field="labels"):
    """Class-wise NMS: a box only suppresses boxes of its own label."""
    from ..layers.nms import ml_nms

    if nms_thresh <= 0:
        return boxlist
    mode = boxlist.mode
    boxlist = boxlist.convert("xyxy")
    keep = ml_nms(
        boxlist.bbox, boxlist.get_field(score_field), boxlist.get_field(label_field), nms_thresh
    )
    if max_proposals > 0:
        keep = keep[:max_proposals]
    return boxlist[keep].convert(mode)


def remove_small_boxes(boxlist, min_size):
    """Keep boxes whose xywh width and height are both >= ``min_size``."""
    wh = boxlist.convert("xywh").bbox[:, 2:]
    keep = (wh[:, 0] >= min_size) & (wh[:, 1] >= min_size)
    return boxlist[keep]

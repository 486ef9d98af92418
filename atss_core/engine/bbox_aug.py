"""Test-time augmentation (``TEST.BBOX_AUG.*``), merged as the reference ATSS.

The model runs several *passes* over the original images, each resized (the
reference's size rule, :func:`atss_core.data.transforms.get_size`) and
optionally mirrored:

1. the test scale: shorter side ``INPUT.MIN_SIZE_TEST``, longer side at most
   ``INPUT.MAX_SIZE_TEST`` (the plain test input);
2. with ``H_FLIP``: the test scale, mirrored left-right;
3. for each ``s`` in ``SCALES``: shorter side ``s``, longer side at most
   ``MAX_SIZE`` (with ``VOTE``, a scale below ``INPUT.MIN_SIZE_TEST`` keeps
   ``INPUT.MAX_SIZE_TEST`` instead, as the reference does), and with
   ``SCALE_H_FLIP`` the same mirrored. With ``SCALE_RANGES`` ([lo, hi] per
   scale) a scale pass keeps only boxes with ``lo^2 < area < hi^2``, the area
   measured in that pass's pixels with the +1 convention.

Boxes of mirrored passes are mirrored back, every pass is rescaled to the
pixels of pass 1, and the union is merged per image:

* ``VOTE False``: the model returns each pass's candidates without NMS (its
  post-processor's ``apply_nms`` is off when ``TEST.BBOX_AUG.ENABLED`` and not
  ``VOTE``); class-wise NMS at ``MODEL.ATSS.NMS_TH`` over the union, then the
  ``TEST.DETECTIONS_PER_IMG`` best (ties at the cut kept, as the model does).
* ``VOTE True``: each pass is NMSed by the model as usual; per class, box
  voting (:func:`bbox_vote`, ``MERGE_TYPE "vote"``) or soft voting
  (:func:`soft_bbox_vote`, ``"soft-vote"``) at IoU ``VOTE_TH``; soft voting
  keeps decayed boxes scoring at least ``MODEL.ATSS.INFERENCE_TH``. Then the
  ``MODEL.ATSS.PRE_NMS_TOP_N`` best detections per image, as the reference
  (which therefore keeps up to 1000 detections per image with voting).

Output: one BoxList per image, xyxy in the pixels of pass 1 (the resized test
image, ``size`` its (w, h)) with ``scores`` and ``labels`` (contiguous 1..C),
as ``model(images)`` returns without augmentation.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np
import torch

from atss_core.config import validate_config
from atss_core.data.transforms import ToTensor, build_normalize, resize_image
from atss_core.structures.bounding_box import FLIP_LEFT_RIGHT, BoxList
from atss_core.structures.boxlist_ops import box_area, box_iou, boxlist_ml_nms, cat_boxlist
from atss_core.structures.image_list import to_image_list


@dataclass(frozen=True)
class AugPass:
    """One model pass: shorter side ``min_size``, longer side at most
    ``max_size``, mirrored when ``hflip``; ``size_range`` (lo, hi) keeps only
    boxes with lo^2 < area < hi^2 (None: all)."""

    min_size: int
    max_size: int
    hflip: bool = False
    size_range: Optional[Tuple[float, float]] = None


def build_passes(cfg):
    """The passes of ``cfg.TEST.BBOX_AUG`` (see the module docstring), in order."""
    validate_config(cfg)  # SCALES, SCALE_RANGES, MERGE_TYPE, VOTE_TH
    aug = cfg.TEST.BBOX_AUG
    ranges = [tuple(r) for r in aug.SCALE_RANGES]
    test_size, test_max = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    passes = [AugPass(test_size, test_max)]
    if aug.H_FLIP:
        passes.append(AugPass(test_size, test_max, hflip=True))
    for i, scale in enumerate(aug.SCALES):
        max_size = test_max if aug.VOTE and scale < test_size else aug.MAX_SIZE
        size_range = ranges[i] if ranges else None
        passes.append(AugPass(scale, max_size, size_range=size_range))
        if aug.SCALE_H_FLIP:
            passes.append(AugPass(scale, max_size, hflip=True, size_range=size_range))
    return passes


# --------------------------------------------------------------------------- #
# Merging
# --------------------------------------------------------------------------- #
def remove_boxes_outside_range(boxlist, lo, hi):
    """Boxes of ``boxlist`` with ``lo^2 < area < hi^2`` (area with the +1
    convention, in the boxlist's pixels)."""
    area = box_area(boxlist.convert("xyxy").bbox)
    keep = (area > lo * lo) & (area < hi * hi)
    return boxlist[keep]


def keep_top_detections(boxlist, k):
    """The detections scoring at least the k-th best score (ties at the cut
    kept); all of them when there are at most ``k`` or ``k <= 0``."""
    n = len(boxlist)
    if n <= k or k <= 0:
        return boxlist
    scores = boxlist.get_field("scores")
    threshold, _ = torch.kthvalue(scores.cpu(), n - k + 1)
    return boxlist[scores >= threshold.to(scores.device)]


def _vote_clusters(boxes, scores, vote_th):
    """Greedy clustering of score-sorted boxes.

    Visiting boxes by descending score, each box not yet taken starts a cluster
    with every untaken box whose IoU with it is ``>= vote_th`` (itself
    included). Returns (order [N], cluster id per sorted box [N], IoU of each
    sorted box with its cluster's first box [N])."""
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    overlap = box_iou(sorted_boxes, sorted_boxes).numpy()
    close = overlap >= vote_th
    n = len(order)
    cluster = np.full(n, -1, dtype=np.int64)
    iou_with_top = np.zeros(n, dtype=np.float32)
    num_clusters = 0
    for i in range(n):
        if cluster[i] >= 0:
            continue
        members = close[i] & (cluster < 0)
        members[i] = True
        cluster[members] = num_clusters
        iou_with_top[members] = overlap[i, members]
        num_clusters += 1
    return order, torch.from_numpy(cluster), torch.from_numpy(iou_with_top)


def _vote(boxes, scores, vote_th):
    """Clusters and their voted boxes: (sorted boxes, sorted scores, cluster id
    per sorted box, IoU with the cluster's first box, voted boxes [K, 4],
    voted scores [K], cluster sizes [K])."""
    order, cluster, iou_with_top = _vote_clusters(boxes, scores, vote_th)
    boxes, scores = boxes[order], scores[order]
    k = int(cluster.max()) + 1 if len(cluster) else 0
    sizes = torch.bincount(cluster, minlength=k)
    weight_sum = torch.zeros(k, dtype=scores.dtype).index_add_(0, cluster, scores)
    weighted = torch.zeros(k, 4, dtype=boxes.dtype).index_add_(0, cluster, boxes * scores[:, None])
    # The first box of each cluster has its best score; clusters come in that order.
    first = torch.zeros(k, dtype=torch.int64).scatter_reduce_(
        0, cluster, torch.arange(len(cluster)), reduce="amin", include_self=False
    )
    # A single box stays exact; a cluster scored all 0 (no weights) keeps its first box.
    keep_first = (sizes == 1) | (weight_sum <= 0)
    voted = torch.where(keep_first[:, None], boxes[first],
                        weighted / weight_sum.clamp(min=torch.finfo(weight_sum.dtype).tiny)[:, None])
    return boxes, scores, cluster, iou_with_top, voted, scores[first], sizes


def bbox_vote(boxes, scores, vote_th):
    """Box voting.

    Boxes are clustered greedily by descending score (a box joins the cluster
    of the best untaken box when their IoU is ``>= vote_th``). Each cluster
    becomes one box: the score-weighted mean of its boxes' coordinates, scored
    with the cluster's best score; a single-box cluster is kept unchanged.

    Args:
        boxes (Tensor [N, 4]): xyxy, +1 convention, one class of one image.
        scores (Tensor [N])
        vote_th (float): IoU threshold in (0, 1].

    Returns:
        (boxes [K, 4], scores [K]) on the input's device, by descending score.
    """
    device = boxes.device
    if len(boxes) == 0:
        return boxes, scores
    _, _, _, _, voted, voted_scores, _ = _vote(boxes.cpu().float(), scores.cpu().float(), vote_th)
    return voted.to(device), voted_scores.to(device)


def soft_bbox_vote(boxes, scores, vote_th, score_th):
    """Soft box voting: :func:`bbox_vote`, and for every cluster of more than
    one box, its boxes are also kept with the score decayed by the IoU with the
    cluster's first box, ``score * (1 - IoU)``, when that is ``>= score_th``
    (so the first box itself, at IoU 1, only when ``score_th <= 0``).

    Returns (boxes [K', 4], scores [K']) sorted by descending score."""
    device = boxes.device
    if len(boxes) == 0:
        return boxes, scores
    sorted_boxes, sorted_scores, cluster, iou_with_top, voted, voted_scores, sizes = _vote(
        boxes.cpu().float(), scores.cpu().float(), vote_th
    )
    decayed = sorted_scores * (1 - iou_with_top)
    extra = (sizes[cluster] > 1) & (decayed >= score_th)
    # Each cluster's voted box, then its surviving decayed boxes; then by score.
    all_boxes = torch.cat([voted, sorted_boxes[extra]])
    all_scores = torch.cat([voted_scores, decayed[extra]])
    all_cluster = torch.cat([torch.arange(len(voted)), cluster[extra]])
    group_order = torch.sort(all_cluster, stable=True).indices
    all_boxes, all_scores = all_boxes[group_order], all_scores[group_order]
    order = torch.sort(all_scores, descending=True, stable=True).indices
    return all_boxes[order].to(device), all_scores[order].to(device)


def merge_by_voting(boxlist, merge_type, vote_th, score_th, max_detections):
    """Per-class :func:`bbox_vote` (``merge_type`` "vote") or
    :func:`soft_bbox_vote` ("soft-vote") of ``boxlist`` (xyxy, fields
    ``scores``, ``labels``), then :func:`keep_top_detections`."""
    if merge_type not in ("vote", "soft-vote"):
        raise ValueError(f"merge_type must be 'vote' or 'soft-vote', got {merge_type!r}")
    boxlist = boxlist.convert("xyxy")
    labels = boxlist.get_field("labels")
    scores = boxlist.get_field("scores")
    merged = []
    for label in torch.unique(labels).tolist():
        inds = (labels == label).nonzero().squeeze(1)
        if merge_type == "vote":
            b, s = bbox_vote(boxlist.bbox[inds], scores[inds], vote_th)
        else:
            b, s = soft_bbox_vote(boxlist.bbox[inds], scores[inds], vote_th, score_th)
        out = BoxList(b, boxlist.size, mode="xyxy")
        out.add_field("scores", s)
        out.add_field("labels", torch.full((len(b),), label, dtype=labels.dtype, device=labels.device))
        merged.append(out)
    if not merged:
        return boxlist.copy_with_fields(["scores", "labels"])
    return keep_top_detections(cat_boxlist(merged), max_detections)


def merge_by_nms(boxlist, nms_th, max_detections):
    """Class-wise NMS of ``boxlist`` at IoU ``nms_th``, then
    :func:`keep_top_detections`."""
    return keep_top_detections(boxlist_ml_nms(boxlist, nms_th), max_detections)


# --------------------------------------------------------------------------- #
# Passes
# --------------------------------------------------------------------------- #
class BBoxAug:
    """Test-time augmentation: ``bbox_aug(model, images, device)``.

    Args:
        passes (list[AugPass]): the first is the reference frame of the output.
        normalize: the input normalisation (``build_normalize(cfg)``).
        size_divisible (int): ``DATALOADER.SIZE_DIVISIBILITY``.
        vote (bool), merge_type (str), vote_th (float): the merge (module
            docstring).
        nms_th (float): ``MODEL.ATSS.NMS_TH`` (merge without voting).
        score_th (float): ``MODEL.ATSS.INFERENCE_TH`` (soft voting).
        detections_per_img (int): ``TEST.DETECTIONS_PER_IMG`` (without voting).
        max_voted_detections (int): ``MODEL.ATSS.PRE_NMS_TOP_N`` (with voting).
    """

    def __init__(self, passes, normalize, size_divisible, vote, merge_type, vote_th, nms_th,
                 score_th, detections_per_img, max_voted_detections):
        if not passes:
            raise ValueError("BBoxAug needs at least one pass")
        self.passes = list(passes)
        self.normalize = normalize
        self.to_tensor = ToTensor()
        self.size_divisible = size_divisible
        self.vote = vote
        self.merge_type = merge_type
        self.vote_th = vote_th
        self.nms_th = nms_th
        self.score_th = score_th
        self.detections_per_img = detections_per_img
        self.max_voted_detections = max_voted_detections

    @classmethod
    def from_config(cls, cfg):
        aug = cfg.TEST.BBOX_AUG
        return cls(
            build_passes(cfg),
            build_normalize(cfg),
            cfg.DATALOADER.SIZE_DIVISIBILITY,
            vote=aug.VOTE,
            merge_type=aug.MERGE_TYPE,
            vote_th=aug.VOTE_TH,
            nms_th=cfg.MODEL.ATSS.NMS_TH,
            score_th=cfg.MODEL.ATSS.INFERENCE_TH,
            detections_per_img=cfg.TEST.DETECTIONS_PER_IMG,
            max_voted_detections=cfg.MODEL.ATSS.PRE_NMS_TOP_N,
        )

    def _prepare(self, image, aug_pass):
        image = resize_image(image, aug_pass.min_size, aug_pass.max_size)
        if aug_pass.hflip:
            image = cv2.flip(image, 1)
        tensor, _ = self.to_tensor(image)
        tensor, _ = self.normalize(tensor)
        return tensor

    def run_pass(self, model, images, aug_pass, device):
        """Detections of one pass, in that pass's (unmirrored) pixels."""
        batch = to_image_list([self._prepare(img, aug_pass) for img in images], self.size_divisible)
        detections = model(batch.to(device))
        if aug_pass.hflip:
            detections = [d.transpose(FLIP_LEFT_RIGHT) for d in detections]
        if aug_pass.size_range is not None:
            lo, hi = aug_pass.size_range
            detections = [remove_boxes_outside_range(d, lo, hi) for d in detections]
        return detections

    def merge(self, boxlist):
        """Merge the union of one image's passes (module docstring)."""
        if self.vote:
            return merge_by_voting(boxlist, self.merge_type, self.vote_th, self.score_th,
                                   self.max_voted_detections)
        return merge_by_nms(boxlist, self.nms_th, self.detections_per_img)

    def __call__(self, model, images, device):
        """Detections of ``images`` (list of [H, W, 3] uint8 BGR arrays, the
        original images) with every pass merged: list of BoxList in the pixels
        of the first pass's resized images."""
        if not isinstance(images, (list, tuple)) or not all(
            isinstance(img, np.ndarray) and img.ndim == 3 for img in images
        ):
            raise TypeError(
                "test-time augmentation needs the original images ([H, W, 3] uint8 BGR arrays), "
                f"got {type(images).__name__}; build the test loader from a config with "
                "TEST.BBOX_AUG.ENABLED True (make_data_loader then skips the test transforms)"
            )
        per_image = [[] for _ in images]
        for aug_pass in self.passes:
            for i, detections in enumerate(self.run_pass(model, images, aug_pass, device)):
                if per_image[i]:
                    detections = detections.resize(per_image[i][0].size)
                per_image[i].append(detections.copy_with_fields(["scores", "labels"]).convert("xyxy"))
        return [self.merge(cat_boxlist(lists)) for lists in per_image]


def build_bbox_aug(cfg):
    """:class:`BBoxAug` of ``cfg`` when ``TEST.BBOX_AUG.ENABLED``, else None."""
    if not cfg.TEST.BBOX_AUG.ENABLED:
        return None
    return BBoxAug.from_config(cfg)

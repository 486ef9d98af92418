"""From head outputs to detections (the reference's ATSS post-processor).

Per image and level: sigmoid class scores; candidates are the (anchor, class)
pairs with score > ``INFERENCE_TH``; their score is multiplied by the
centerness sigmoid and the best ``PRE_NMS_TOP_N`` per level are kept; boxes are
decoded from their anchors and clipped to the image. Then, over all levels:
class-wise NMS (``NMS_TH``) and the ``DETECTIONS_PER_IMG`` best. The final
score is sqrt(class score x centerness).

Detections are :class:`BoxList` s, xyxy in the coordinates of the resized
input image (``size`` = its (w, h), padding excluded), with fields ``scores``
and ``labels`` (contiguous 1..C).
"""
import torch

from atss_core.structures.bounding_box import BoxList
from atss_core.structures.boxlist_ops import boxlist_ml_nms, cat_boxlist, remove_small_boxes

from .utils import permute_and_flatten


class ATSSPostProcessor:
    def __init__(self, box_coder, pre_nms_thresh, pre_nms_top_n, nms_thresh, detections_per_img,
                 min_size=0, apply_nms=True):
        self.box_coder = box_coder
        self.pre_nms_thresh = pre_nms_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = min_size
        # False when test-time augmentation merges the raw candidates itself.
        self.apply_nms = apply_nms

    def _level_candidates(self, box_cls, box_regression, centerness, anchors, image_sizes):
        """Candidates of one level for every image: list of BoxList."""
        N, _, H, W = box_cls.shape
        A = box_regression.shape[1] // 4
        C = box_cls.shape[1] // A
        scores = permute_and_flatten(box_cls, N, A, C, H, W).sigmoid()
        regression = permute_and_flatten(box_regression, N, A, 4, H, W)
        ctr = permute_and_flatten(centerness, N, A, 1, H, W).sigmoid()
        candidates = scores > self.pre_nms_thresh
        num_candidates = candidates.reshape(N, -1).sum(1).clamp(max=self.pre_nms_top_n)
        scores = scores * ctr

        results = []
        for i, (h, w) in enumerate(image_sizes):
            cand = candidates[i].nonzero()  # [K, 2]: (anchor, class)
            top_scores, top = scores[i][candidates[i]].topk(int(num_candidates[i]), sorted=False)
            cand = cand[top]
            anchor_idx, labels = cand[:, 0], cand[:, 1] + 1
            boxes = self.box_coder.decode(regression[i, anchor_idx], anchors[anchor_idx])
            boxlist = BoxList(boxes, (w, h), mode="xyxy")
            boxlist.add_field("labels", labels)
            boxlist.add_field("scores", top_scores.sqrt())
            boxlist = boxlist.clip_to_image(remove_empty=False)
            results.append(remove_small_boxes(boxlist, self.min_size))
        return results

    def _select_over_all_levels(self, boxlist):
        result = boxlist_ml_nms(boxlist, self.nms_thresh)
        n = len(result)
        if n > self.detections_per_img > 0:
            scores = result.get_field("scores")
            # Keep every box scoring at least the N-th best (ties included).
            threshold, _ = torch.kthvalue(scores.cpu(), n - self.detections_per_img + 1)
            result = result[scores >= threshold.to(scores.device)]
        return result

    def __call__(self, box_cls, box_regression, centerness, anchors, image_sizes):
        """Head outputs (lists over levels), ``anchors`` (list over levels of
        [R_l, 4]) and the (h, w) of each image -> list of BoxList per image."""
        per_level = [
            self._level_candidates(c, r, t, a, image_sizes)
            for c, r, t, a in zip(box_cls, box_regression, centerness, anchors)
        ]
        results = []
        for per_image in zip(*per_level):
            boxlist = cat_boxlist(list(per_image))
            results.append(self._select_over_all_levels(boxlist) if self.apply_nms else boxlist)
        return results


def make_atss_postprocessor(cfg, box_coder):
    aug = cfg.TEST.BBOX_AUG
    return ATSSPostProcessor(
        box_coder,
        pre_nms_thresh=cfg.MODEL.ATSS.INFERENCE_TH,
        pre_nms_top_n=cfg.MODEL.ATSS.PRE_NMS_TOP_N,
        nms_thresh=cfg.MODEL.ATSS.NMS_TH,
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMG,
        min_size=0,
        # As the reference: with test-time augmentation merged by NMS (no
        # voting), each pass returns its candidates unsuppressed.
        apply_nms=not (aug.ENABLED and not aug.VOTE),
    )

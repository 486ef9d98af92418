"""The post-processor against a per-image, per-level loop written the way
the reference does it, on random head outputs: batches with different image
sizes, several anchors per location, BOX and POINT regression."""
import pytest
import torch

from conftest import load_cfg

from atss_core.modeling.rpn.anchor_generator import make_anchor_generator
from atss_core.modeling.rpn.box_coder import make_box_coder
from atss_core.modeling.rpn.inference import make_atss_postprocessor


def brute_force_class_nms(boxes, scores, labels, thresh):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep, removed = [], set()
    for pos, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        for j in order[pos + 1:]:
            if j in removed or labels[j] != labels[i]:
                continue
            a, b = boxes[i].tolist(), boxes[j].tolist()
            iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
            ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
            inter = max(iw, 0) * max(ih, 0)
            union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
            if inter / union >= thresh:
                removed.add(j)
    return keep


def reference_postprocess(cfg, box_cls, box_reg, ctr, anchors, image_sizes):
    coder = make_box_coder(cfg)
    atss = cfg.MODEL.ATSS
    results = []
    for i, (h, w) in enumerate(image_sizes):
        all_boxes, all_scores, all_labels = [], [], []
        for cls_l, reg_l, ctr_l, anc in zip(box_cls, box_reg, ctr, anchors):
            _, AC, H, W = cls_l.shape
            A = reg_l.shape[1] // 4
            C = AC // A
            s = cls_l[i].reshape(A, C, H, W).permute(2, 3, 0, 1).reshape(-1, C).sigmoid()
            r = reg_l[i].reshape(A, 4, H, W).permute(2, 3, 0, 1).reshape(-1, 4)
            c = ctr_l[i].reshape(A, 1, H, W).permute(2, 3, 0, 1).reshape(-1).sigmoid()
            for_class = []
            for a in range(s.shape[0]):
                for k in range(C):
                    if s[a, k] > atss.INFERENCE_TH:
                        for_class.append((float(s[a, k] * c[a]), a, k))
            for_class.sort(key=lambda t: -t[0])
            for score, a, k in for_class[: atss.PRE_NMS_TOP_N]:
                box = coder.decode(r[a : a + 1], anc[a : a + 1])[0]
                x1, y1, x2, y2 = (min(max(float(v), 0.0), lim - 1) for v, lim in zip(box, (w, h, w, h)))
                if x2 - x1 + 1 >= 0 and y2 - y1 + 1 >= 0:
                    all_boxes.append([x1, y1, x2, y2])
                    all_scores.append(score ** 0.5)
                    all_labels.append(k + 1)
        boxes = torch.tensor(all_boxes).reshape(-1, 4)
        scores = torch.tensor(all_scores)
        labels = torch.tensor(all_labels)
        keep = brute_force_class_nms(boxes, scores, labels, atss.NMS_TH)
        keep = sorted(keep, key=lambda j: -float(scores[j]))
        if len(keep) > cfg.TEST.DETECTIONS_PER_IMG:
            kth = float(scores[keep].sort(descending=True).values[cfg.TEST.DETECTIONS_PER_IMG - 1])
            keep = [j for j in keep if float(scores[j]) >= kth]
        results.append((boxes[keep], scores[keep], labels[keep]))
    return results


def random_head_outputs(cfg, image_sizes, seed):
    g = torch.Generator().manual_seed(seed)
    atss = cfg.MODEL.ATSS
    A = len(atss.ASPECT_RATIOS) * atss.SCALES_PER_OCTAVE
    C = atss.NUM_CLASSES - 1
    padded_h = max(h for h, _ in image_sizes)
    padded_w = max(w for _, w in image_sizes)
    shapes = [(-(-padded_h // s), -(-padded_w // s)) for s in atss.ANCHOR_STRIDES]
    N = len(image_sizes)
    box_cls = [torch.randn(N, A * C, h, w, generator=g) * 2 - 3 for h, w in shapes]
    if atss.REGRESSION_TYPE == "POINT":
        box_reg = [torch.rand(N, A * 4, h, w, generator=g) * 6 for h, w in shapes]
    else:
        box_reg = [torch.randn(N, A * 4, h, w, generator=g) for h, w in shapes]
    ctr = [torch.randn(N, A, h, w, generator=g) for h, w in shapes]
    anchors = make_anchor_generator(cfg)(shapes)
    return box_cls, box_reg, ctr, anchors


@pytest.mark.parametrize("opts", [
    [],
    ["MODEL.ATSS.REGRESSION_TYPE", "POINT"],
    ["MODEL.ATSS.ASPECT_RATIOS", "(0.5, 1.0, 2.0)", "MODEL.ATSS.PRE_NMS_TOP_N", "50"],
    ["TEST.DETECTIONS_PER_IMG", "10", "MODEL.ATSS.NMS_TH", "0.3"],
])
def test_matches_reference_loop(opts):
    cfg = load_cfg("atss_R_50_FPN_1x", ["MODEL.ATSS.NUM_CLASSES", "4", *opts])
    image_sizes = [(100, 150), (70, 90)]
    outputs = random_head_outputs(cfg, image_sizes, seed=len(opts))
    ours = make_atss_postprocessor(cfg, make_box_coder(cfg))(*outputs, image_sizes)
    ref = reference_postprocess(cfg, *outputs, image_sizes)
    for det, (boxes, scores, labels), (h, w) in zip(ours, ref, image_sizes):
        assert det.size == (w, h)
        assert len(det) == len(boxes) > 0
        o_scores, o_idx = det.get_field("scores").sort(descending=True)
        r_scores, r_idx = scores.sort(descending=True)
        assert torch.allclose(o_scores, r_scores, atol=1e-6)
        assert torch.equal(det.get_field("labels")[o_idx], labels[r_idx])
        assert torch.allclose(det.bbox[o_idx], boxes[r_idx], atol=1e-3)


def test_no_candidates_gives_empty_detections():
    cfg = load_cfg("atss_R_50_FPN_1x", ["MODEL.ATSS.NUM_CLASSES", "4"])
    box_cls, box_reg, ctr, anchors = random_head_outputs(cfg, [(64, 64)], seed=0)
    box_cls = [torch.full_like(c, -20.0) for c in box_cls]
    dets = make_atss_postprocessor(cfg, make_box_coder(cfg))(box_cls, box_reg, ctr, anchors, [(64, 64)])
    assert len(dets[0]) == 0 and dets[0].get_field("scores").shape == (0,)

"""Test-time augmentation: passes, box voting and merging (hand-made boxes and a
fake detector)."""
import numpy as np
import pytest
import torch

from atss_core.config import ConfigError, cfg as default_cfg
from atss_core.engine.bbox_aug import (
    AugPass,
    BBoxAug,
    bbox_vote,
    build_bbox_aug,
    build_passes,
    keep_top_detections,
    merge_by_nms,
    merge_by_voting,
    remove_boxes_outside_range,
    soft_bbox_vote,
)
from atss_core.structures import BoxList


def boxlist(boxes, scores, labels, size=(100, 100)):
    b = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), size)
    b.add_field("scores", torch.tensor(scores, dtype=torch.float32))
    b.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return b


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = w * h
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def naive_vote(boxes, scores, vote_th, soft=False, score_th=0.05):
    """Box voting written as a plain loop over clusters (the algorithm as the
    reference describes it), to check the tensor implementation against."""
    boxes, scores = boxes.tolist(), scores.tolist()
    remaining = sorted(range(len(boxes)), key=lambda i: -scores[i])
    out = []
    while remaining:
        top = remaining[0]
        overlaps = [_iou(boxes[top], boxes[j]) for j in remaining]
        members = [(j, o) for j, o in zip(remaining, overlaps) if o >= vote_th]
        remaining = [j for j, o in zip(remaining, overlaps) if o < vote_th]
        if len(members) == 1:
            out.append((boxes[top], scores[top]))
            continue
        weight = sum(scores[j] for j, _ in members)
        box = [sum(boxes[j][k] * scores[j] for j, _ in members) / weight for k in range(4)]
        out.append((box, scores[top]))
        if soft:
            out.extend((boxes[j], scores[j] * (1 - o)) for j, o in members
                       if scores[j] * (1 - o) >= score_th)
    if soft:
        out.sort(key=lambda bs: -bs[1])
    return (torch.tensor([b for b, _ in out], dtype=torch.float64).reshape(-1, 4),
            torch.tensor([s for _, s in out], dtype=torch.float64))


def test_bbox_vote_by_hand():
    boxes = torch.tensor([[1.0, 1.0, 10.0, 10.0], [50.0, 50.0, 59.0, 59.0], [0.0, 0.0, 9.0, 9.0]])
    scores = torch.tensor([0.6, 0.7, 0.9])
    # IoU of the first and last is 81 / 119 = 0.68 >= 0.66: merged, weighted by score.
    voted, voted_scores = bbox_vote(boxes, scores, 0.66)
    expected = (0.9 * boxes[2] + 0.6 * boxes[0]) / 1.5
    assert torch.allclose(voted, torch.stack([expected, boxes[1]]))
    assert torch.equal(voted[1], boxes[1])  # a single-box cluster is kept exactly
    assert torch.allclose(voted_scores, torch.tensor([0.9, 0.7]))
    # Below the IoU threshold nothing merges.
    voted, voted_scores = bbox_vote(boxes, scores, 0.7)
    assert torch.equal(voted, boxes[[2, 1, 0]]) and torch.equal(voted_scores, scores[[2, 1, 0]])


def test_soft_bbox_vote_by_hand():
    boxes = torch.tensor([[1.0, 1.0, 10.0, 10.0], [50.0, 50.0, 59.0, 59.0], [0.0, 0.0, 9.0, 9.0]])
    scores = torch.tensor([0.6, 0.7, 0.9])
    voted, voted_scores = soft_bbox_vote(boxes, scores, 0.66, score_th=0.05)
    # The merged box, the lone box, and the second member decayed to 0.6 * (1 - 81/119).
    assert torch.allclose(voted_scores, torch.tensor([0.9, 0.7, 0.6 * (1 - 81 / 119)]))
    assert torch.equal(voted[2], boxes[0])
    voted, voted_scores = soft_bbox_vote(boxes, scores, 0.66, score_th=0.2)
    assert len(voted) == 2


@pytest.mark.parametrize("soft", [False, True])
def test_voting_matches_a_plain_loop(soft):
    generator = torch.Generator().manual_seed(0)
    centers = torch.rand(12, 2, generator=generator) * 400
    sizes = torch.rand(12, 2, generator=generator) * 80 + 10
    # 12 objects seen 1..5 times each with jitter: clusters of several boxes.
    repeats = torch.randint(1, 6, (12,), generator=generator)
    centers, sizes = centers.repeat_interleave(repeats, 0), sizes.repeat_interleave(repeats, 0)
    centers = centers + torch.randn(centers.shape, generator=generator) * 3
    boxes = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=1)
    scores = torch.rand(len(boxes), generator=generator)
    for vote_th in (0.5, 0.66, 0.8):
        expected_boxes, expected_scores = naive_vote(boxes.double(), scores.double(), vote_th, soft)
        if soft:
            got_boxes, got_scores = soft_bbox_vote(boxes, scores, vote_th, 0.05)
        else:
            got_boxes, got_scores = bbox_vote(boxes, scores, vote_th)
        assert len(got_boxes) == len(expected_boxes) < len(boxes)
        assert torch.allclose(got_scores.double(), expected_scores, atol=1e-6)
        assert torch.allclose(got_boxes.double(), expected_boxes, atol=1e-3)


def test_voting_of_one_and_no_box():
    zero_scores = bbox_vote(torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 10.0]]),
                            torch.zeros(2), 0.5)
    assert torch.equal(zero_scores[0], torch.tensor([[0.0, 0.0, 9.0, 9.0]]))
    one = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(bbox_vote(one, torch.tensor([0.3]), 0.66)[0], one)
    assert torch.equal(soft_bbox_vote(one, torch.tensor([0.3]), 0.66, 0.0)[0], one)
    assert len(bbox_vote(torch.zeros(0, 4), torch.zeros(0), 0.66)[0]) == 0


def test_merge_by_voting_is_per_class_and_capped():
    # Two identical boxes of different classes are not merged; two of one class are.
    b = boxlist([[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9], [30, 30, 40, 40]],
                [0.9, 0.8, 0.7, 0.6], [1, 2, 1, 1])
    merged = merge_by_voting(b, "vote", 0.66, 0.05, max_detections=100)
    assert merged.get_field("labels").tolist() == [1, 1, 2]
    assert merged.get_field("scores").tolist() == pytest.approx([0.9, 0.6, 0.8])
    capped = merge_by_voting(b, "vote", 0.66, 0.05, max_detections=2)
    assert sorted(capped.get_field("scores").tolist()) == pytest.approx([0.8, 0.9])
    assert len(merge_by_voting(b[torch.zeros(4, dtype=torch.bool)], "soft-vote", 0.66, 0.05, 10)) == 0
    with pytest.raises(ValueError, match="merge_type"):
        merge_by_voting(b, "nms", 0.66, 0.05, 10)


def test_merge_by_nms_is_class_wise_and_keeps_ties():
    b = boxlist([[0, 0, 9, 9], [0, 0, 9, 8], [0, 0, 9, 9], [50, 50, 60, 60], [70, 70, 80, 80]],
                [0.9, 0.8, 0.7, 0.5, 0.5], [1, 1, 2, 1, 1])
    merged = merge_by_nms(b, 0.6, max_detections=10)
    assert merged.get_field("scores").tolist() == pytest.approx([0.9, 0.7, 0.5, 0.5])
    # The cut at 3 falls in a tie at 0.5: both tied boxes stay, as the model's own cut.
    assert len(keep_top_detections(merged, 3)) == 4
    assert len(keep_top_detections(merged, 2)) == 2
    assert len(keep_top_detections(merged, 0)) == 4


def test_remove_boxes_outside_range():
    # Areas with the +1 convention: 100, 400, 2500.
    b = boxlist([[0, 0, 9, 9], [0, 0, 19, 19], [0, 0, 49, 49]], [0.5] * 3, [1] * 3)
    assert remove_boxes_outside_range(b, 10, 50).bbox[:, 2].tolist() == [19.0]
    assert len(remove_boxes_outside_range(b, 0, 10000)) == 3
    assert remove_boxes_outside_range(b, 20, 10000).bbox[:, 2].tolist() == [49.0]


def aug_cfg(**aug):
    cfg = default_cfg.clone()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", 50, "INPUT.MAX_SIZE_TEST", 1000,
                         "TEST.BBOX_AUG.ENABLED", True])
    for key, value in aug.items():
        cfg.merge_from_list([f"TEST.BBOX_AUG.{key}", value])
    return cfg


def test_build_passes():
    passes = build_passes(aug_cfg(H_FLIP=True, SCALES=(40, 100), MAX_SIZE=3000, SCALE_H_FLIP=True,
                                  SCALE_RANGES=[[0, 64], [32, 10000]]))
    assert passes == [
        AugPass(50, 1000), AugPass(50, 1000, hflip=True),
        AugPass(40, 3000, size_range=(0, 64)), AugPass(40, 3000, True, (0, 64)),
        AugPass(100, 3000, size_range=(32, 10000)), AugPass(100, 3000, True, (32, 10000)),
    ]
    # With voting, as the reference, scales below the test scale keep its max size.
    voting = build_passes(aug_cfg(SCALES=(40, 100), MAX_SIZE=3000, VOTE=True))
    assert voting == [AugPass(50, 1000), AugPass(40, 1000), AugPass(100, 3000)]
    with pytest.raises(ConfigError, match="SCALE_RANGES"):
        build_passes(aug_cfg(SCALES=(40, 100), SCALE_RANGES=[[0, 64]]))
    with pytest.raises(ConfigError, match="VOTE_TH"):
        BBoxAug.from_config(aug_cfg(VOTE_TH=1.5))
    assert build_bbox_aug(default_cfg) is None
    assert isinstance(build_bbox_aug(aug_cfg()), BBoxAug)


class RectangleDetector(torch.nn.Module):
    """Fake detector: finds the bright rectangle of each (normalised) image and
    returns it as one box (inclusive pixels) of class 1 in the input's pixels."""

    def forward(self, images):
        out = []
        for tensor, (h, w) in zip(images.tensors, images.image_sizes):
            mask = tensor[0, :h, :w] > 0
            ys, xs = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
            box = [[xs.min(), ys.min(), xs.max(), ys.max()]]
            out.append(boxlist(box, [0.9], [1], size=(w, h)))
        return out


def test_bbox_aug_maps_every_pass_back_to_the_test_image():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[20:60, 40:80] = 255  # x 40..79, y 20..59 inclusive
    other = np.zeros((300, 150, 3), dtype=np.uint8)
    other[200:260, 10:40] = 255
    cfg = aug_cfg(H_FLIP=True, SCALES=(100, 150), SCALE_H_FLIP=True, VOTE=True, VOTE_TH=0.5,
                  MERGE_TYPE="vote")
    bbox_aug = BBoxAug.from_config(cfg)
    model = RectangleDetector()
    # Pass by pass, before merging: each in its own resized pixels, un-mirrored.
    for aug_pass in bbox_aug.passes:
        found = bbox_aug.run_pass(model, [image], aug_pass, "cpu")[0]
        scale = found.size[0] / 200
        assert found.size == (round(200 * scale), round(100 * scale))
        expected = torch.tensor([40, 20, 80, 60]) * scale - torch.tensor([0, 0, 1, 1])
        assert torch.allclose(found.bbox[0], expected, atol=1.0), aug_pass
    # Merged: one box per image in the pixels of the test scale (shorter side 50).
    results = bbox_aug(model, [image, other], "cpu")
    assert [r.size for r in results] == [(100, 50), (50, 100)]
    assert [len(r) for r in results] == [1, 1]
    assert torch.allclose(results[0].bbox[0], torch.tensor([20.0, 10.0, 39.5, 29.5]), atol=0.75)
    assert torch.allclose(results[1].bbox[0], torch.tensor([3.33, 66.7, 12.8, 86.3]), atol=0.75)
    assert results[0].get_field("scores").tolist() == pytest.approx([0.9])


def test_bbox_aug_needs_original_images():
    bbox_aug = BBoxAug.from_config(aug_cfg())
    with pytest.raises(TypeError, match="TEST.BBOX_AUG.ENABLED True"):
        bbox_aug(RectangleDetector(), torch.zeros(1, 3, 50, 100), "cpu")


def test_bbox_aug_scale_ranges_drop_boxes_of_a_pass():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[20:60, 40:80] = 255
    model = RectangleDetector()
    bbox_aug = BBoxAug.from_config(aug_cfg(SCALES=(100,), SCALE_RANGES=[[0, 10]]))
    # At scale 100 the rectangle is 40 x 40 pixels: out of [0, 10], so only pass 1 finds it.
    assert len(bbox_aug.run_pass(model, [image], bbox_aug.passes[1], "cpu")[0]) == 0
    assert len(bbox_aug(model, [image], "cpu")[0]) == 1

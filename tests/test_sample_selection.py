"""Sample selection (atss_core/modeling/rpn/sample_selection.py) against a
straightforward per-image, per-box loop version of each rule written here
with the reference implementation's semantics (``loop_select``), and against
the reference's own assignment of the parity fixture.

Everything must be identical (labels, matched boxes, regression targets),
not merely close.
"""
import json
import math
import os
from collections import defaultdict

import pytest
import torch
from conftest import COCO128_DIR, REFERENCE_DIR

from atss_core.config import cfg as default_cfg
from atss_core.modeling.rpn.anchor_generator import make_anchor_generator
from atss_core.modeling.rpn.box_coder import BoxCoder
from atss_core.modeling.rpn.sample_selection import (
    INF,
    POSITIVE_TYPES,
    SampleSelector,
    atss_candidates,
    make_sample_selector,
    select_samples,
)
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.boxlist_ops import box_iou

COCO128_TRAIN = os.path.join(COCO128_DIR, "annotations", "instances_train2017.json")
STRIDES = (8, 16, 32, 64, 128)
SSC_SIZES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))


# --------------------------------------------------------------------------- #
# The loop version ("oracle"): one image, one box at a time.
# --------------------------------------------------------------------------- #
def _centres(boxes):
    return (boxes[:, 2] + boxes[:, 0]) / 2.0, (boxes[:, 3] + boxes[:, 1]) / 2.0


def _inside(cx, cy, box):
    l, t, r, b = cx - box[0], cy - box[1], box[2] - cx, box[3] - cy
    return torch.stack([l, t, r, b], dim=1).min(dim=1)[0] > 0.01


def _distances_to(points, box):
    gx, gy = (box[2] + box[0]) / 2.0, (box[3] + box[1]) / 2.0
    return (points - torch.stack([gx, gy])[None]).pow(2).sum(-1).sqrt()


def loop_atss_candidates(anchors_per_level, gt, topk, num_anchors_per_location):
    """Per box: candidates (list of [K] indices), their IoUs [K, G], thresholds [G]."""
    anchors = torch.cat(anchors_per_level)
    cx, cy = _centres(anchors)
    points = torch.stack([cx, cy], dim=1)
    candidates, candidate_iou_columns = [], []
    for g in range(len(gt)):
        distances = _distances_to(points, gt[g])
        per_level, start = [], 0
        for level_anchors in anchors_per_level:
            n = len(level_anchors)
            k = min(topk * num_anchors_per_location, n)
            per_level.append(distances[start:start + n].topk(k, largest=False)[1] + start)
            start += n
        cand = torch.cat(per_level)
        candidates.append(cand)
        candidate_iou_columns.append(box_iou(anchors, gt[g:g + 1])[:, 0][cand])
    # The reference reduces the candidates' IoUs as one [K, G] matrix; float32
    # mean/std round differently for other shapes, so do the same.
    candidate_ious = torch.stack(candidate_iou_columns, dim=1)
    thresholds = candidate_ious.mean(0) + candidate_ious.std(0)
    return candidates, candidate_ious, thresholds


def _loop_atss(anchors_per_level, anchors, gt, labels, topk, num_anchors_per_location):
    cx, cy = _centres(anchors)
    candidates, candidate_ious, thresholds = loop_atss_candidates(anchors_per_level, gt, topk,
                                                                  num_anchors_per_location)
    ious_pos = torch.full((len(anchors), len(gt)), -INF)
    for g in range(len(gt)):
        cand = candidates[g]
        is_pos = (candidate_ious[:, g] >= thresholds[g]) & _inside(cx[cand], cy[cand], gt[g])
        ious_pos[cand[is_pos], g] = candidate_ious[is_pos, g]
    best, gt_idx = ious_pos.max(dim=1)
    out = labels[gt_idx].clone()
    out[best == -INF] = 0
    return out, gt[gt_idx]


def _loop_ssc(anchors_per_level, anchors, gt, labels):
    cx, cy = _centres(anchors)
    ranges = torch.cat([torch.tensor(SSC_SIZES[l], dtype=torch.float32).expand(len(a), 2)
                        for l, a in enumerate(anchors_per_level)])
    columns = []
    for g in range(len(gt)):
        box = gt[g]
        sides = torch.stack([cx - box[0], cy - box[1], box[2] - cx, box[3] - cy], dim=1)
        inside = sides.min(dim=1)[0] > 0.01
        largest = sides.max(dim=1)[0]
        in_range = (largest >= ranges[:, 0]) & (largest <= ranges[:, 1])
        area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
        column = torch.full((len(anchors),), INF)
        column[inside & in_range] = area
        columns.append(column)
    min_area, gt_idx = torch.stack(columns, dim=1).min(dim=1)
    out = labels[gt_idx].clone()
    out[min_area == INF] = 0
    return out, gt[gt_idx]


def _loop_iou(anchors, gt, labels, fg, bg):
    quality = torch.stack([box_iou(anchors, gt[g:g + 1])[:, 0] for g in range(len(gt))])  # [G, A]
    best, matches = quality.max(dim=0)
    all_matches = matches.clone()
    matches[best < bg] = -1
    matches[(best >= bg) & (best < fg)] = -2
    for g in range(len(gt)):  # low-quality matches: each box's best anchors
        best_anchors = torch.nonzero(quality[g] == quality[g].max()).squeeze(1)
        matches[best_anchors] = all_matches[best_anchors]
    gt_idx = matches.clamp(min=0)
    out = labels[gt_idx].clone()
    out[matches == -1] = 0
    out[matches == -2] = -1
    cx, cy = _centres(anchors)
    for g in range(len(gt)):
        mine = torch.nonzero((out > 0) & (gt_idx == g)).squeeze(1)
        out[mine[~_inside(cx[mine], cy[mine], gt[g])]] = -1
    return out, gt[gt_idx]


def _loop_topk(anchors, gt, labels, topk):
    cx, cy = _centres(anchors)
    points = torch.stack([cx, cy], dim=1)
    distances = [_distances_to(points, gt[g]) for g in range(len(gt))]
    ious = [box_iou(anchors, gt[g:g + 1])[:, 0] for g in range(len(gt))]
    max_distance = torch.stack([d.max() for d in distances]).max()
    ious_pos = torch.full((len(anchors), len(gt)), -INF)
    for g in range(len(gt)):
        top = (ious[g] - distances[g] / max_distance / 1000).topk(topk)[1]
        top = top[_inside(cx[top], cy[top], gt[g])]
        ious_pos[top, g] = ious[g][top]
    best, gt_idx = ious_pos.max(dim=1)
    out = labels[gt_idx].clone()
    out[best == -INF] = 0
    return out, gt[gt_idx]


def loop_select(anchors_per_level, gt_boxes, gt_labels, positive_type="ATSS", topk=9,
                num_anchors_per_location=1, fg_iou_threshold=0.5, bg_iou_threshold=0.4):
    """Per-image, per-box version of every rule: (labels [A], matched_boxes [A, 4])."""
    anchors = torch.cat(anchors_per_level)
    gt_labels = gt_labels.to(torch.int64)
    if len(gt_boxes) == 0:
        return torch.zeros(len(anchors), dtype=torch.int64), torch.zeros_like(anchors)
    if positive_type == "ATSS":
        return _loop_atss(anchors_per_level, anchors, gt_boxes, gt_labels, topk, num_anchors_per_location)
    if positive_type == "SSC":
        return _loop_ssc(anchors_per_level, anchors, gt_boxes, gt_labels)
    if positive_type == "IoU":
        return _loop_iou(anchors, gt_boxes, gt_labels, fg_iou_threshold, bg_iou_threshold)
    if positive_type == "TOPK":
        return _loop_topk(anchors, gt_boxes, gt_labels, topk)
    raise ValueError(positive_type)


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #
def make_anchors(padded_hw, aspect_ratios=(1.0,), scales_per_octave=1):
    cfg = default_cfg.clone()
    cfg.defrost()
    cfg.MODEL.ATSS.ASPECT_RATIOS = tuple(aspect_ratios)
    cfg.MODEL.ATSS.SCALES_PER_OCTAVE = scales_per_octave
    shapes = [(math.ceil(padded_hw[0] / s), math.ceil(padded_hw[1] / s)) for s in STRIDES]
    return [a.clone() for a in make_anchor_generator(cfg)(shapes)]


def random_boxes(n, hw, min_size=4.0, max_size=400.0, seed=0, integer=False):
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    size = torch.exp(torch.empty(n, 2).uniform_(math.log(min_size), math.log(max_size), generator=g))
    centre = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    if integer:  # centres and sides on the anchor grid: many equal distances
        boxes = (boxes / 8).round() * 8
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    labels = torch.randint(1, 81, (n,), generator=g)
    return boxes, labels


HW = (320, 416)  # padded image (multiple of 32)
IMAGE_HW = (300, 400)  # the image inside it


def _cases():
    cases = {"no_boxes": (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))}
    cases["one_box"] = (torch.tensor([[50.0, 60.0, 180.0, 140.0]]), torch.tensor([7]))
    cases["random"] = random_boxes(20, IMAGE_HW, seed=1)
    cases["integer_grid"] = random_boxes(25, IMAGE_HW, min_size=8, max_size=300, seed=2, integer=True)
    cases["smaller_than_stride"] = random_boxes(30, IMAGE_HW, min_size=1.0, max_size=7.0, seed=3)
    cases["larger_than_image"] = (
        torch.tensor([[-50.0, -40.0, 500.0, 380.0], [-200.0, 10.0, 900.0, 290.0], [20.0, 30.0, 380.0, 280.0],
                      [-1000.0, -1000.0, -900.0, -950.0]]),
        torch.tensor([3, 5, 9, 11]),
    )
    box = torch.tensor([[100.0, 80.0, 220.0, 200.0]])
    cases["overlapping_classes"] = (
        torch.cat([box, box, box + torch.tensor([4.0, 4.0, 4.0, 4.0]), torch.tensor([[90.0, 70.0, 260.0, 230.0]]),
                   torch.tensor([[128.0, 96.0, 192.0, 160.0]])]),
        torch.tensor([1, 2, 3, 4, 5]),
    )
    cases["degenerate"] = (torch.tensor([[40.0, 40.0, 40.0, 90.0], [10.0, 10.0, 11.0, 11.0], [5.0, 5.0, 300.0, 5.0]]),
                           torch.tensor([1, 2, 3]))
    cases["hundreds"] = random_boxes(200, IMAGE_HW, seed=4)
    return cases


CASES = _cases()
ANCHORS = make_anchors(HW)
ANCHORS_A9 = make_anchors(HW, aspect_ratios=(0.5, 1.0, 2.0), scales_per_octave=3)


def grid_of(padded_hw):
    """The feature map sizes of the levels of a padded input (the loss's ``grid_sizes``)."""
    return [(math.ceil(padded_hw[0] / s), math.ceil(padded_hw[1] / s)) for s in STRIDES]


GRID = grid_of(HW)


def assert_same(anchors_per_level, gt_boxes, gt_labels, grid_sizes=None, **options):
    """The vectorised selection equals the loop version (and so does the grid
    path, when ``grid_sizes`` is given)."""
    vec = select_samples(anchors_per_level, gt_boxes, gt_labels, **options)
    loop_labels, loop_boxes = loop_select(anchors_per_level, gt_boxes, gt_labels, **options)
    if grid_sizes is not None:
        grid = select_samples(anchors_per_level, gt_boxes, gt_labels, grid_sizes=grid_sizes, **options)
        assert torch.equal(grid.labels, loop_labels) and torch.equal(grid.matched_boxes, loop_boxes)
    assert vec.labels.dtype == torch.int64
    assert torch.equal(vec.labels, loop_labels), f"labels differ at {torch.nonzero(vec.labels != loop_labels)[:10]}"
    assert torch.equal(vec.matched_boxes, loop_boxes)
    anchors = torch.cat(anchors_per_level)
    for regression_type in ("BOX", "POINT"):
        coder = BoxCoder(regression_type)
        assert torch.equal(coder.encode(vec.matched_boxes, anchors), coder.encode(loop_boxes, anchors))
    return vec


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("positive_type", POSITIVE_TYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_loop_version(positive_type, case):
    gt_boxes, gt_labels = CASES[case]
    out = assert_same(ANCHORS, gt_boxes, gt_labels, GRID, positive_type=positive_type)
    if case == "no_boxes":
        assert not out.labels.any()
    if case in ("one_box", "random", "hundreds"):
        assert (out.labels > 0).any()


@pytest.mark.parametrize("case", ["one_box", "random", "integer_grid", "smaller_than_stride", "larger_than_image",
                                  "overlapping_classes", "hundreds"])
def test_atss_candidates_and_thresholds_are_the_loop_versions(case):
    """Candidates in the same order and IoU thresholds equal to the last bit
    (a threshold one ulp off could flip an anchor whose IoU equals it)."""
    gt_boxes, _ = CASES[case]
    idxs, ious, thresholds = atss_candidates(ANCHORS, gt_boxes, topk=9, num_anchors_per_location=1)
    loop_idxs, loop_ious, loop_thresholds = loop_atss_candidates(ANCHORS, gt_boxes, 9, 1)
    assert torch.equal(idxs, torch.stack(loop_idxs))
    assert torch.equal(ious, loop_ious.t())
    assert torch.equal(thresholds, loop_thresholds)


@pytest.mark.parametrize("positive_type", POSITIVE_TYPES)
def test_several_anchors_per_location(positive_type):
    gt_boxes, gt_labels = CASES["random"]
    assert_same(ANCHORS_A9, gt_boxes[:12], gt_labels[:12], positive_type=positive_type, num_anchors_per_location=9)
    gt_boxes, gt_labels = CASES["integer_grid"]
    assert_same(ANCHORS_A9, gt_boxes[:12], gt_labels[:12], positive_type=positive_type, num_anchors_per_location=9,
                topk=4)


@pytest.mark.parametrize("positive_type", POSITIVE_TYPES)
def test_chunking_gives_the_same_result(positive_type):
    gt_boxes, gt_labels = random_boxes(60, IMAGE_HW, seed=5)
    full = select_samples(ANCHORS, gt_boxes, gt_labels, positive_type=positive_type)
    # 1 box / 50 anchors per chunk; 36 boxes / 1666 anchors per chunk.
    for max_pairs in (3000, 100_000):
        chunked = select_samples(ANCHORS, gt_boxes, gt_labels, positive_type=positive_type, max_pairs=max_pairs)
        assert torch.equal(chunked.labels, full.labels)
        assert torch.equal(chunked.matched_boxes, full.matched_boxes)


def test_other_options():
    gt_boxes, gt_labels = CASES["random"]
    assert_same(ANCHORS, gt_boxes, gt_labels, positive_type="ATSS", topk=3)
    assert_same(ANCHORS, gt_boxes, gt_labels, positive_type="TOPK", topk=20)
    assert_same(ANCHORS, gt_boxes, gt_labels, positive_type="IoU", fg_iou_threshold=0.6, bg_iou_threshold=0.3)
    assert_same(ANCHORS, gt_boxes, gt_labels, positive_type="IoU", fg_iou_threshold=0.5, bg_iou_threshold=0.5)


def test_tie_between_equal_boxes_goes_to_the_first():
    box = torch.tensor([[100.0, 80.0, 220.0, 200.0]])
    for positive_type in ("ATSS", "TOPK", "IoU"):
        out = select_samples(ANCHORS, torch.cat([box, box]), torch.tensor([4, 9]), positive_type=positive_type)
        assert (out.labels == 4).any() and not (out.labels == 9).any(), positive_type


def test_selector_batches_images_and_reads_boxlists():
    cfg = default_cfg.clone()
    selector = make_sample_selector(cfg)
    assert isinstance(selector, SampleSelector) and selector.positive_type == "ATSS"
    targets = []
    for case in ("random", "no_boxes", "overlapping_classes"):
        boxes, labels = CASES[case]
        t = BoxList(boxes, (HW[1], HW[0]))
        t.add_field("labels", labels)
        targets.append(t)
    out = selector(ANCHORS, targets)
    num_anchors = sum(len(a) for a in ANCHORS)
    assert out.labels.shape == (3, num_anchors) and out.matched_boxes.shape == (3, num_anchors, 4)
    for i, t in enumerate(targets):
        single = select_samples(ANCHORS, t.bbox, t.get_field("labels"))
        assert torch.equal(out.labels[i], single.labels) and torch.equal(out.matched_boxes[i], single.matched_boxes)
    with pytest.raises(ValueError):
        SampleSelector("FCOS")


def test_no_host_sync_shapes_only():
    """Chunk counts come from shapes; the result has fixed shapes whatever the boxes."""
    for case in ("no_boxes", "one_box", "hundreds"):
        gt_boxes, gt_labels = CASES[case]
        for positive_type in POSITIVE_TYPES:
            out = select_samples(ANCHORS, gt_boxes, gt_labels, positive_type=positive_type)
            assert out.labels.shape == (sum(len(a) for a in ANCHORS),)
            assert out.matched_boxes.shape == out.labels.shape + (4,)


# --------------------------------------------------------------------------- #
# The reference's own assignment (parity fixture)
# --------------------------------------------------------------------------- #
def _fixture():
    path = os.path.join(REFERENCE_DIR, "parity", "r50_single.json")
    if not os.path.exists(path):
        pytest.skip(f"reference fixtures not found at {REFERENCE_DIR} (../shared/reference beside the repository)")
    with open(path) as f:
        return json.load(f)


def test_reference_assignment_of_fixture_image():
    fixture = _fixture()
    image = fixture["images"][0]
    anchors = make_anchors(fixture["padded_hw"])
    assignment = fixture["assignment"][0]
    assert sum(len(a) for a in anchors) == assignment["num_anchors"]
    gt_boxes = torch.tensor(image["gt_boxes"], dtype=torch.float32)
    gt_labels = torch.tensor(image["gt_labels"])
    out = select_samples(anchors, gt_boxes, gt_labels, positive_type="ATSS", topk=9)

    pos = torch.nonzero(out.labels > 0).squeeze(1)
    assert pos.tolist() == assignment["pos_index"]
    assert out.labels[pos].tolist() == assignment["pos_label"]
    targets = BoxCoder("BOX").encode(out.matched_boxes[pos], torch.cat(anchors)[pos])
    expected = torch.tensor(assignment["pos_reg_target"], dtype=torch.float32)
    # Bit for bit on every CPU: the divisions are exactly rounded and the box
    # coder's log is computed in float64 and rounded once (the float32 torch.log
    # differs in the last bit between CPUs).
    assert torch.equal(targets, expected), (targets - expected).abs().max()

    # The loop version agrees too, for every rule and both regression types.
    for positive_type in POSITIVE_TYPES:
        assert_same(anchors, gt_boxes, gt_labels, grid_of(fixture["padded_hw"]), positive_type=positive_type)


# --------------------------------------------------------------------------- #
# Real boxes (COCO128)
# --------------------------------------------------------------------------- #
def _coco128_images():
    if not os.path.exists(COCO128_TRAIN):
        pytest.skip(f"COCO128 annotations not found at {COCO128_TRAIN} (../shared/data beside the repository)")
    with open(COCO128_TRAIN) as f:
        data = json.load(f)
    boxes = defaultdict(list)
    categories = {c: i + 1 for i, c in enumerate(sorted(c["id"] for c in data["categories"]))}
    for ann in data["annotations"]:
        boxes[ann["image_id"]].append((ann["bbox"], categories[ann["category_id"]]))
    out = []
    for image in sorted(data["images"], key=lambda im: im["id"]):
        h, w = image["height"], image["width"]
        scale = 800.0 / min(h, w)
        if max(h, w) * scale > 1333:
            scale = 1333.0 / max(h, w)
        rh, rw = int(round(h * scale)), int(round(w * scale))
        padded = (int(math.ceil(rh / 32) * 32), int(math.ceil(rw / 32) * 32))
        xywh = torch.tensor([b for b, _ in boxes[image["id"]]], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + (xywh[:, 2:] - 1).clamp(min=0)], dim=1) * scale
        labels = torch.tensor([c for _, c in boxes[image["id"]]], dtype=torch.int64)
        out.append((image["id"], padded, xyxy, labels))
    return out


def _check_coco(images):
    anchors_by_shape = {}
    for _, padded, gt_boxes, gt_labels in images:
        if padded not in anchors_by_shape:
            anchors_by_shape[padded] = make_anchors(padded)
        for positive_type in POSITIVE_TYPES:
            assert_same(anchors_by_shape[padded], gt_boxes, gt_labels, grid_of(padded), positive_type=positive_type)


def test_coco128_boxes_few_images():
    images = _coco128_images()
    crowded = sorted(images, key=lambda im: -len(im[2]))
    _check_coco([crowded[0], images[0]])


@pytest.mark.slow
def test_coco128_boxes_all_images():
    _check_coco(_coco128_images())


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_random_images_at_full_size(seed):
    anchors = make_anchors((800, 1344))
    boxes, labels = random_boxes(60, (800, 1333), min_size=2, max_size=1200, seed=100 + seed, integer=seed % 2 == 1)
    for positive_type in POSITIVE_TYPES:
        assert_same(anchors, boxes, labels, grid_of((800, 1344)), positive_type=positive_type)


# --------------------------------------------------------------------------- #
# The grid path (grid_sizes given, as the loss does): the same results
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("case", sorted(CASES))
def test_grid_path_matches_loop_version(case):
    gt_boxes, gt_labels = CASES[case]
    out = select_samples(ANCHORS, gt_boxes, gt_labels, grid_sizes=GRID)
    loop_labels, loop_boxes = loop_select(ANCHORS, gt_boxes, gt_labels)
    assert torch.equal(out.labels, loop_labels) and torch.equal(out.matched_boxes, loop_boxes)
    if len(gt_boxes):
        dense = atss_candidates(ANCHORS, gt_boxes, topk=9, num_anchors_per_location=1)
        grid = atss_candidates(ANCHORS, gt_boxes, topk=9, num_anchors_per_location=1, grid_sizes=GRID)
        for a, b in zip(grid, dense):
            assert torch.equal(a, b)


def _tie_prone_boxes(n, hw, seed):
    """Boxes whose centres sit on the anchor grid or halfway between anchors
    (many equal distances at the k-th place), plus some at the borders."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    centre = (torch.rand(n, 2, generator=g) * torch.tensor([w, h]) / 4).round() * 4
    centre[: n // 5, 0] = 0.0
    centre[n // 5: 2 * n // 5, 1] = float(h)
    size = 2 + (torch.rand(n, 2, generator=g) * 300).round()
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


@pytest.mark.parametrize("seed", range(4))
def test_window_search_equals_topk_over_the_level(seed):
    """The windowed nearest-anchor search (CPU) against ``topk`` over whole
    levels, on boxes made for ties and border cases and on random ones: some
    rows must take the fallback, and every row must come out the same."""
    from atss_core.modeling.rpn import sample_selection as ss

    hw = (800, 1216)
    anchors = make_anchors(hw)
    grid = [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in STRIDES]
    boxes = torch.cat([_tie_prone_boxes(150, hw, seed), random_boxes(150, hw, min_size=2, max_size=900, seed=seed)[0]])
    gt_cx, gt_cy = ss.anchor_centers(boxes)
    grids = ss._level_grids(anchors, grid, 1)
    fallbacks = 0
    for level, (row_cx, col_cy) in enumerate(grids[:3]):
        dense = ss._dense_grid_closest(row_cx, col_cy, gt_cx, gt_cy, 9, [(0, len(boxes))])
        window, exact = ss._window_closest(row_cx[:, 0], col_cy[:, 0], gt_cx, gt_cy, 9)
        assert torch.equal(window[exact], dense[exact]), level
        fallbacks += int((~exact).sum())
        assert exact[150:].float().mean() > 0.9  # the random boxes: mostly no tie
        closest = ss._grid_closest(row_cx, col_cy, gt_cx, gt_cy, 9, 1, [(0, len(boxes))])
        assert torch.equal(closest, dense), level
    assert fallbacks > 0
    labels = torch.randint(1, 81, (len(boxes),))
    fast = select_samples(anchors, boxes, labels, grid_sizes=grid)
    slow = select_samples(anchors, boxes, labels)
    assert torch.equal(fast.labels, slow.labels) and torch.equal(fast.matched_boxes, slow.matched_boxes)


def test_grid_path_with_several_anchors_per_location_and_bad_grids():
    gt_boxes, gt_labels = CASES["integer_grid"]
    fast = select_samples(ANCHORS_A9, gt_boxes, gt_labels, num_anchors_per_location=9, grid_sizes=GRID)
    loop_labels, loop_boxes = loop_select(ANCHORS_A9, gt_boxes, gt_labels, num_anchors_per_location=9)
    assert torch.equal(fast.labels, loop_labels) and torch.equal(fast.matched_boxes, loop_boxes)
    dense = atss_candidates(ANCHORS_A9, gt_boxes, topk=9, num_anchors_per_location=9)
    grid = atss_candidates(ANCHORS_A9, gt_boxes, topk=9, num_anchors_per_location=9, grid_sizes=GRID)
    for a, b in zip(grid, dense):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="is not a"):
        select_samples(ANCHORS, gt_boxes, gt_labels, grid_sizes=[(h, w + 1) for h, w in GRID])

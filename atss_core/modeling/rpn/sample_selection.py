"""Training sample selection: which anchors are positives of which object.

This is the subject of the paper (Zhang et al., "Bridging the Gap Between
Anchor-based and Anchor-free Detection via Adaptive Training Sample
Selection", CVPR 2020). :func:`atss_select` is its Algorithm 1; the other
rules are the paper's points of comparison, ``MODEL.ATSS.POSITIVE_TYPE``:

``ATSS``
    Per object and per level, the ``TOPK * A`` anchors whose centres are
    closest (L2) to the object's centre are candidates. The object's IoU
    threshold is the mean plus the (unbiased) standard deviation of its
    candidates' IoUs; candidates at or above it whose centre lies inside the
    object are positives.
``SSC``
    FCOS's spatial and scale constraint: anchor centres inside the object,
    on the level whose range ``[-1, 64], [64, 128], ..., [512, INF]``
    contains the largest of the centre's distances (l, t, r, b) to the
    object's sides; the smallest object wins.
``IoU``
    RetinaNet's rule: IoU >= ``FG_IOU_THRESHOLD`` positive, below
    ``BG_IOU_THRESHOLD`` negative, in between ignored, plus each object's
    best anchors ("low-quality matches"); positives whose centre is not
    inside their object are ignored.
``TOPK``
    Per object, the ``TOPK`` anchors of highest IoU (ties broken by a tiny
    centre-distance penalty) whose centre is inside the object.

Conventions
-----------
* One image at a time (ATSS also a batch of images with the same anchors:
  :func:`atss_select_batch`, what :class:`SampleSelector` runs). ``anchors_per_level`` is the list over FPN levels of
  xyxy anchors ``[A_l, 4]`` as :class:`AnchorGenerator` makes them (level by
  level, then location, then cell anchor); ``A_total = sum(A_l)``.
  ``gt_boxes`` is ``[G, 4]`` xyxy in the same pixels, ``gt_labels`` ``[G]``
  integer classes ``1..C``.
* Result (:class:`SampleSelection`): ``labels`` ``[A_total]`` int64, ``0``
  negative, ``-1`` ignored, ``1..C`` positive; ``matched_boxes``
  ``[A_total, 4]``, the object of each positive. Anchors that are not
  positive get the box the reference gives them (object 0 for most; IoU: the
  object they overlap most), only so that shapes stay fixed: their
  regression targets are never used. With no objects (``G == 0``) every
  anchor is negative and ``matched_boxes`` is zeros.
* IoU is :func:`box_iou` (inclusive pixels, the "+1" convention); an anchor
  centre is ``((x1 + x2) / 2, (y1 + y2) / 2)``; "inside" means the smallest
  of the centre's distances to the four sides is ``> 0.01``.

Exactness: the results are identical, bit for bit, to the reference
implementation's (checked on CPU against tests/test_sample_selection.py's
loop version and the reference's own assignment of the parity fixture).
Where float32 results depend on how they are computed -- ``torch.topk``'s
choice among equal distances, the summation order of ``mean``/``std`` (which
varies with the shape of the tensor reduced), ``max``/``min`` returning the
first of equal values -- the same operations are applied to the same values
in the same order: ``topk`` sees each object's distances to one level's
anchors in anchor order, the threshold is reduced from a [K, G] tensor as in
the reference, ties go to the lowest object index.

Cost: no Python loop over objects (only over levels and over chunks of
objects); the [G, A_total] matrices are built for chunks of objects of at
most ``max_pairs`` anchor-object pairs, so memory stays bounded with
hundreds of objects, and on CPU the chunks stay in cache. ATSS computes IoUs
only for its ``TOPK * A`` candidates per level and object. Given the
levels' grid sizes (``grid_sizes``, as the loss passes them), ATSS computes
centre offsets per anchor row and column instead of per anchor, and on the
CPU it looks for each object's nearest anchors in a 7 x 7 window of
locations around its centre, falling back to the whole level for the
objects where that window is not provably what ``topk`` over the level
returns (a tie at the k-th distance, or a nearer anchor possibly outside);
the fallback selects objects by value, a host synchronisation, so it is
CPU-only and GPUs run the whole-level search. The other rules have no host
synchronisation either (every size is a tensor shape).
"""
import itertools
from typing import NamedTuple

import torch

from atss_core.structures.boxlist_ops import box_area, box_iou, paired_box_iou

__all__ = [
    "INF",
    "POSITIVE_TYPES",
    "SSC_OBJECT_SIZES",
    "SampleSelection",
    "SampleSelector",
    "anchor_centers",
    "atss_candidates",
    "atss_select",
    "atss_select_batch",
    "iou_select",
    "make_sample_selector",
    "select_samples",
    "ssc_select",
    "topk_select",
]

POSITIVE_TYPES = ("ATSS", "SSC", "IoU", "TOPK")

# The reference's "infinity" (a float32-exact 1e8): masked IoUs are -INF,
# masked areas INF.
INF = 100000000.0

# SSC: per level, the range of max(l, t, r, b) an object must have (FCOS).
SSC_OBJECT_SIZES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))

# Largest number of anchor-object pairs in one intermediate tensor. On CPU,
# blocks of about a megabyte stay in cache and are about twice as fast as
# one large block; on GPUs larger blocks mean fewer kernel launches.
MAX_PAIRS_CPU = 1 << 18
MAX_PAIRS_GPU = 1 << 23

# Minimum distance of an anchor centre to an object's sides to count as inside.
_INSIDE_MARGIN = 0.01


class SampleSelection(NamedTuple):
    """Per-anchor training assignment of one image (see the module docstring).

    labels: int64 [A_total]: 0 negative, -1 ignored, 1..C positive.
    matched_boxes: float [A_total, 4] xyxy: the object of each positive.
    """

    labels: torch.Tensor
    matched_boxes: torch.Tensor


# --------------------------------------------------------------------------- #
# Geometry helpers
# --------------------------------------------------------------------------- #
def anchor_centers(boxes):
    """Centres ``(cx, cy)``, two contiguous [N] tensors, of xyxy ``boxes`` [N, 4]."""
    return (boxes[:, 2] + boxes[:, 0]) / 2.0, (boxes[:, 3] + boxes[:, 1]) / 2.0


def _center_distances(cx, cy, gt_cx, gt_cy):
    """L2 distances [G, N] between object centres ``(gt_cx, gt_cy)`` [G] and
    points ``(cx, cy)`` [N]."""
    dx = cx[None, :] - gt_cx[:, None]
    dy = cy[None, :] - gt_cy[:, None]
    return dx.mul_(dx).add_(dy.mul_(dy)).sqrt_()


def _grid_center_distances(row_cx, col_cy, gt_cx, gt_cy):
    """:func:`_center_distances` to the anchors of a grid level, [G, H * W * A].

    The level's anchor centres are ``(row_cx[x, a], col_cy[y, a])`` (``row_cx``
    [W, A], ``col_cy`` [H, A]), ordered by location (y, x) then anchor a. The
    squared offsets are computed once per column and once per row, so only the
    sum and the square root are done per pair: the same float32 operations on
    the same values as the dense version, so the same bits, with a third of
    its passes over [G, H * W * A].
    """
    dx = row_cx[None] - gt_cx[:, None, None]  # [G, W, A]
    dy = col_cy[None] - gt_cy[:, None, None]  # [G, H, A]
    squared = dx.mul_(dx)[:, None, :, :] + dy.mul_(dy)[:, :, None, :]  # [G, H, W, A]
    return squared.sqrt_().flatten(1)


def _dense_grid_closest(row_cx, col_cy, gt_cx, gt_cy, k, chunks):
    """Indices [G, k] of the k grid points closest to each object centre,
    nearest first: ``topk`` over the distances to every point of the level,
    as the reference computes them (so the same choice among equal distances)."""
    return torch.cat([
        _grid_center_distances(row_cx, col_cy, gt_cx[s:e], gt_cy[s:e]).topk(k, dim=1, largest=False)[1]
        for s, e in chunks
    ])


# Half-width, in locations, of the window searched around an object's centre
# by _window_closest (7 x 7 locations for the k = 9 nearest).
WINDOW_RADIUS = 3


def _window_closest(row_cx, col_cy, gt_cx, gt_cy, k):
    """The k nearest grid points of each object centre, searched in a window of
    (2R + 1)^2 locations around it (R = :data:`WINDOW_RADIUS`), and whether
    that provably equals ``topk`` over the whole level.

    One anchor per location: ``row_cx`` [W], ``col_cy`` [H], W and H at least
    2R + 1. Returns ``(closest [G, k], exact [G] bool)``. A row is exact when
    the window's k + 1 smallest distances are all different -- so the k
    smallest, in order, are unique and ``topk`` has no tie to break -- and the
    (k + 1)-th is below the distance of every grid point outside the window
    (bounded by its distance to the nearest row or column beyond the window's
    edge: float32 rounding is monotonic, so a farther point never computes
    nearer). The distances are computed exactly as the dense version does.
    """
    size = 2 * WINDOW_RADIUS + 1
    height, width = col_cy.shape[0], row_cx.shape[0]

    def first(centres, g, n):
        # Window start: the location nearest to g, less R, kept inside the grid.
        step = centres[1] - centres[0]
        nearest = torch.round((g - centres[0]) / step).to(torch.int64)
        return (nearest - WINDOW_RADIUS).clamp(0, n - size)

    offsets = torch.arange(size, device=gt_cx.device)
    y0, x0 = first(col_cy, gt_cy, height), first(row_cx, gt_cx, width)
    rows, cols = y0[:, None] + offsets, x0[:, None] + offsets  # [G, size] each
    dx = row_cx[cols] - gt_cx[:, None]
    dy = col_cy[rows] - gt_cy[:, None]
    distances = (dx.mul_(dx)[:, None, :] + dy.mul_(dy)[:, :, None]).sqrt_().flatten(1)  # [G, size^2]
    nearest, position = distances.topk(k + 1, dim=1, largest=False)
    closest = rows.gather(1, position[:, :k] // size) * width + cols.gather(1, position[:, :k] % size)

    # Distance bound of the points beyond each edge (inf where the window
    # touches the grid's border).
    inf = distances.new_full((), float("inf"))

    def beyond(centres, index, g, exists):
        d = centres[index.clamp(0, centres.shape[0] - 1)] - g
        return torch.where(exists, d.mul_(d).sqrt_(), inf)

    bound = torch.minimum(
        torch.minimum(beyond(col_cy, y0 - 1, gt_cy, y0 > 0), beyond(col_cy, y0 + size, gt_cy, y0 + size < height)),
        torch.minimum(beyond(row_cx, x0 - 1, gt_cx, x0 > 0), beyond(row_cx, x0 + size, gt_cx, x0 + size < width)),
    )
    exact = (nearest[:, 1:] > nearest[:, :-1]).all(dim=1) & (nearest[:, k] < bound)
    return closest, exact


def _grid_closest(row_cx, col_cy, gt_cx, gt_cy, k, num_anchors_per_location, chunks):
    """Indices [G, k] (into the level's anchors) of the k anchors closest to
    each object centre, nearest first, exactly what ``topk`` over the whole
    level returns (:func:`_dense_grid_closest`).

    On the CPU, with one anchor per location and a level larger than the
    search window, each object is first searched in the window around it
    (:func:`_window_closest`, ~50 distances instead of H * W); only objects
    for which that is not provably the same fall back to the whole level. The
    fallback selects rows by value, a host synchronisation on a GPU, where the
    dense version runs instead.
    """
    size = 2 * WINDOW_RADIUS + 1
    if (gt_cx.device.type != "cpu" or num_anchors_per_location != 1
            or min(row_cx.shape[0], col_cy.shape[0]) < size):  # [W, A], [H, A]
        return _dense_grid_closest(row_cx, col_cy, gt_cx, gt_cy, k, chunks)
    closest, exact = _window_closest(row_cx[:, 0], col_cy[:, 0], gt_cx, gt_cy, k)
    redo = (~exact).nonzero().squeeze(1)
    if redo.numel():
        per_chunk = chunks[0][1] - chunks[0][0]
        closest[redo] = _dense_grid_closest(row_cx, col_cy, gt_cx[redo], gt_cy[redo], k,
                                            _chunks(redo.numel(), per_chunk))
    return closest


def _level_grids(anchors_per_level, grid_sizes, num_anchors_per_location):
    """Per level, ``(row_cx [W, A], col_cy [H, A])``: the anchor centres of the
    first row and of the first column of a level laid out as an H x W grid with
    A anchors per location (row-major, as :class:`AnchorGenerator` makes them:
    an anchor's x centre depends only on its column and cell anchor, its y
    centre only on its row and cell anchor)."""
    grids = []
    for anchors, (h, w) in zip(anchors_per_level, grid_sizes):
        if anchors.shape[0] != h * w * num_anchors_per_location:
            raise ValueError(
                f"a level of {anchors.shape[0]} anchors is not a {h} x {w} grid with "
                f"{num_anchors_per_location} anchors per location"
            )
        cx, cy = anchor_centers(anchors)
        a = num_anchors_per_location
        grids.append((cx.view(h, w, a)[0], cy.view(h, w, a)[:, 0].contiguous()))
    return grids


def _side_distances(x, y, boxes):
    """(l, t, r, b): distances of points ``(x, y)`` to the sides of ``boxes``
    [..., 4] (broadcast), positive inside."""
    return x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y


def _is_inside(x, y, boxes):
    """Whether points ``(x, y)`` lie strictly inside ``boxes`` [..., 4]
    (broadcast): min(l, t, r, b) > 0.01."""
    l, t, r, b = _side_distances(x, y, boxes)
    return torch.minimum(torch.minimum(l, t), torch.minimum(r, b)) > _INSIDE_MARGIN


def _chunks(total, per_chunk):
    """(start, end) ranges of at most ``per_chunk`` (>= 1) items covering ``total``."""
    per_chunk = max(int(per_chunk), 1)
    return [(s, min(s + per_chunk, total)) for s in range(0, total, per_chunk)]


def _gt_chunks(num_gt, anchors, max_pairs):
    """Ranges of objects whose pairs with all ``anchors`` fit in ``max_pairs``
    (default: :data:`MAX_PAIRS_CPU` on CPU, :data:`MAX_PAIRS_GPU` elsewhere)."""
    if max_pairs is None:
        max_pairs = MAX_PAIRS_CPU if anchors.device.type == "cpu" else MAX_PAIRS_GPU
    return _chunks(num_gt, max_pairs // max(anchors.shape[0], 1))


def _keep_first_best(best_value, best_index, value, index, better):
    """Running arg-best over chunks of objects taken in order: a later chunk
    wins only when strictly ``better`` (``torch.gt`` / ``torch.lt``), so ties
    keep the lowest object index, as ``torch.max``/``torch.min`` over all
    objects at once would."""
    if best_value is None:
        return value, index
    wins = better(value, best_value)
    return torch.where(wins, value, best_value), torch.where(wins, index, best_index)


def _no_objects(anchors):
    """Every anchor negative, zero boxes: the result for an image without objects."""
    labels = torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device)
    return SampleSelection(labels, anchors.new_zeros(anchors.shape))


def _assign_highest_iou(num_anchors, candidate_idxs, candidate_ious, is_pos, gt_boxes, gt_labels, first_objects):
    """Resolve anchors claimed by several objects: the object of highest IoU,
    the lowest object index among equal IoUs (what ``torch.max`` returns).

    A batch of N images (N = 1 for one image): objects are concatenated
    image by image, ``first_objects`` [N] is the index of each image's first
    object (-1 for an image without objects), and ``candidate_idxs``,
    ``candidate_ious``, ``is_pos`` [G, K] hold each object's candidates as
    indices into the batch's N * num_anchors anchors (image-major), their
    IoUs and whether each is a positive. Anchors that no object claims are
    negatives matched to their image's first object (the reference's argmax
    over all -INF). Returns labels [N, num_anchors] and matched_boxes
    [N, num_anchors, 4] (zeros for an image without objects).
    """
    num_gt = gt_boxes.shape[0]
    num_images = first_objects.shape[0]
    total = num_images * num_anchors
    idx = candidate_idxs.reshape(-1)
    pos_ious = torch.where(is_pos, candidate_ious, candidate_ious.new_full((), -INF))
    best_iou = candidate_ious.new_full((total,), -INF).scatter_reduce(
        0, idx, pos_ious.reshape(-1), reduce="amax"
    )
    gt_index = torch.arange(num_gt, device=idx.device)[:, None].expand_as(candidate_idxs)
    is_best = is_pos & (candidate_ious == best_iou[candidate_idxs])
    no_gt = torch.full((), num_gt, dtype=torch.int64, device=idx.device)
    winner = torch.full((total,), num_gt, dtype=torch.int64, device=idx.device).scatter_reduce(
        0, idx, torch.where(is_best, gt_index, no_gt).reshape(-1), reduce="amin"
    )
    winner = winner.view(num_images, num_anchors)
    is_fg = winner < num_gt
    matched_gt = torch.where(is_fg, winner, first_objects.clamp(min=0)[:, None])
    labels = torch.where(is_fg, gt_labels.to(torch.int64)[matched_gt], torch.zeros_like(winner))
    matched_boxes = gt_boxes.index_select(0, matched_gt.reshape(-1)).view(num_images, num_anchors, 4)
    has_objects = (first_objects >= 0)[:, None, None]
    return SampleSelection(labels, torch.where(has_objects, matched_boxes, matched_boxes.new_zeros(())))


# --------------------------------------------------------------------------- #
# ATSS: Algorithm 1 of the paper
# --------------------------------------------------------------------------- #
def atss_candidates(anchors_per_level, gt_boxes, topk=9, num_anchors_per_location=1, max_pairs=None,
                    grid_sizes=None):
    """Lines 1-10 of Algorithm 1: each object's candidates and IoU threshold,
    for the objects of one image.

    Args:
        anchors_per_level (list[Tensor[A_l, 4]]): xyxy anchors of each level.
        gt_boxes (Tensor[G, 4]): xyxy objects, G >= 1.
        topk (int): candidates per level and per anchor of a location
            (``MODEL.ATSS.TOPK``, 9).
        num_anchors_per_location (int): A, anchors per feature location.
        max_pairs (int, optional): bound on the anchor-object pairs held at once.
        grid_sizes (list[(H_l, W_l)], optional): the feature map size of each
            level, when the anchors are :class:`AnchorGenerator`'s grids; the
            centre distances are then computed per row and column
            (:func:`_grid_center_distances`, same result, about 2x faster).

    Returns:
        candidate_idxs (Tensor[G, K] int64): indices into the concatenated
            anchors, level by level, nearest first within a level;
            K = sum over levels of min(topk * A, A_l).
        candidate_ious (Tensor[G, K]): IoU of each candidate with its object.
        iou_threshold (Tensor[G]): t_g, mean + unbiased std of candidate_ious[g].
    """
    candidate_idxs, candidate_ious = _candidates(
        anchors_per_level, gt_boxes, topk, num_anchors_per_location, max_pairs, grid_sizes
    )
    return candidate_idxs, candidate_ious, _iou_threshold(candidate_ious)


def _candidates(anchors_per_level, gt_boxes, topk, num_anchors_per_location, max_pairs, grid_sizes):
    """Lines 3-7 (see :func:`atss_candidates`) for any objects, of one image or
    of several: each object's search is its own. Returns candidate_idxs and
    candidate_ious, [G, K] each."""
    anchors = torch.cat(anchors_per_level, dim=0)
    gt_cx, gt_cy = anchor_centers(gt_boxes)  # [G] each
    if grid_sizes is not None:
        grids = _level_grids(anchors_per_level, grid_sizes, num_anchors_per_location)
    else:
        centers = [anchor_centers(level_anchors) for level_anchors in anchors_per_level]

    # Lines 3-6: per level, the k anchors whose centres are closest (L2) to
    # the object's centre are its candidates C_g; k = min(topk * A, A_l).
    num_gt = gt_boxes.shape[0]
    candidate_idxs, start = [], 0
    for level, level_anchors in enumerate(anchors_per_level):
        k = min(topk * num_anchors_per_location, level_anchors.shape[0])
        chunks = _gt_chunks(num_gt, level_anchors, max_pairs)  # [G_chunk, A_l] distances at a time
        if grid_sizes is not None:
            closest = _grid_closest(*grids[level], gt_cx, gt_cy, k, num_anchors_per_location, chunks)
        else:
            closest = torch.cat([
                _center_distances(*centers[level], gt_cx[s:e], gt_cy[s:e]).topk(k, dim=1, largest=False)[1]
                for s, e in chunks
            ])  # [G, k]
        candidate_idxs.append(closest + start)
        start += level_anchors.shape[0]
    candidate_idxs = torch.cat(candidate_idxs, dim=1)  # [G, K]

    # Line 7: D_g, the IoUs between the candidates and the object.
    candidate_ious = paired_box_iou(anchors[candidate_idxs], gt_boxes[:, None, :])  # [G, K]
    return candidate_idxs, candidate_ious


def _iou_threshold(candidate_ious):
    """Lines 8-10: t_g = m_g + v_g, the mean plus the unbiased standard
    deviation of each object's candidate IoUs, [G] from [G, K], the objects of
    ONE image. Reduced from a [K, G] tensor as the reference does: float32
    mean/std round differently for other shapes (another G included), and
    t_g is compared with IoUs."""
    ious_kg = candidate_ious.t().contiguous()
    return ious_kg.mean(dim=0) + ious_kg.std(dim=0)


def atss_select(anchors_per_level, gt_boxes, gt_labels, topk=9, num_anchors_per_location=1, max_pairs=None,
                grid_sizes=None):
    """Adaptive Training Sample Selection (Algorithm 1) of one image,
    vectorised over objects (:func:`atss_select_batch` of one image).

    Args:
        anchors_per_level (list[Tensor[A_l, 4]]): xyxy anchors of each level.
        gt_boxes (Tensor[G, 4]): xyxy objects; gt_labels (Tensor[G]): 1..C.
        topk, num_anchors_per_location, max_pairs, grid_sizes: see
            :func:`atss_candidates`.

    Returns:
        SampleSelection: labels [A_total] (0 or 1..C), matched_boxes [A_total, 4].
    """
    labels, matched_boxes = atss_select_batch(
        anchors_per_level, [gt_boxes], [gt_labels], topk, num_anchors_per_location, max_pairs, grid_sizes
    )
    return SampleSelection(labels[0], matched_boxes[0])


def atss_select_batch(anchors_per_level, gt_boxes_per_image, gt_labels_per_image, topk=9,
                      num_anchors_per_location=1, max_pairs=None, grid_sizes=None):
    """Algorithm 1 for a batch of images with the same anchors, vectorised
    over objects and images: every object of the batch looks for its
    candidates at once (each object's search is its own), the thresholds are
    reduced per image (as the reference rounds them), and the anchors claimed
    by several objects are resolved for all images at once.

    Args:
        anchors_per_level (list[Tensor[A_l, 4]]): xyxy anchors of each level.
        gt_boxes_per_image (list[Tensor[G_i, 4]]), gt_labels_per_image
            (list[Tensor[G_i]]): each image's objects, xyxy, labels 1..C.
        topk, num_anchors_per_location, max_pairs, grid_sizes: see
            :func:`atss_candidates`.

    Returns:
        SampleSelection: labels [N, A_total] (0 or 1..C), matched_boxes
        [N, A_total, 4] (zeros for an image without objects).
    """
    anchors = torch.cat(anchors_per_level, dim=0)
    num_images, num_anchors = len(gt_boxes_per_image), anchors.shape[0]
    counts = [boxes.shape[0] for boxes in gt_boxes_per_image]
    if sum(counts) == 0:
        empty = _no_objects(anchors)
        return SampleSelection(empty.labels.expand(num_images, -1).clone(),
                               empty.matched_boxes.expand(num_images, -1, -1).clone())
    gt_boxes = torch.cat(gt_boxes_per_image)  # [G, 4], image by image
    gt_labels = torch.cat(gt_labels_per_image)
    candidate_idxs, candidate_ious = _candidates(
        anchors_per_level, gt_boxes, topk, num_anchors_per_location, max_pairs, grid_sizes
    )

    # Lines 8-10, per image.
    starts = [0, *itertools.accumulate(counts)][:-1]
    iou_threshold = torch.cat([_iou_threshold(candidate_ious[s:s + n]) for s, n in zip(starts, counts) if n])

    # Lines 11-15: positives: candidates with IoU >= t_g whose centre is inside g.
    cx, cy = anchor_centers(anchors)
    is_inside = _is_inside(cx[candidate_idxs], cy[candidate_idxs], gt_boxes[:, None, :])
    is_pos = (candidate_ious >= iou_threshold[:, None]) & is_inside

    # An anchor selected by several objects of its image goes to the one of
    # highest IoU: resolved over the batch's anchors, image-major.
    image_of_object = torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(counts)])
    batch_idxs = candidate_idxs + (image_of_object.to(candidate_idxs.device) * num_anchors)[:, None]
    first_objects = torch.tensor([s if n else -1 for s, n in zip(starts, counts)], device=anchors.device)
    return _assign_highest_iou(num_anchors, batch_idxs, candidate_ious, is_pos, gt_boxes, gt_labels,
                               first_objects)


# --------------------------------------------------------------------------- #
# Comparison rules of the paper
# --------------------------------------------------------------------------- #
def ssc_select(anchors_per_level, gt_boxes, gt_labels, max_pairs=None):
    """FCOS's spatial and scale constraint (``POSITIVE_TYPE`` SSC).

    An anchor of level l is a positive of an object when its centre is inside
    the object and ``max(l, t, r, b)`` of its centre lies in
    ``SSC_OBJECT_SIZES[l]`` (both ends included); among several such objects
    the smallest (inclusive-pixel area) wins, the first of equal areas.

    Returns:
        SampleSelection: labels [A_total] (0 or 1..C), matched_boxes [A_total, 4].
    """
    if len(anchors_per_level) > len(SSC_OBJECT_SIZES):
        raise ValueError(f"SSC defines object sizes for {len(SSC_OBJECT_SIZES)} levels, got {len(anchors_per_level)}")
    anchors = torch.cat(anchors_per_level, dim=0)
    num_gt = gt_boxes.shape[0]
    if num_gt == 0:
        return _no_objects(anchors)
    cx, cy = anchor_centers(anchors)
    size_ranges = torch.cat(
        [cx.new_tensor(SSC_OBJECT_SIZES[l]).expand(a.shape[0], 2) for l, a in enumerate(anchors_per_level)]
    )  # [A_total, 2]
    min_size, max_size = size_ranges[:, 0].contiguous(), size_ranges[:, 1].contiguous()
    gt_areas = box_area(gt_boxes)  # [G]
    inf = gt_areas.new_full((), INF)

    # Smallest admissible object per anchor, over chunks of objects.
    min_area = gt_idx = None
    for s, e in _gt_chunks(num_gt, anchors, max_pairs):
        l, t, r, b = _side_distances(cx, cy, gt_boxes[s:e, None, :])  # each [G_chunk, A_total]
        is_inside = torch.minimum(torch.minimum(l, t), torch.minimum(r, b)) > _INSIDE_MARGIN
        max_side = torch.maximum(torch.maximum(l, t), torch.maximum(r, b))
        admissible = is_inside & (max_side >= min_size) & (max_side <= max_size)
        chunk_area, chunk_idx = torch.where(admissible, gt_areas[s:e, None], inf).min(dim=0)
        min_area, gt_idx = _keep_first_best(min_area, gt_idx, chunk_area, chunk_idx + s, torch.lt)
    labels = torch.where(min_area == INF, torch.zeros_like(gt_idx), gt_labels.to(torch.int64)[gt_idx])
    return SampleSelection(labels, gt_boxes.index_select(0, gt_idx))


def iou_select(anchors_per_level, gt_boxes, gt_labels, fg_iou_threshold=0.5, bg_iou_threshold=0.4,
               max_pairs=None):
    """RetinaNet's IoU rule (``POSITIVE_TYPE`` IoU), with low-quality matches.

    Each anchor takes the object it overlaps most (the first of equal IoUs).
    IoU >= ``fg_iou_threshold``: positive; < ``bg_iou_threshold``: negative;
    in between: ignored (-1). An anchor whose IoU with some object is that
    object's highest IoU over all anchors is kept matched to its own
    best-overlapping object whatever its IoU (the reference Matcher's
    ``allow_low_quality_matches``). Positives whose centre is not inside
    their object become ignored.

    Returns:
        SampleSelection: labels [A_total] (-1, 0 or 1..C), matched_boxes
        [A_total, 4] (negatives and between-threshold anchors: object 0).
    """
    if bg_iou_threshold > fg_iou_threshold:
        raise ValueError(f"bg_iou_threshold {bg_iou_threshold} > fg_iou_threshold {fg_iou_threshold}")
    anchors = torch.cat(anchors_per_level, dim=0)
    num_gt = gt_boxes.shape[0]
    if num_gt == 0:
        return _no_objects(anchors)

    # One pass over chunks of objects: each anchor's best object, and whether
    # the anchor is the best anchor of some object (low-quality match).
    best_iou = best_gt = is_low_quality = None
    for s, e in _gt_chunks(num_gt, anchors, max_pairs):
        ious = box_iou(gt_boxes[s:e], anchors)  # [G_chunk, A_total]
        chunk_iou, chunk_gt = ious.max(dim=0)
        best_iou, best_gt = _keep_first_best(best_iou, best_gt, chunk_iou, chunk_gt + s, torch.gt)
        chunk_low_quality = (ious == ious.max(dim=1, keepdim=True).values).any(dim=0)
        is_low_quality = chunk_low_quality if is_low_quality is None else is_low_quality | chunk_low_quality

    labels = gt_labels.to(torch.int64)[best_gt]
    is_bg = (best_iou < bg_iou_threshold) & ~is_low_quality
    is_between = (best_iou >= bg_iou_threshold) & (best_iou < fg_iou_threshold) & ~is_low_quality
    is_matched = ~(is_bg | is_between)
    matched_gt = torch.where(is_matched, best_gt, torch.zeros_like(best_gt))
    matched_boxes = gt_boxes.index_select(0, matched_gt)

    is_pos = is_matched & (labels > 0)
    is_ignored = is_between | (is_pos & ~_is_inside(*anchor_centers(anchors), matched_boxes))
    labels = torch.where(is_bg, torch.zeros_like(labels), labels)
    labels = torch.where(is_ignored, torch.full_like(labels, -1), labels)
    return SampleSelection(labels, matched_boxes)


def topk_select(anchors_per_level, gt_boxes, gt_labels, topk=9, max_pairs=None):
    """Fixed top-k selection (``POSITIVE_TYPE`` TOPK).

    Per object, the ``topk`` anchors of all levels with the highest
    ``IoU - d / max(d) / 1000`` (d: centre distance, max over all anchors and
    objects of the image) whose centre is inside the object are positives;
    an anchor claimed by several objects goes to the one of highest IoU.

    Returns:
        SampleSelection: labels [A_total] (0 or 1..C), matched_boxes [A_total, 4].
    """
    anchors = torch.cat(anchors_per_level, dim=0)
    num_gt = gt_boxes.shape[0]
    if num_gt == 0:
        return _no_objects(anchors)
    cx, cy = anchor_centers(anchors)
    gt_cx, gt_cy = anchor_centers(gt_boxes)
    chunks = _gt_chunks(num_gt, anchors, max_pairs)

    def distances_of(s, e):
        return _center_distances(cx, cy, gt_cx[s:e], gt_cy[s:e])  # [G_chunk, A_total]

    if len(chunks) == 1:
        all_distances = distances_of(0, num_gt)
        max_distance = all_distances.max()
    else:
        all_distances = None
        max_distance = torch.stack([distances_of(s, e).max() for s, e in chunks]).max()

    candidate_idxs, candidate_ious = [], []
    for s, e in chunks:
        distances = all_distances if all_distances is not None else distances_of(s, e)
        ious = box_iou(gt_boxes[s:e], anchors)  # [G_chunk, A_total]
        _, top = (ious - distances / max_distance / 1000).topk(topk, dim=1)
        candidate_idxs.append(top)
        candidate_ious.append(ious.gather(1, top))
    candidate_idxs = torch.cat(candidate_idxs)
    candidate_ious = torch.cat(candidate_ious)
    is_pos = _is_inside(cx[candidate_idxs], cy[candidate_idxs], gt_boxes[:, None, :])
    first_object = torch.zeros(1, dtype=torch.int64, device=anchors.device)
    labels, matched_boxes = _assign_highest_iou(
        anchors.shape[0], candidate_idxs, candidate_ious, is_pos, gt_boxes, gt_labels, first_object
    )
    return SampleSelection(labels[0], matched_boxes[0])


# --------------------------------------------------------------------------- #
# Dispatch
# --------------------------------------------------------------------------- #
def select_samples(anchors_per_level, gt_boxes, gt_labels, positive_type="ATSS", topk=9,
                   num_anchors_per_location=1, fg_iou_threshold=0.5, bg_iou_threshold=0.4,
                   max_pairs=None, grid_sizes=None):
    """Training assignment of one image by the rule ``positive_type`` (see
    :data:`POSITIVE_TYPES` and the module docstring). ``grid_sizes``: see
    :func:`atss_candidates` (used by ATSS)."""
    gt_boxes = gt_boxes.to(device=anchors_per_level[0].device, dtype=anchors_per_level[0].dtype)
    gt_labels = gt_labels.to(anchors_per_level[0].device)
    if positive_type == "ATSS":
        return atss_select(anchors_per_level, gt_boxes, gt_labels, topk, num_anchors_per_location, max_pairs,
                           grid_sizes)
    if positive_type == "SSC":
        return ssc_select(anchors_per_level, gt_boxes, gt_labels, max_pairs)
    if positive_type == "IoU":
        return iou_select(anchors_per_level, gt_boxes, gt_labels, fg_iou_threshold, bg_iou_threshold, max_pairs)
    if positive_type == "TOPK":
        return topk_select(anchors_per_level, gt_boxes, gt_labels, topk, max_pairs)
    raise ValueError(f"positive_type must be one of {POSITIVE_TYPES}, got {positive_type!r}")


class SampleSelector:
    """:func:`select_samples` with its options fixed, over a batch of images.

    ``selector(anchors_per_level, targets, grid_sizes=None)``:
    ``anchors_per_level`` the list over levels of [A_l, 4] anchors (the same
    for every image), ``targets`` a list of :class:`BoxList` (xyxy, field
    ``labels``) or of ``(gt_boxes [G, 4], gt_labels [G])`` pairs,
    ``grid_sizes`` the (H_l, W_l) of each level when the anchors are
    :class:`AnchorGenerator`'s (faster; see :func:`atss_candidates`). Returns
    a SampleSelection of ``labels`` [N, A_total] and ``matched_boxes``
    [N, A_total, 4].
    """

    def __init__(self, positive_type="ATSS", topk=9, num_anchors_per_location=1, fg_iou_threshold=0.5,
                 bg_iou_threshold=0.4, max_pairs=None):
        if positive_type not in POSITIVE_TYPES:
            raise ValueError(f"positive_type must be one of {POSITIVE_TYPES}, got {positive_type!r}")
        self.positive_type = positive_type
        self.topk = int(topk)
        self.num_anchors_per_location = int(num_anchors_per_location)
        self.fg_iou_threshold = float(fg_iou_threshold)
        self.bg_iou_threshold = float(bg_iou_threshold)
        self.max_pairs = None if max_pairs is None else int(max_pairs)

    def select_image(self, anchors_per_level, gt_boxes, gt_labels, grid_sizes=None):
        """SampleSelection of one image (labels [A_total], matched_boxes [A_total, 4])."""
        return select_samples(
            anchors_per_level, gt_boxes, gt_labels, self.positive_type, self.topk,
            self.num_anchors_per_location, self.fg_iou_threshold, self.bg_iou_threshold, self.max_pairs,
            grid_sizes,
        )

    def __call__(self, anchors_per_level, targets, grid_sizes=None):
        boxes_and_labels = []
        for target in targets:
            if isinstance(target, (tuple, list)):
                gt_boxes, gt_labels = target
            else:
                if target.mode != "xyxy":
                    raise ValueError(f"targets must be xyxy BoxLists, got mode {target.mode!r}")
                gt_boxes, gt_labels = target.bbox, target.get_field("labels")
            device, dtype = anchors_per_level[0].device, anchors_per_level[0].dtype
            boxes_and_labels.append((gt_boxes.to(device=device, dtype=dtype), gt_labels.to(device)))
        if self.positive_type == "ATSS":
            return atss_select_batch(
                anchors_per_level, [b for b, _ in boxes_and_labels], [l for _, l in boxes_and_labels],
                self.topk, self.num_anchors_per_location, self.max_pairs, grid_sizes,
            )
        results = [self.select_image(anchors_per_level, b, l, grid_sizes) for b, l in boxes_and_labels]
        return SampleSelection(
            torch.stack([r.labels for r in results]), torch.stack([r.matched_boxes for r in results])
        )

    def __repr__(self):
        return (f"{type(self).__name__}(positive_type={self.positive_type!r}, topk={self.topk}, "
                f"num_anchors_per_location={self.num_anchors_per_location}, "
                f"fg_iou_threshold={self.fg_iou_threshold}, bg_iou_threshold={self.bg_iou_threshold})")


def make_sample_selector(cfg):
    """SampleSelector from ``cfg.MODEL.ATSS`` (POSITIVE_TYPE, TOPK, anchors per
    location = len(ASPECT_RATIOS) * SCALES_PER_OCTAVE, IoU thresholds)."""
    atss = cfg.MODEL.ATSS
    return SampleSelector(
        positive_type=atss.POSITIVE_TYPE,
        topk=atss.TOPK,
        num_anchors_per_location=len(atss.ASPECT_RATIOS) * atss.SCALES_PER_OCTAVE,
        fg_iou_threshold=atss.FG_IOU_THRESHOLD,
        bg_iou_threshold=atss.BG_IOU_THRESHOLD,
    )

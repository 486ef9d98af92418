"""Anchors of the ATSS head: a few square (or ratio) boxes per feature location.

One level per FPN output (P3..P7). Level ``l`` with stride ``s_l`` and base size
``S_l`` (``MODEL.ATSS.ANCHOR_SIZES``, 8 x stride in the paper) has, at every
location, ``len(ASPECT_RATIOS) * SCALES_PER_OCTAVE`` cell anchors of sizes
``S_l * OCTAVE ** (i / SCALES_PER_OCTAVE)``.

Anchors are xyxy in input-image pixels with the reference's inclusive-pixel
convention: the cell anchor of size S is centred on (s / 2, s / 2) (the centre
of the Detectron base window (0.5, 0.5, s - 0.5, s - 0.5)),
e.g. stride 8, size 64 gives (-27.5, -27.5, 35.5, 35.5). The anchors of a level
are ordered by location (row-major: y, then x) and then by cell anchor, the
order of the head outputs after :func:`permute_and_flatten`.
"""
import numpy as np
import torch
from torch import nn


def cell_anchors_for_level(stride, sizes, aspect_ratios):
    """Cell anchors [len(aspect_ratios) * len(sizes), 4] (float32) centred on
    the first location of a level of ``stride``; ratio-major, then size.

    Follows the Detectron recipe: start from the ``stride`` x ``stride`` box,
    for each aspect ratio h/w round the width to an integer keeping the area,
    then scale to each size.
    """
    base = float(stride)
    centre = 0.5 * base
    ratios = np.asarray(aspect_ratios, dtype=np.float64)
    widths = np.round(np.sqrt(base * base / ratios))
    heights = np.round(widths * ratios)
    scales = np.asarray(sizes, dtype=np.float64) / base
    ws = (widths[:, None] * scales[None, :]).reshape(-1)
    hs = (heights[:, None] * scales[None, :]).reshape(-1)
    anchors = np.stack(
        [centre - 0.5 * (ws - 1), centre - 0.5 * (hs - 1), centre + 0.5 * (ws - 1), centre + 0.5 * (hs - 1)],
        axis=1,
    )
    return torch.from_numpy(anchors).float()


class AnchorGenerator(nn.Module):
    """Anchors for every location of every feature map.

    The cell anchors are buffers named ``cell_anchors.<level>`` (as in the
    reference's checkpoints).
    """

    def __init__(self, sizes_per_level, aspect_ratios, strides):
        super().__init__()
        if len(sizes_per_level) != len(strides):
            raise ValueError("one tuple of anchor sizes is needed per stride")
        self.strides = tuple(int(s) for s in strides)
        self.cell_anchors = nn.Module()
        for level, (stride, sizes) in enumerate(zip(strides, sizes_per_level)):
            self.cell_anchors.register_buffer(
                str(level), cell_anchors_for_level(stride, sizes, aspect_ratios)
            )

    def num_anchors_per_location(self):
        return [len(b) for b in self.cell_anchors.buffers()]

    def forward(self, feature_shapes, device=None):
        """``feature_shapes``: (H_l, W_l) per level (or the feature maps).
        Returns a list over levels of xyxy anchors [H_l * W_l * A, 4]."""
        anchors = []
        for level, shape in enumerate(feature_shapes):
            height, width = (shape.shape[-2:] if isinstance(shape, torch.Tensor) else shape)
            stride = self.strides[level]
            cell = getattr(self.cell_anchors, str(level))
            dev = cell.device if device is None else device
            xs = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=dev)
            ys = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=dev)
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + cell.to(dev).reshape(1, -1, 4)).reshape(-1, 4))
        return anchors


def make_anchor_generator(cfg):
    atss = cfg.MODEL.ATSS
    sizes_per_level = [
        tuple(size * atss.OCTAVE ** (i / float(atss.SCALES_PER_OCTAVE)) for i in range(atss.SCALES_PER_OCTAVE))
        for size in atss.ANCHOR_SIZES
    ]
    return AnchorGenerator(sizes_per_level, atss.ASPECT_RATIOS, atss.ANCHOR_STRIDES)

"""Feature pyramid network with the RetinaNet P6/P7 levels."""
import torch.nn.functional as F
from torch import nn

from atss_core.layers import Conv2d

from .resnet import make_norm


def _fpn_conv(in_channels, out_channels, kernel_size, use_gn, use_relu, cfg):
    """Conv (kaiming-uniform, a=1) optionally followed by GroupNorm and ReLU."""
    conv = Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not use_gn)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if not use_gn:
        nn.init.constant_(conv.bias, 0)
    if not (use_gn or use_relu):
        return conv
    layers = [conv]
    if use_gn:
        layers.append(make_norm("gn", out_channels, cfg))
    if use_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(x), P7 = conv3x3/2(relu(P6)), where x is P5 when its channel
    count equals the output's (``RETINANET.USE_C5`` False) and C5 otherwise."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.p6 = Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)
        self.use_p5 = in_channels == out_channels

    def forward(self, c5, p5):
        p6 = self.p6(p5 if self.use_p5 else c5)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class FPN(nn.Module):
    """Top-down pyramid over body features.

    ``in_channels_list`` has one entry per body output (C2..C5); an entry of 0
    leaves that level out (ATSS uses C3..C5). Level ``i`` (1-based) has the
    lateral 1x1 conv ``fpn_inner{i}`` and the output 3x3 conv ``fpn_layer{i}``.
    ``forward`` returns [P3, P4, P5, P6, P7] (each ``out_channels`` wide).
    """

    def __init__(self, in_channels_list, out_channels, top_blocks, use_gn=False, use_relu=False, cfg=None):
        super().__init__()
        self.levels = []
        for idx, in_channels in enumerate(in_channels_list, start=1):
            if in_channels == 0:
                continue
            self.add_module(f"fpn_inner{idx}", _fpn_conv(in_channels, out_channels, 1, use_gn, use_relu, cfg))
            self.add_module(f"fpn_layer{idx}", _fpn_conv(out_channels, out_channels, 3, use_gn, use_relu, cfg))
            self.levels.append(idx)
        self.top_blocks = top_blocks

    def forward(self, features):
        """``features``: body outputs aligned with ``in_channels_list``."""
        selected = [features[idx - 1] for idx in self.levels]
        last_inner = getattr(self, f"fpn_inner{self.levels[-1]}")(selected[-1])
        results = [getattr(self, f"fpn_layer{self.levels[-1]}")(last_inner)]
        for idx, feature in zip(reversed(self.levels[:-1]), reversed(selected[:-1])):
            lateral = getattr(self, f"fpn_inner{idx}")(feature)
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, getattr(self, f"fpn_layer{idx}")(last_inner))
        results.extend(self.top_blocks(features[-1], results[-1]))
        return results

"""ResNet and ResNeXt bodies, Caffe2/MSRA style, returning C2..C5.

Parameter names follow the reference (and torchvision): ``stem.conv1``,
``stem.bn1``, ``layer{1..4}.{block}.conv{1,2,3}`` / ``bn{1,2,3}`` /
``downsample.{0,1}``. Normalisation is frozen batch norm (or GroupNorm); the
3x3 conv of a stage with DCN is a :class:`DFConv2d` (``conv2.offset``,
``conv2.conv``).

``MODEL.RESNETS.STRIDE_IN_1X1`` puts the stride of a downsampling bottleneck in
its first 1x1 conv (the original MSRA ResNets) instead of the 3x3 conv (FAIR
ResNeXt, torchvision).
"""
from collections import namedtuple

import torch.nn.functional as F
from torch import nn

from atss_core.layers import Conv2d, DFConv2d, FrozenBatchNorm2d, conv_norm

# Blocks per stage res2..res5 and the kind of block.
StageSpec = namedtuple("StageSpec", ["block_counts", "block"])

_BOTTLENECK_DEPTHS = {"R-50": (3, 4, 6, 3), "R-101": (3, 4, 23, 3), "R-152": (3, 8, 36, 3)}
_BASIC_DEPTHS = {"R-18": (2, 2, 2, 2), "R-34": (3, 4, 6, 3)}

# CONV_BODY names: the reference's FPN bodies (ResNeXt uses the R-101 names with
# NUM_GROUPS / WIDTH_PER_GROUP) plus ResNet-18/34 (atss extension).
STAGE_SPECS = {}
for _depth, _counts in _BOTTLENECK_DEPTHS.items():
    for _suffix in ("-FPN", "-FPN-RETINANET"):
        STAGE_SPECS[_depth + _suffix] = StageSpec(_counts, "bottleneck")
for _depth, _counts in _BASIC_DEPTHS.items():
    for _suffix in ("-FPN", "-FPN-RETINANET"):
        STAGE_SPECS[_depth + _suffix] = StageSpec(_counts, "basic")

# TRANS_FUNC / STEM_FUNC names -> (block kind, norm kind).
_TRANS_FUNCS = {
    "BottleneckWithFixedBatchNorm": ("bottleneck", "frozen_bn"),
    "BottleneckWithGN": ("bottleneck", "gn"),
    "BasicBlockWithFixedBatchNorm": ("basic", "frozen_bn"),
    "BasicBlockWithGN": ("basic", "gn"),
}
_STEM_FUNCS = {"StemWithFixedBatchNorm": "frozen_bn", "StemWithGN": "gn"}


def make_norm(kind, num_channels, cfg=None):
    """Frozen batch norm, or GroupNorm as configured by ``MODEL.GROUP_NORM``."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(num_channels)
    gn = cfg.MODEL.GROUP_NORM
    if gn.DIM_PER_GP > 0:
        groups = num_channels // gn.DIM_PER_GP
    else:
        groups = gn.NUM_GROUPS
    if num_channels % groups != 0:
        raise ValueError(f"GroupNorm: {num_channels} channels do not split into {groups} groups")
    return nn.GroupNorm(groups, num_channels, eps=gn.EPSILON)


def _conv3x3(in_channels, out_channels, stride, groups, dilation, dcn):
    if dcn is not None:
        return DFConv2d(
            in_channels, out_channels, with_modulated_dcn=dcn["modulated"], kernel_size=3,
            stride=stride, groups=groups, padding=dilation, dilation=dilation,
            deformable_groups=dcn["deformable_groups"], bias=False,
        )
    conv = Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation,
                     dilation=dilation, groups=groups, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return conv


def _conv1x1(in_channels, out_channels, stride=1):
    conv = Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return conv


def _shortcut(downsample, x):
    """The identity, or ``downsample`` = Sequential(1x1 conv, norm) applied to ``x``."""
    return x if downsample is None else conv_norm(downsample[0], downsample[1], x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped, optionally deformable) -> 1x1, plus the shortcut.
    Each conv's frozen batch norm is folded into it (:func:`conv_norm`)."""

    def __init__(self, in_channels, bottleneck_channels, out_channels, num_groups, stride_in_1x1,
                 stride, norm, dcn=None):
        super().__init__()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride), norm(out_channels))
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv1x1(in_channels, bottleneck_channels, stride_1x1)
        self.bn1 = norm(bottleneck_channels)
        self.conv2 = _conv3x3(bottleneck_channels, bottleneck_channels, stride_3x3, num_groups, 1, dcn)
        self.bn2 = norm(bottleneck_channels)
        self.conv3 = _conv1x1(bottleneck_channels, out_channels)
        self.bn3 = norm(out_channels)

    def forward(self, x):
        identity = _shortcut(self.downsample, x)
        out = F.relu_(conv_norm(self.conv1, self.bn1, x))
        out = F.relu_(conv_norm(self.conv2, self.bn2, out))
        out = conv_norm(self.conv3, self.bn3, out)
        return F.relu_(out.add_(identity))


class BasicBlock(nn.Module):
    """3x3 -> 3x3 (the second optionally deformable), plus the shortcut
    (ResNet-18/34)."""

    def __init__(self, in_channels, bottleneck_channels, out_channels, num_groups, stride_in_1x1,
                 stride, norm, dcn=None):
        super().__init__()
        if num_groups != 1:
            raise ValueError("basic blocks (ResNet-18/34) need MODEL.RESNETS.NUM_GROUPS 1")
        self.downsample = None
        if in_channels != out_channels or stride != 1:
            self.downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride), norm(out_channels))
        self.conv1 = _conv3x3(in_channels, out_channels, stride, 1, 1, None)
        self.bn1 = norm(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, 1, 1, 1, dcn)
        self.bn2 = norm(out_channels)

    def forward(self, x):
        identity = _shortcut(self.downsample, x)
        out = F.relu_(conv_norm(self.conv1, self.bn1, x))
        out = conv_norm(self.conv2, self.bn2, out)
        return F.relu_(out.add_(identity))


class Stem(nn.Module):
    """7x7/2 conv, norm, ReLU, 3x3/2 max pool."""

    def __init__(self, out_channels, norm):
        super().__init__()
        self.conv1 = Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_uniform_(self.conv1.weight, a=1)
        self.bn1 = norm(out_channels)

    def forward(self, x):
        x = F.relu_(conv_norm(self.conv1, self.bn1, x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet/ResNeXt body: ``forward(x [N, 3, H, W])`` returns [C2, C3, C4, C5]
    with strides 4, 8, 16, 32."""

    def __init__(self, cfg):
        super().__init__()
        r = cfg.MODEL.RESNETS
        body = cfg.MODEL.BACKBONE.CONV_BODY
        if body not in STAGE_SPECS:
            raise ValueError(
                f"MODEL.BACKBONE.CONV_BODY {body!r} is not an FPN ResNet body; choose one of "
                + ", ".join(sorted(STAGE_SPECS))
            )
        if r.TRANS_FUNC not in _TRANS_FUNCS:
            raise ValueError(f"MODEL.RESNETS.TRANS_FUNC must be one of {sorted(_TRANS_FUNCS)}, got {r.TRANS_FUNC!r}")
        if r.STEM_FUNC not in _STEM_FUNCS:
            raise ValueError(f"MODEL.RESNETS.STEM_FUNC must be one of {sorted(_STEM_FUNCS)}, got {r.STEM_FUNC!r}")
        spec = STAGE_SPECS[body]
        block_kind, norm_kind = _TRANS_FUNCS[r.TRANS_FUNC]
        if block_kind != spec.block:
            raise ValueError(
                f"MODEL.BACKBONE.CONV_BODY {body} uses {spec.block} blocks but "
                f"MODEL.RESNETS.TRANS_FUNC is {r.TRANS_FUNC}"
            )
        block = Bottleneck if block_kind == "bottleneck" else BasicBlock

        def norm(c):
            return make_norm(norm_kind, c, cfg)

        self.stem = Stem(r.STEM_OUT_CHANNELS, lambda c: make_norm(_STEM_FUNCS[r.STEM_FUNC], c, cfg))
        in_channels = r.STEM_OUT_CHANNELS
        bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
        out_channels = r.RES2_OUT_CHANNELS
        self.stage_names = []
        for index, count in enumerate(spec.block_counts):
            dcn = None
            if r.STAGE_WITH_DCN[index]:
                dcn = {"modulated": r.WITH_MODULATED_DCN, "deformable_groups": r.DEFORMABLE_GROUPS}
            blocks = []
            for i in range(count):
                stride = 2 if (i == 0 and index > 0) else 1
                blocks.append(block(in_channels, bottleneck_channels, out_channels, r.NUM_GROUPS,
                                    r.STRIDE_IN_1X1, stride, norm, dcn))
                in_channels = out_channels
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            bottleneck_channels *= 2
            out_channels *= 2
        self._freeze(cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT)

    def _freeze(self, freeze_at):
        """No gradient for the stem (0) and stages 1..freeze_at-1."""
        for index in range(max(freeze_at, 0)):
            module = self.stem if index == 0 else getattr(self, f"layer{index}")
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x):
        x = self.stem(x)
        outputs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outputs.append(x)
        return outputs

"""Backbone = ResNet/ResNeXt body + FPN: images [N, 3, H, W] -> [P3, ..., P7]."""
from collections import OrderedDict

from torch import nn

from .fpn import FPN, LastLevelP6P7
from .resnet import STAGE_SPECS, ResNet


def build_backbone(cfg):
    """``nn.Sequential(body, fpn)`` with ``out_channels``; its forward returns the
    list of P3..P7 features (strides 8..128)."""
    body = ResNet(cfg)
    res2 = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    out_channels = cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS
    p6p7_in = res2 * 8 if cfg.MODEL.RETINANET.USE_C5 else out_channels
    fpn = FPN(
        in_channels_list=[0, res2 * 2, res2 * 4, res2 * 8],
        out_channels=out_channels,
        top_blocks=LastLevelP6P7(p6p7_in, out_channels),
        use_gn=cfg.MODEL.FPN.USE_GN,
        use_relu=cfg.MODEL.FPN.USE_RELU,
        cfg=cfg,
    )
    model = nn.Sequential(OrderedDict([("body", body), ("fpn", fpn)]))
    model.out_channels = out_channels
    return model


__all__ = ["build_backbone", "STAGE_SPECS", "ResNet", "FPN", "LastLevelP6P7"]

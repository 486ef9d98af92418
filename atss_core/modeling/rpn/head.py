"""The ATSS head: shared convolutional towers over every FPN level."""
import math

import torch.nn.functional as F
from torch import nn

from atss_core.layers import Conv2d, DFConv2d, Scale


class ATSSHead(nn.Module):
    """Classification and box towers (``NUM_CONVS`` x [3x3 conv, GroupNorm(32),
    ReLU], the last conv deformable when ``USE_DCN_IN_TOWER``), then

    * ``cls_logits``: A * (NUM_CLASSES - 1) class logits per location,
    * ``bbox_pred``: A * 4 box regression outputs, times a learnable ``Scale``
      per level (ReLU-ed for ``REGRESSION_TYPE`` POINT),
    * ``centerness``: A centerness logits, from the box tower,

    with A anchors per location. The towers and predictors are shared by all
    levels. Initialisation: convs N(0, 0.01), biases 0, the class bias set to
    -log((1 - PRIOR_PROB) / PRIOR_PROB), the POINT regression bias 4;
    deformable-conv offsets start at zero.
    """

    def __init__(self, cfg, in_channels):
        super().__init__()
        atss = cfg.MODEL.ATSS
        num_classes = atss.NUM_CLASSES - 1
        num_anchors = len(atss.ASPECT_RATIOS) * atss.SCALES_PER_OCTAVE
        self.regression_type = atss.REGRESSION_TYPE
        self.num_levels = len(atss.ANCHOR_STRIDES)

        def tower():
            layers = []
            for i in range(atss.NUM_CONVS):
                if atss.USE_DCN_IN_TOWER and i == atss.NUM_CONVS - 1:
                    conv = DFConv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1, bias=True)
                else:
                    conv = Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1, bias=True)
                layers += [conv, nn.GroupNorm(32, in_channels), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.bbox_tower = tower()
        self.cls_logits = Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.centerness = Conv2d(in_channels, num_anchors, 3, padding=1)

        # Every nn.Conv2d of the head, the offset convs of the DCN towers included,
        # starts from N(0, 0.01) with zero bias (the reference's initialisation); the
        # deformable convolutions themselves keep their own (ModulatedDeformConv).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - atss.PRIOR_PROB) / atss.PRIOR_PROB))
        if self.regression_type == "POINT":
            nn.init.constant_(self.bbox_pred.bias, 4)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(self.num_levels)])

    def forward(self, features):
        """``features``: list over levels of [N, C, H_l, W_l]. Returns
        ``(cls_logits, bbox_reg, centerness)``, each a list over levels of
        [N, A*(NUM_CLASSES-1), H_l, W_l], [N, A*4, H_l, W_l], [N, A, H_l, W_l]."""
        logits, bbox_reg, centerness = [], [], []
        for level, feature in enumerate(features):
            cls_feature = self.cls_tower(feature)
            box_feature = self.bbox_tower(feature)
            logits.append(self.cls_logits(cls_feature))
            reg = self.scales[level](self.bbox_pred(box_feature))
            if self.regression_type == "POINT":
                reg = F.relu(reg)
            bbox_reg.append(reg)
            centerness.append(self.centerness(box_feature))
        return logits, bbox_reg, centerness

"""The ATSS module: head + anchors, with the loss in training and the
post-processor in inference."""
from torch import nn

from .anchor_generator import make_anchor_generator
from .box_coder import make_box_coder
from .head import ATSSHead
from .inference import make_atss_postprocessor
from .loss import make_atss_loss_evaluator


class ATSSModule(nn.Module):
    """``forward(images, features, targets=None)``: ``features`` the list of
    P3..P7 maps. Training returns the loss dict (``loss_cls``, ``loss_reg``,
    ``loss_centerness``); inference returns one BoxList per image."""

    def __init__(self, cfg, in_channels):
        super().__init__()
        self.head = ATSSHead(cfg, in_channels)
        self.anchor_generator = make_anchor_generator(cfg)
        box_coder = make_box_coder(cfg)
        self.loss_evaluator = make_atss_loss_evaluator(cfg, box_coder)
        self.box_selector_test = make_atss_postprocessor(cfg, box_coder)

    def forward(self, images, features, targets=None):
        box_cls, box_regression, centerness = self.head(features)
        anchors = self.anchor_generator(features)
        if self.training:
            loss_cls, loss_reg, loss_centerness = self.loss_evaluator(
                box_cls, box_regression, centerness, targets, anchors
            )
            return {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_centerness": loss_centerness}
        # In fp32 whatever the head's dtype (TEST.MIXED_PRECISION): scores are
        # compared with thresholds and boxes decoded at up to ~1000 px.
        return self.box_selector_test(
            [c.float() for c in box_cls], [r.float() for r in box_regression], [c.float() for c in centerness],
            anchors, images.image_sizes,
        )

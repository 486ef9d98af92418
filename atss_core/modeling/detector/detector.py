"""The ATSS detector: backbone (ResNet/ResNeXt + FPN) and the ATSS module."""
from torch import nn

from atss_core.structures.image_list import to_image_list

from ..backbone import build_backbone
from ..rpn.atss import ATSSModule


class ATSSDetector(nn.Module):
    """``model(images, targets=None)``.

    * ``images``: an :class:`ImageList`, a [N, 3, H, W] tensor or a list of
      [3, H, W] tensors, already normalised (see ``INPUT.*``).
    * training: ``targets`` is a list of BoxList (xyxy in input pixels, field
      ``labels`` int64 in 1..NUM_CLASSES-1); returns ``{"loss_cls",
      "loss_reg", "loss_centerness"}``.
    * inference: returns one BoxList per image, xyxy in input pixels, fields
      ``scores`` and ``labels``.

    ``model.backbone(tensor)`` gives the P3..P7 features and
    ``model.rpn.head(features)`` the raw head outputs.
    """

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.rpn = ATSSModule(cfg, self.backbone.out_channels)
        self.size_divisibility = cfg.DATALOADER.SIZE_DIVISIBILITY

    def forward(self, images, targets=None):
        if self.training and targets is None:
            raise ValueError("in training mode the model needs targets: model(images, targets)")
        images = to_image_list(images, self.size_divisibility)
        features = self.backbone(images.tensors)
        return self.rpn(images, features, targets)

"""The ATSS detector: backbone (ResNet/ResNeXt + FPN) and the ATSS module."""
import contextlib

import torch
from torch import nn

from atss_core.layers import set_winograd
from atss_core.structures.image_list import to_image_list
from atss_core.utils.amp import autocast_dtype

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

    Memory format: with ``MODEL.CHANNELS_LAST`` (default) the convolution
    weights are channels-last (NHWC) tensors and ``forward`` converts the
    input once, so every feature map from the stem to the head outputs stays
    channels-last, the layout oneDNN and cuDNN convolve fastest (about 1.4x
    faster inference on a CPU; tests/test_fast_paths.py holds the outputs to
    the contiguous model's). Shapes, values and state-dict names do not change.
    With ``MODEL.WINOGRAD`` (default) the large 3x3 convolutions run through
    NNPACK on the CPU (:mod:`atss_core.layers.conv`) and give NCHW outputs, so
    on the CPU those layers' outputs (the head's at P3 and P4, for example)
    are contiguous.

    Precision: in eval mode the forward runs under autocast to the dtype of
    ``TEST.MIXED_PRECISION`` ("none": fp32), with the post-processing in fp32.
    """

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.rpn = ATSSModule(cfg, self.backbone.out_channels)
        self.size_divisibility = cfg.DATALOADER.SIZE_DIVISIBILITY
        self.memory_format = torch.channels_last if cfg.MODEL.CHANNELS_LAST else torch.contiguous_format
        self.to(memory_format=self.memory_format)
        set_winograd(self, cfg.MODEL.WINOGRAD)
        self.test_amp_dtype = autocast_dtype(
            cfg.TEST.MIXED_PRECISION, torch.device(cfg.MODEL.DEVICE), "TEST.MIXED_PRECISION"
        )

    def forward(self, images, targets=None):
        if self.training and targets is None:
            raise ValueError("in training mode the model needs targets: model(images, targets)")
        images = to_image_list(images, self.size_divisibility)
        x = images.tensors.contiguous(memory_format=self.memory_format)
        amp = None if self.training else self.test_amp_dtype
        with contextlib.nullcontext() if amp is None else torch.autocast(x.device.type, dtype=amp):
            features = self.backbone(x)
            return self.rpn(images, features, targets)

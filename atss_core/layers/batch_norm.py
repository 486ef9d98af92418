"""Batch norm with frozen statistics and affine parameters."""
import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose ``weight``, ``bias``, ``running_mean`` and
    ``running_var`` are fixed buffers (the ImageNet statistics of a pretrained
    backbone): y = (x - running_mean) * weight / sqrt(running_var) + bias.

    As in the reference (and the Caffe2 models whose folded statistics it
    loads), no epsilon is added to ``running_var``.
    """

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        scale = self.weight * self.running_var.rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).reshape(1, -1, 1, 1) + shift.to(x.dtype).reshape(1, -1, 1, 1)

    def extra_repr(self):
        return str(self.num_features)

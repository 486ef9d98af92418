"""Batch norm with frozen statistics and affine parameters, and its folding
into the convolution before it."""
import torch
from torch import nn

from .conv import Conv2d, conv2d


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose ``weight``, ``bias``, ``running_mean`` and
    ``running_var`` are fixed buffers (the ImageNet statistics of a pretrained
    backbone): y = (x - running_mean) * weight / sqrt(running_var) + bias,
    i.e. ``y = x * scale + shift`` per channel (:meth:`scale_and_shift`).

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

    def scale_and_shift(self):
        """``(scale, shift)``, each [C]: the normalisation is ``x * scale + shift``."""
        scale = self.weight * self.running_var.rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x):
        scale, shift = self.scale_and_shift()
        return x * scale.to(x.dtype).reshape(1, -1, 1, 1) + shift.to(x.dtype).reshape(1, -1, 1, 1)

    def extra_repr(self):
        return str(self.num_features)


def conv_norm(conv, norm, x):
    """``norm(conv(x))``, with a frozen batch norm after a plain ``nn.Conv2d``
    or :class:`Conv2d` folded into the convolution:
    ``conv(x; weight * scale, bias * scale + shift)``, computed by
    :func:`conv2d` (a :class:`Conv2d` keeps its Winograd path).

    The fold is one convolution instead of a convolution and two passes over its
    output (about 10% of a ResNet-50's inference time on a CPU), and it is
    autograd-correct: the gradient reaches ``conv.weight`` through the product
    (``d/dw = scale * d/dw'``), so it serves training and inference alike, and
    the state dict keeps its names (``conv1.weight``, ``bn1.running_var``, ...).
    The result equals the unfolded one up to float rounding (a few units in
    the last place; tests/test_fast_paths.py). Any other pair (GroupNorm,
    deformable convolution) runs as ``norm(conv(x))``.
    """
    if not (isinstance(norm, FrozenBatchNorm2d) and type(conv) in (nn.Conv2d, Conv2d)
            and conv.padding_mode == "zeros"):
        return norm(conv(x))
    scale, shift = norm.scale_and_shift()
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                  winograd=getattr(conv, "winograd", False))

"""Building blocks below the model: they import nothing from modeling or engine.

Ops with compiled kernels (``nms``, ``ml_nms``, sigmoid focal loss, deformable
convolution) use ``atss_core._C`` when it is built and a pure-PyTorch
implementation of the same function otherwise."""
from .batch_norm import FrozenBatchNorm2d, conv_norm
from .conv import Conv2d, conv2d, set_winograd
from .deform_conv import DeformConv, DFConv2d, ModulatedDeformConv, modulated_deform_conv
from .nms import ml_nms, nms
from .scale import Scale
from .sigmoid_focal_loss import SigmoidFocalLoss, sigmoid_focal_loss

__all__ = [
    "Conv2d",
    "DFConv2d",
    "DeformConv",
    "FrozenBatchNorm2d",
    "ModulatedDeformConv",
    "Scale",
    "SigmoidFocalLoss",
    "conv2d",
    "conv_norm",
    "ml_nms",
    "modulated_deform_conv",
    "nms",
    "set_winograd",
    "sigmoid_focal_loss",
]

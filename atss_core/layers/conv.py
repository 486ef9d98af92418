"""2-D convolution that runs large 3x3 fp32 convolutions on the CPU through
NNPACK's Winograd kernels.

A 3x3, stride-1 convolution computed with Winograd's F(6x6, 3x3) algorithm
needs about 5x fewer multiplications than the direct one. PyTorch's CPU builds
ship NNPACK (``torch._nnpack_spatial_convolution``), but PyTorch only calls it
for batches of 16 or more, so detection models (batch 1-2, large images) never
reach it. On a 2-core AVX-512 EPYC, with one image, a 256 -> 256 3x3 conv on a
100x152 map (the ATSS head at P3 for an 800x1216 input) takes 35 ms through
NNPACK against 80 ms through oneDNN's direct convolution in channels-last
layout; the gain shrinks with the map and is gone at about 25x38
(``benchmarks/bench_winograd.py`` measures each shape).

What :func:`conv2d` does:

* **Which convolutions**: fp32 on the CPU, 3x3 kernel, stride 1, padding 1,
  dilation 1, one group, enough work per call (``MIN_WORK``, ``MIN_PIXELS``,
  ``MIN_CHANNEL_RATIO``), outside autocast, tracing and ONNX export, and
  only when ``torch._nnpack_available()`` (NNPACK needs
  AVX2 + FMA on x86-64). Everything else is ``torch.nn.functional.conv2d``.
* **Batches** go one image at a time: NNPACK's single-image algorithm is the
  fast one (its batched algorithm was 1.6x slower than oneDNN at batch 2).
* **Layout**: NNPACK reads and writes NCHW (contiguous) tensors, so a
  channels-last input is copied once and the output is NCHW. Every op
  downstream accepts either layout; a following oneDNN convolution with
  channels-last weights converts back by itself.
* **Backward** (:class:`_WinogradConv3x3`): the input gradient is again a
  stride-1 3x3 convolution (of the output gradient with the weights transposed
  and flipped) and goes through NNPACK; the weight gradient is oneDNN's
  (``aten.convolution_backward``), the bias gradient a sum.
* **Rounding**: Winograd's transforms add rounding. Against a float64
  convolution, the largest error per layer is about 1e-4 of the mean |output|
  (direct: about 1.5e-5); on the model this stays inside the reference parity
  tolerances (tests/test_parity.py, tests/test_winograd.py).

``Conv2d`` is an ``nn.Conv2d`` whose forward is :func:`conv2d`; its
``winograd`` attribute (``MODEL.WINOGRAD``, set by the detector) turns the
fast path off for that layer. State-dict names are those of ``nn.Conv2d``.
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

# Which convolutions are worth it (benchmarks/bench_winograd.py, 2-core AVX-512
# EPYC). NNPACK saves in proportion to the multiply-adds per kernel tap,
# C_in * C_out * H * W, and pays per call a transform of the whole kernel (64
# values per input/output channel pair, whatever the map size) and layout
# copies in proportion to (C_in + C_out) * H * W. Measured: below 1024
# locations (512 -> 512 channels on 25x38) or 48 for C_in * C_out /
# (C_in + C_out) (64 -> 64 channels: 1.4x slower; 256 -> 4: 2.4x) oneDNN is
# faster; around 1e8 multiply-adds per tap (256 -> 256 channels on 32x48,
# 128 -> 128 on 64x96, 2 images, forward + backward) the two are within 10%,
# and the NCHW maps cost training memory, so those stay on oneDNN; from 2.5e8
# (the same convolutions at 800 x 1216) NNPACK takes 0.6-0.8 of the time.
MIN_WORK = 200_000_000
MIN_PIXELS = 1024
MIN_CHANNEL_RATIO = 48


@functools.lru_cache(maxsize=None)
def nnpack_available():
    """Whether this PyTorch build has NNPACK and it runs on this CPU. The first
    call also initialises NNPACK (its thread pool takes ``torch.get_num_threads()``
    threads at the first convolution)."""
    return hasattr(torch, "_nnpack_spatial_convolution") and bool(torch._nnpack_available())


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _worth_it(in_channels, out_channels, pixels):
    product = in_channels * out_channels
    return (pixels >= MIN_PIXELS and product >= MIN_CHANNEL_RATIO * (in_channels + out_channels)
            and product * pixels >= MIN_WORK)


def winograd_applicable(x, weight, stride=1, padding=0, dilation=1, groups=1):
    """Whether :func:`conv2d` would run this convolution through NNPACK."""
    if (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()):
        # Exported and compiled graphs keep the plain convolution (and no
        # guards on the input size are made here).
        return False
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 4
        and tuple(weight.shape[2:]) == (3, 3)
        and _pair(stride) == (1, 1)
        and _pair(padding) == (1, 1)
        and _pair(dilation) == (1, 1)
        and groups == 1
        and not torch.is_autocast_enabled("cpu")
        and nnpack_available()
        and x.shape[0] > 0
        and _worth_it(weight.shape[1], weight.shape[0], x.shape[2] * x.shape[3])
    )


def _nnpack_conv3x3(x, weight, bias):
    """3x3, stride-1, padding-1 convolution of ``x`` [N, C, H, W] by ``weight``
    [O, C, 3, 3] (+ ``bias`` [O] or None), one image at a time. Returns a
    contiguous (NCHW) [N, O, H, W] tensor; a single image is not copied."""
    weight = weight.contiguous()  # once, not per image
    images = [torch._nnpack_spatial_convolution(image, weight, bias, [1, 1], [1, 1])
              for image in x.contiguous().split(1)]
    return images[0] if len(images) == 1 else torch.cat(images)


class _WinogradConv3x3(torch.autograd.Function):
    """NNPACK forward and input gradient, oneDNN weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        # The tensors as they came: saved NCHW copies of channels-last inputs
        # would live, next to the originals, until the backward pass.
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _nnpack_conv3x3(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        # NCHW throughout: oneDNN's weight gradient was fastest so (2 x 256 x 64 x 96:
        # 90 ms, 111 ms channels-last, 115 ms with channels-last weights).
        x, weight, grad_output = x.contiguous(), weight.contiguous(), grad_output.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # d/dx of a stride-1 "same" 3x3 convolution: the output gradient
            # convolved with the kernel transposed (O <-> C) and rotated by 180 degrees.
            grad_x = _nnpack_conv3x3(grad_output, weight.transpose(0, 1).flip(2, 3), None)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(
                grad_output, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [False, True, False],
            )[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, winograd=True):
    """``F.conv2d``, through NNPACK's Winograd kernels when ``winograd`` and
    :func:`winograd_applicable` (see the module docstring)."""
    if winograd and winograd_applicable(x, weight, stride, padding, dilation, groups):
        return _WinogradConv3x3.apply(x, weight, bias)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments, parameters and state-dict names) computed
    by :func:`conv2d`; ``winograd = False`` keeps it on ``F.conv2d``."""

    winograd = True

    def forward(self, x):
        if self.padding_mode != "zeros":
            return super().forward(x)
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                      winograd=self.winograd)


def set_winograd(module, enabled):
    """Set ``winograd`` on every :class:`Conv2d` inside ``module``."""
    for m in module.modules():
        if isinstance(m, Conv2d):
            m.winograd = bool(enabled)

"""Deformable convolution: modulated (DCNv2) and plain (DCNv1).

Shapes (``K = kh * kw``, ``dg`` = deformable groups):

- ``input``  ``[N, C_in, H, W]``
- ``offset`` ``[N, 2 * dg * K, H_out, W_out]``: for deformable group ``g`` and
  kernel tap ``k = i * kw + j``, channel ``g * 2 * K + 2 * k`` is the row (y)
  offset and channel ``g * 2 * K + 2 * k + 1`` the column (x) offset;
- ``mask``   ``[N, dg * K, H_out, W_out]``, channel ``g * K + k``;
- ``weight`` ``[C_out, C_in / groups, kh, kw]``, ``bias`` ``[C_out]`` or None;
- output ``[N, C_out, H_out, W_out]`` with the size rule of ``nn.Conv2d``.

Input channel ``c`` belongs to deformable group ``c // (C_in / dg)``. Tap
``(i, j)`` of output pixel ``(y, x)`` samples the input at
``(y * stride_h - pad_h + i * dil_h + dy, x * stride_w - pad_w + j * dil_w + dx)``
bilinearly; a corner outside the image reads 0, and a point with
``h <= -1``, ``h >= H``, ``w <= -1`` or ``w >= W`` samples 0 (DCNv2 semantics).
The sample is multiplied by the mask before the convolution.
"""
import math

import torch
from torch import nn

from atss_core.layers import _ext

__all__ = ["modulated_deform_conv", "deform_conv", "ModulatedDeformConv", "DeformConv", "DFConv2d"]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _pair(v, name):
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(e, int) for e in v):
        return tuple(v)
    raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")


def _out_size(size, kernel, stride, pad, dil):
    return (size + 2 * pad - (dil * (kernel - 1) + 1)) // stride + 1


def _check(input, offset, mask, weight, bias, stride, padding, dilation, groups, dg):
    tensors = {"input": input, "offset": offset, "mask": mask, "weight": weight, "bias": bias}
    for name, t in tensors.items():
        if t is None and name == "bias":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {t.dtype}")
        if t.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but input has {input.dtype}")
        if t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}")
    if input.dim() != 4:
        raise ValueError(f"input must be [N, C_in, H, W], got {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be [C_out, C_in / groups, kh, kw], got {tuple(weight.shape)}")
    if not isinstance(groups, int) or groups < 1 or not isinstance(dg, int) or dg < 1:
        raise ValueError(f"groups and deformable_groups must be ints >= 1, got {groups!r}, {dg!r}")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"need stride >= 1, dilation >= 1, padding >= 0; got {stride}, {dilation}, {padding}")
    n, c_in, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_in % groups or c_out % groups or c_per_group * groups != c_in:
        raise ValueError(
            f"weight {tuple(weight.shape)} does not fit input channels {c_in} with groups={groups}"
        )
    if c_in % dg:
        raise ValueError(f"input channels {c_in} are not divisible by deformable_groups={dg}")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"bias must be [{c_out}], got {tuple(bias.shape)}")
    ho = _out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = _out_size(w, kw, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} is too small for kernel {kh}x{kw} with this padding/dilation")
    k = kh * kw
    if offset.shape != (n, 2 * dg * k, ho, wo):
        raise ValueError(f"offset must be [{n}, {2 * dg * k}, {ho}, {wo}], got {tuple(offset.shape)}")
    if mask.shape != (n, dg * k, ho, wo):
        raise ValueError(f"mask must be [{n}, {dg * k}, {ho}, {wo}], got {tuple(mask.shape)}")


def modulated_deform_conv(input, offset, mask, weight, bias, stride=1, padding=0, dilation=1,
                          groups=1, deformable_groups=1):
    """Modulated deformable convolution (DCNv2); see the module docstring for shapes.

    Args:
        input, offset, mask, weight (Tensor): same floating dtype and device.
        bias (Tensor or None): ``[C_out]``.
        stride, padding, dilation (int or (int, int)): as in ``nn.Conv2d``.
        groups (int): convolution groups.
        deformable_groups (int): groups of input channels sharing one offset/mask field.

    Returns:
        Tensor[N, C_out, H_out, W_out], differentiable w.r.t. all tensor arguments.
    """
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if isinstance(input, torch.Tensor) and torch.is_autocast_enabled(input.device.type):
        # Like the reference, deformable convolution runs in float32 under autocast.
        args = [t.float() if isinstance(t, torch.Tensor) and t.dtype in _HALF_DTYPES else t
                for t in (input, offset, mask, weight, bias)]
        with torch.autocast(input.device.type, enabled=False):
            return modulated_deform_conv(*args, stride, padding, dilation, groups, deformable_groups)
    _check(input, offset, mask, weight, bias, stride, padding, dilation, groups, deformable_groups)
    if _ext.has_kernel(input.device, input.dtype, _CPU_DTYPES, _CUDA_DTYPES):
        return _ext.ops().modulated_deform_conv_forward(
            input.contiguous(), offset.contiguous(), mask.contiguous(), weight.contiguous(),
            None if bias is None else bias.contiguous(),
            list(stride), list(padding), list(dilation), groups, deformable_groups,
        )
    _ext.warn_fallback("modulated_deform_conv", input.device)
    return _deform_conv_torch(input, offset, mask, weight, bias, stride, padding, dilation,
                              groups, deformable_groups)


def deform_conv(input, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                groups=1, deformable_groups=1):
    """Plain deformable convolution (DCNv1): :func:`modulated_deform_conv` with a mask of ones."""
    if not isinstance(offset, torch.Tensor) or offset.dim() != 4 or offset.size(1) % 2:
        got = tuple(offset.shape) if isinstance(offset, torch.Tensor) else type(offset).__name__
        raise ValueError(f"offset must be [N, 2 * dg * kh * kw, H_out, W_out], got {got}")
    n, c, ho, wo = offset.shape
    mask = offset.new_ones((n, c // 2, ho, wo))
    return modulated_deform_conv(input, offset, mask, weight, bias, stride, padding, dilation,
                                 groups, deformable_groups)


def _bilinear_gather(image, y, x):
    """Sample ``image`` [B, C, H, W] at points ``y``, ``x`` [B, P] -> [B, P, C] (DCNv2 rule)."""
    b, c, h, w = image.shape
    p = y.size(1)
    rows = image.permute(0, 2, 3, 1).reshape(b * h * w, c)
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    y0f, x0f = torch.floor(y), torch.floor(x)
    ly, lx = y - y0f, x - x0f
    # Clamping keeps the integer conversion defined; clamped points are outside anyway.
    y0 = y0f.clamp(-2, h).long()
    x0 = x0f.clamp(-2, w).long()
    batch = torch.arange(b, device=image.device)[:, None] * (h * w)
    out = None
    for dy, dx, weight in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx),
                           (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        valid = inside & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        index = batch + yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)
        value = rows.index_select(0, index.reshape(-1)).view(b, p, c)
        term = value * torch.where(valid, weight, torch.zeros_like(weight))[..., None]
        out = term if out is None else out + term
    return out


def _deform_conv_torch(input, offset, mask, weight, bias, stride, padding, dilation, groups, dg):
    """Pure-PyTorch DCNv2: bilinear gather to columns, then a grouped matmul (autograd by PyTorch)."""
    n, c_in, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    k, length, cg = kh * kw, ho * wo, c_in // dg
    ar = dict(device=input.device, dtype=input.dtype)
    tap_y = (torch.arange(kh, **ar) * dilation[0]).repeat_interleave(kw)
    tap_x = (torch.arange(kw, **ar) * dilation[1]).repeat(kh)
    base_y = tap_y[:, None, None] + (torch.arange(ho, **ar) * stride[0] - padding[0])[None, :, None]
    base_x = tap_x[:, None, None] + (torch.arange(wo, **ar) * stride[1] - padding[1])[None, None, :]
    off = offset.reshape(n, dg, k, 2, ho, wo)
    y = (off[:, :, :, 0] + base_y).reshape(n * dg, k * length)
    x = (off[:, :, :, 1] + base_x).reshape(n * dg, k * length)
    cols = _bilinear_gather(input.reshape(n * dg, cg, h, w), y, x)
    cols = cols * mask.reshape(n * dg, k * length, 1)
    cols = cols.view(n, dg, k, length, cg).permute(0, 1, 4, 2, 3)
    cols = cols.reshape(n, groups, (c_in // groups) * k, length)
    out = torch.matmul(weight.reshape(groups, c_out // groups, -1), cols)
    out = out.reshape(n, c_out, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class _DeformConvBase(nn.Module):
    """Holds ``weight`` [C_out, C_in / groups, kh, kw] and optional ``bias`` [C_out]."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 groups, deformable_groups, bias):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels={in_channels} and out_channels={out_channels} must be divisible by groups={groups}"
            )
        if in_channels % deformable_groups:
            raise ValueError(
                f"in_channels={in_channels} must be divisible by deformable_groups={deformable_groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """weight ~ U(-1/sqrt(n), 1/sqrt(n)) with n = in_channels * kh * kw (not
        divided by ``groups``: the reference's rule), bias = 0."""
        n = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(n)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
             f"groups={self.groups}, deformable_groups={self.deformable_groups}")
        return s + f", bias={self.bias is not None}"


class ModulatedDeformConv(_DeformConvBase):
    """DCNv2 layer: ``forward(input, offset, mask)``; see :func:`modulated_deform_conv`."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deformable_groups, bias)

    def forward(self, input, offset, mask):
        return modulated_deform_conv(input, offset, mask, self.weight, self.bias, self.stride,
                                     self.padding, self.dilation, self.groups, self.deformable_groups)


class DeformConv(_DeformConvBase):
    """DCNv1 layer: ``forward(input, offset)``; see :func:`deform_conv`."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deformable_groups, bias)

    def forward(self, input, offset):
        return deform_conv(input, offset, self.weight, self.bias, self.stride, self.padding,
                           self.dilation, self.groups, self.deformable_groups)


class DFConv2d(nn.Module):
    """Deformable conv that predicts its own offsets (and mask) from its input.

    Submodules: ``offset`` (``nn.Conv2d`` in_channels -> dg * kh * kw * (3 if modulated
    else 2); weight kaiming-uniform with ``a=1``, bias 0, as the reference initialises
    it; the ATSS head re-initialises it from N(0, 0.01) with its other convolutions)
    and ``conv`` (:class:`ModulatedDeformConv` or :class:`DeformConv`).
    ``forward(x) -> [N, out_channels, H_out, W_out]``.
    """

    def __init__(self, in_channels, out_channels, with_modulated_dcn=True, kernel_size=3, stride=1,
                 groups=1, padding=1, dilation=1, deformable_groups=1, bias=False):
        super().__init__()
        kh, kw = _pair(kernel_size, "kernel_size")
        self.with_modulated_dcn = with_modulated_dcn
        self.offset_split = 2 * deformable_groups * kh * kw
        per_tap = 3 if with_modulated_dcn else 2
        self.offset = nn.Conv2d(in_channels, deformable_groups * kh * kw * per_tap, (kh, kw),
                                stride=stride, padding=padding, dilation=dilation, bias=True)
        nn.init.kaiming_uniform_(self.offset.weight, a=1)
        nn.init.zeros_(self.offset.bias)
        conv_cls = ModulatedDeformConv if with_modulated_dcn else DeformConv
        self.conv = conv_cls(in_channels, out_channels, (kh, kw), stride=stride, padding=padding,
                             dilation=dilation, groups=groups, deformable_groups=deformable_groups,
                             bias=bias)

    def forward(self, x):
        om = self.offset(x)
        if not self.with_modulated_dcn:
            return self.conv(x, om)
        offset = om[:, :self.offset_split]
        mask = om[:, self.offset_split:].sigmoid()
        return self.conv(x, offset, mask)


def _register_compiled():
    """Autograd formula and fake tensor rule of the compiled op."""
    name = "atss::modulated_deform_conv_forward"

    @torch.library.register_fake(name)
    def _fake_forward(input, offset, mask, weight, bias, stride, padding, dilation, groups, dg):
        n, _, h, w = input.shape
        c_out, _, kh, kw = weight.shape
        ho = _out_size(h, kh, stride[0], padding[0], dilation[0])
        wo = _out_size(w, kw, stride[1], padding[1], dilation[1])
        return input.new_empty((n, c_out, ho, wo))

    @torch.library.register_fake("atss::modulated_deform_conv_backward")
    def _fake_backward(grad_out, input, offset, mask, weight, stride, padding, dilation, groups, dg):
        return (torch.empty_like(input), torch.empty_like(offset), torch.empty_like(mask),
                torch.empty_like(weight))

    def setup_context(ctx, inputs, output):
        input, offset, mask, weight, bias = inputs[:5]
        ctx.save_for_backward(input, offset, mask, weight)
        ctx.conv_args = inputs[5:]
        ctx.has_bias = bias is not None

    def backward(ctx, grad_out):
        input, offset, mask, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        g_input, g_offset, g_mask, g_weight = _ext.ops().modulated_deform_conv_backward(
            grad_out, input, offset, mask, weight, *ctx.conv_args
        )
        g_bias = grad_out.sum((0, 2, 3)) if ctx.has_bias else None
        return (g_input, g_offset, g_mask, g_weight, g_bias) + (None,) * len(ctx.conv_args)

    torch.library.register_autograd(name, backward, setup_context=setup_context)


if _ext.is_loaded():
    _register_compiled()

"""The Winograd (NNPACK) path of :func:`atss_core.layers.conv2d` against
``F.conv2d``: which convolutions take it, its outputs and its gradients.

The values are compared with a float64 convolution: Winograd's rounding is
larger than the direct convolution's (about 1e-4 of the mean |output| at
worst, against 1.5e-5), so each check allows a few times the measured error
and is still orders of magnitude below what a wrong kernel, flip or transpose
gives. The whole model is compared in tests/test_fast_paths.py.
"""
import pytest
import torch
import torch.nn.functional as F

from atss_core.layers import Conv2d, conv2d, set_winograd
from atss_core.layers import conv as conv_module
from atss_core.layers.conv import nnpack_available, winograd_applicable

requires_nnpack = pytest.mark.skipif(
    not nnpack_available(), reason="this PyTorch build or CPU has no NNPACK (torch._nnpack_available() is False)"
)

# Large enough to take the path: 256 * 256 * 64 * 64 multiply-adds per tap >= MIN_WORK.
BIG = (1, 256, 64, 64)


def scaled_error(a, reference):
    """max |a - reference| / mean |reference|."""
    return float((a.double() - reference).abs().max() / reference.abs().mean())


def float64_conv(x, w, b):
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)


def test_which_convolutions_take_the_winograd_path(monkeypatch):
    monkeypatch.setattr(conv_module, "nnpack_available", lambda: True)
    x = torch.empty(BIG)
    w = torch.empty(256, 256, 3, 3)
    assert winograd_applicable(x, w, 1, 1)
    assert winograd_applicable(x.contiguous(memory_format=torch.channels_last), w, (1, 1), [1, 1], 1, 1)
    assert winograd_applicable(torch.empty(2, 256, 64, 96), w, 1, 1)  # the head's P3 at 512 x 768
    assert winograd_applicable(torch.empty(1, 256, 100, 152), torch.empty(80, 256, 3, 3), 1, 1)
    not_taken = [
        (x, w, 2, 1, 1, 1),                                    # stride 2
        (x, w, 1, 0, 1, 1),                                    # no padding
        (x, w, 1, 2, 2, 1),                                    # dilated
        (x, torch.empty(256, 64, 3, 3), 1, 1, 1, 4),           # grouped
        (x, torch.empty(256, 256, 1, 1), 1, 0, 1, 1),          # 1x1
        (torch.empty(1, 256, 25, 38), w, 1, 1, 1, 1),          # small map: 256 * 256 * 950 < MIN_WORK
        (torch.empty(2, 256, 32, 48), w, 1, 1, 1, 1),          # 256 * 256 * 1536 < MIN_WORK
        (torch.empty(1, 64, 200, 304), torch.empty(64, 64, 3, 3), 1, 1, 1, 1),  # 64 -> 64 channels
        (torch.empty(1, 256, 100, 152), torch.empty(4, 256, 3, 3), 1, 1, 1, 1),  # 4 outputs (box regression)
        (x.double(), w.double(), 1, 1, 1, 1),                  # not fp32
        (x.bfloat16(), w.bfloat16(), 1, 1, 1, 1),
        (torch.empty(0, 256, 40, 56), w, 1, 1, 1, 1),          # empty batch
        (x.to("meta"), w.to("meta"), 1, 1, 1, 1),              # not on the CPU
    ]
    for args in not_taken:
        assert not winograd_applicable(*args), [tuple(a.shape) if torch.is_tensor(a) else a for a in args]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd_applicable(x, w, 1, 1)
    monkeypatch.setattr(conv_module, "nnpack_available", lambda: False)
    assert not winograd_applicable(x, w, 1, 1)


def test_other_convolutions_are_exactly_f_conv2d():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 20, 24, generator=g)
    w = torch.randn(48, 32, 3, 3, generator=g)
    b = torch.randn(48, generator=g)
    for stride, padding in [(1, 1), (2, 1), (1, 0)]:
        assert torch.equal(conv2d(x, w, b, stride, padding), F.conv2d(x, w, b, stride, padding))
    big = torch.randn(BIG, generator=g)
    big_w = torch.randn(256, 256, 3, 3, generator=g) * 0.02
    assert torch.equal(conv2d(big, big_w, None, 1, 1, winograd=False), F.conv2d(big, big_w, None, 1, 1))


@requires_nnpack
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_winograd_forward_matches_float64(batch, bias, memory_format):
    g = torch.Generator().manual_seed(batch + 2 * bias)
    x = torch.randn(batch, *BIG[1:], generator=g).contiguous(memory_format=memory_format)
    w = (torch.randn(256, 256, 3, 3, generator=g) * 0.02).contiguous(memory_format=memory_format)
    b = torch.randn(256, generator=g) if bias else None
    assert winograd_applicable(x, w, 1, 1)
    y = conv2d(x, w, b, 1, 1)
    reference = float64_conv(x, w, b)
    assert y.shape == reference.shape and y.dtype == torch.float32
    assert y.is_contiguous()  # NNPACK writes NCHW whatever the input's layout
    assert scaled_error(y, reference) < 5e-4
    # each image of a batch is computed on its own: batching changes nothing
    if batch == 2:
        assert torch.equal(y[1:], conv2d(x[1:], w, b, 1, 1))


@requires_nnpack
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_winograd_gradients_match_float64(memory_format):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 128, 96, 128, generator=g).contiguous(memory_format=memory_format)
    w = (torch.randn(160, 128, 3, 3, generator=g) * 0.03).contiguous(memory_format=memory_format)
    b = torch.randn(160, generator=g)
    grad_out = torch.randn(2, 160, 96, 128, generator=g)
    assert winograd_applicable(x, w, 1, 1)

    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = conv2d(*leaves, 1, 1)
    grads = torch.autograd.grad(y, leaves, grad_out)

    leaves64 = [t.double().requires_grad_() for t in (x, w, b)]
    y64 = F.conv2d(*leaves64, padding=1)
    grads64 = torch.autograd.grad(y64, leaves64, grad_out.double())
    assert scaled_error(y.detach(), y64.detach()) < 5e-4
    for name, a, ref in zip(("input", "weight", "bias"), grads, grads64):
        assert a.shape == ref.shape and a.dtype == torch.float32, name
        assert scaled_error(a, ref) < 5e-4, name

    # only the gradients asked for are computed (and still right)
    w_only = w.clone().requires_grad_()
    (grad_w,) = torch.autograd.grad(conv2d(x, w_only, None, 1, 1), [w_only], grad_out)
    assert scaled_error(grad_w, grads64[1]) < 5e-4


def test_conv2d_module_keeps_nn_conv2d_names_and_switch():
    conv = Conv2d(256, 256, 3, padding=1)
    assert isinstance(conv, torch.nn.Conv2d)
    assert list(conv.state_dict()) == ["weight", "bias"]
    assert conv.winograd
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Sequential(Conv2d(256, 256, 3, padding=1)))
    set_winograd(model, False)
    assert not model[0].winograd and not model[2][0].winograd
    x = torch.randn(BIG)
    with torch.no_grad():
        assert torch.equal(model[0](x), F.conv2d(x, conv.weight, conv.bias, padding=1))


@requires_nnpack
def test_conv2d_module_takes_the_path():
    torch.manual_seed(0)
    conv = Conv2d(256, 256, 3, padding=1)
    x = torch.randn(BIG)
    with torch.no_grad():
        y = conv(x)
        assert not torch.equal(y, F.conv2d(x, conv.weight, conv.bias, padding=1))  # another algorithm
        assert scaled_error(y, float64_conv(x, conv.weight, conv.bias)) < 5e-4

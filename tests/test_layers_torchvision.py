"""Our kernels against torchvision.ops, an independent implementation of the same functions.

- ``nms`` / ``ml_nms`` (+1 convention) equal ``torchvision.ops.nms`` / ``batched_nms`` on
  boxes widened by one pixel (``x2 + 1``, ``y2 + 1``); both suppress at IoU ``>`` the
  threshold. torchvision returns the kept indices by descending score, we in ascending
  index order (as the reference), so the sets are compared sorted. Its score sort is
  not guaranteed stable, so the inputs avoid ties: box corners on a 1/256 pixel grid
  (the ``+ 1`` and torchvision's class offsets are exact, so both compute bit-identical
  IoUs) and distinct scores.
- The focal loss equals ``torchvision.ops.sigmoid_focal_loss`` on one-hot targets, with
  the ignored rows (target -1) set to 0.
- ``modulated_deform_conv`` equals ``deform_conv2d(..., mask=mask)`` and ``deform_conv``
  equals ``deform_conv2d(..., mask=None)``: same offset / mask channel layout, same
  bilinear border rule.

Every test runs on our compiled kernel and on our pure-PyTorch fallback, on the CPU and,
where there is a GPU (and CUDA kernels for the compiled path), on CUDA. The inputs and
path selection are those of the per-op test modules.
"""
import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cuda, needs_cuda_ext, needs_ext

tv_ops = pytest.importorskip(
    "torchvision.ops", reason="torchvision does not import here: nothing to cross-check against",
    exc_type=ImportError,
)

import test_layers_deform_conv as dcn_tests  # noqa: E402
import test_layers_focal_loss as focal_tests  # noqa: E402
import test_layers_nms as nms_tests  # noqa: E402

from atss_core.layers import _ext  # noqa: E402
from atss_core.layers.deform_conv import deform_conv  # noqa: E402
from atss_core.layers.nms import _nms_torch  # noqa: E402

TARGETS = [
    pytest.param("cpu", "fallback", id="cpu-fallback"),
    pytest.param("cpu", "compiled", marks=needs_ext, id="cpu-compiled"),
    pytest.param("cuda", "fallback", marks=needs_cuda, id="cuda-fallback"),
    pytest.param("cuda", "compiled", marks=needs_cuda_ext, id="cuda-compiled"),
]

DTYPES = [torch.float32, torch.float64]


# ---------------------------------------------------------------- NMS


def tie_free_boxes(n, seed, dtype, device):
    """Random boxes (sides 4 to 40 px, about as dense for any ``n``, so the one-pixel
    widening decides many suppressions) with corners on a 1/256 grid, distinct scores,
    labels 0..4."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 10 * n ** 0.5
    wh = torch.rand(n, 2, generator=g) * 36 + 4
    boxes = (torch.cat([xy, xy + wh], 1) * 256).floor() / 256
    scores = (torch.randperm(n, generator=g) + 1).double() / (n + 1)
    labels = torch.randint(0, 5, (n,), generator=g)
    return boxes.to(device, dtype), scores.to(device, dtype), labels.to(device)


def our_nms(path, boxes, scores, threshold, labels=None):
    if path == "compiled":
        return nms_tests.compiled(boxes, scores, threshold, labels)
    return _nms_torch(boxes, scores, labels, threshold)


def torchvision_nms(boxes, scores, threshold, labels=None):
    """torchvision's (x2 - x1) convention on boxes one pixel wider and taller."""
    wide = boxes + boxes.new_tensor([0, 0, 1, 1])
    if labels is None:
        return tv_ops.nms(wide, scores, threshold)
    return tv_ops.batched_nms(wide, scores, labels, threshold)


@pytest.mark.parametrize("device, path", TARGETS)
@pytest.mark.parametrize("n", [1, 100, 2000])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("class_wise", [False, True])
def test_nms_matches_torchvision(device, path, n, dtype, class_wise):
    # 2000 boxes take batched_nms's per-class loop, 100 its coordinate-offset trick.
    boxes, scores, labels = tie_free_boxes(n, seed=n, dtype=dtype, device=device)
    labels = labels if class_wise else None
    for threshold in (0.3, 0.5, 0.7):
        got = our_nms(path, boxes, scores, threshold, labels)
        want = torchvision_nms(boxes, scores, threshold, labels).sort().values
        assert torch.equal(got.cpu(), want.cpu()), f"threshold {threshold}"


# ---------------------------------------------------------------- focal loss


def torchvision_focal_loss(logits, targets, gamma, alpha):
    """torchvision's loss on one-hot targets (class c -> column c - 1), 0 on ignored rows."""
    one_hot = F.one_hot(targets.clamp(min=0), logits.size(1) + 1)[:, 1:].to(logits.dtype)
    loss = tv_ops.sigmoid_focal_loss(logits, one_hot, alpha, gamma, reduction="none")
    return loss * (targets >= 0)[:, None]


def loss_and_grad(fn, logits, grad_seed=0):
    """``fn(logits)`` and its gradient w.r.t. the logits for a seeded random ``grad_loss``."""
    x = logits.detach().clone().requires_grad_()
    loss = fn(x)
    grad_loss = torch.rand(loss.shape, generator=torch.Generator().manual_seed(grad_seed),
                           dtype=torch.float64).to(loss)
    return loss, torch.autograd.grad(loss, x, grad_loss)[0]


@pytest.mark.parametrize("device, path", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (1.5, 0.75), (0.0, 0.5)])
@pytest.mark.parametrize("scale", [3.0, 20.0])
def test_focal_loss_matches_torchvision(device, path, dtype, gamma, alpha, scale):
    # scale 20 clipped to +-50: large logits, where torchvision's formula is still finite
    # (its 1 - sigmoid(x) cancels, but only where the loss is ~0 anyway).
    logits, targets = focal_tests.make(500, 9, seed=int(scale), scale=scale, dtype=dtype, device=device)
    logits = logits.clamp(-50, 50)
    loss, grad = loss_and_grad(lambda x: focal_tests.run(path, x, targets, gamma, alpha), logits)
    want_loss, want_grad = loss_and_grad(lambda x: torchvision_focal_loss(x, targets, gamma, alpha), logits)
    assert torch.isfinite(want_loss).all() and torch.isfinite(want_grad).all()
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, want_loss, **tol)
    torch.testing.assert_close(grad, want_grad, **tol)


# ---------------------------------------------------------------- deformable convolution


def torchvision_dcn(args, input, offset, mask, weight, bias):
    """torchvision's deform_conv2d; its groups and offset groups follow from the shapes."""
    return tv_ops.deform_conv2d(input, offset, weight, bias, args["stride"], args["padding"],
                                args["dilation"], mask)


def assert_dcn_close(ours, theirs, dtype, names=("input", "offset", "mask", "weight", "bias")):
    """Compare (output, grads) pairs from ``output_and_grads``."""
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours[0], theirs[0], **tol)
    for name, got, want in zip(names, ours[1], theirs[1]):
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("device, path", TARGETS)
@pytest.mark.parametrize("config", dcn_tests.CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset_scale", [2.0, 8.0])
def test_modulated_deform_conv_matches_torchvision(device, path, config, dtype, offset_scale):
    # CONFIGS: groups and deformable groups > 1, stride 2, dilation 2, padding, 3x1 and 2x2
    # kernels; offsets ~ N(0, 8^2) put 82-90 % of the sample points wholly outside the
    # image and 3-6 % partly.
    tensors, args = dcn_tests.make(config, seed=20, dtype=dtype, device=device, offset_scale=offset_scale)
    ours = dcn_tests.forward_and_grads(path, tensors, args)
    theirs = dcn_tests.output_and_grads(lambda *t: torchvision_dcn(args, *t), tensors)
    assert_dcn_close(ours, theirs, dtype)


@pytest.mark.parametrize("device, path", TARGETS)
def test_offset_and_mask_channel_layout_matches_torchvision(device, path):
    # One offset channel at a time (then one mask channel): a layout mismatch would move
    # a different tap, or the wrong coordinate, or the wrong deformable group.
    config = dcn_tests.CONFIGS[3]  # 3x1 kernel, 2 deformable groups: 12 offset channels
    tensors, args = dcn_tests.make(config, seed=21, device=device)
    input, offset, mask, weight, bias = tensors
    zero_offset = torch.zeros_like(offset)
    plain = torchvision_dcn(args, input, zero_offset, torch.ones_like(mask), weight, bias)
    for channel in range(offset.size(1)):
        shifted = zero_offset.clone()
        shifted[:, channel] = 0.7
        probe = [input, shifted, torch.ones_like(mask), weight, bias]
        want = torchvision_dcn(args, *probe)
        assert not torch.allclose(want, plain)
        torch.testing.assert_close(dcn_tests.run(path, probe, args), want, rtol=1e-10, atol=1e-10,
                                   msg=lambda m: f"offset channel {channel}: {m}")
    for channel in range(mask.size(1)):
        scaled = torch.ones_like(mask)
        scaled[:, channel] = 0.3
        probe = [input, zero_offset, scaled, weight, bias]
        torch.testing.assert_close(dcn_tests.run(path, probe, args), torchvision_dcn(args, *probe),
                                   rtol=1e-10, atol=1e-10, msg=lambda m: f"mask channel {channel}: {m}")


@pytest.mark.parametrize("device, path", TARGETS)
@pytest.mark.parametrize("config", dcn_tests.CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_deform_conv_matches_torchvision_without_mask(device, path, config, dtype, monkeypatch):
    # The public DCNv1 function; without the extension it takes the pure-PyTorch path.
    if path == "fallback":
        monkeypatch.setattr(_ext, "_C", None)
        monkeypatch.setattr(_ext, "_WARNED", set())
    (input, offset, _, weight, bias), args = dcn_tests.make(config, seed=22, dtype=dtype, device=device)
    conv = dict(stride=args["stride"], padding=args["padding"], dilation=args["dilation"])
    tensors = [input, offset, weight, bias]
    ours = dcn_tests.output_and_grads(
        lambda x, o, w, b: deform_conv(x, o, w, b, **conv, groups=args["groups"],
                                       deformable_groups=args["dg"]), tensors)
    theirs = dcn_tests.output_and_grads(lambda x, o, w, b: tv_ops.deform_conv2d(x, o, w, b, **conv), tensors)
    assert_dcn_close(ours, theirs, dtype, names=("input", "offset", "weight", "bias"))

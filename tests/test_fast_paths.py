"""Every speed path against the plain computation it replaces.

* Frozen batch norm folded into the convolution before it
  (:func:`atss_core.layers.conv_norm`) vs ``norm(conv(x))``.
* Channels-last feature maps and weights (``MODEL.CHANNELS_LAST``, the default)
  vs contiguous ones.
* Large 3x3 convolutions through NNPACK's Winograd kernels (``MODEL.WINOGRAD``,
  the default; tests/test_winograd.py tests the layer) vs ``F.conv2d``.

Inference: head outputs within the parity tolerance (relative error 1e-4) and
the same detections (the parity fixture's rule: same label, IoU > 0.99, score
within 1e-3). Training: one step's three losses within 1e-5 and every
gradient within 5e-3 (relative L2), on the synthetic R-50 weights of
``../shared/reference`` (non-trivial batch-norm statistics). Those weights make
the backbone's gradients sensitive to rounding: the plain computation's own
gradients move by up to 9e-4 between 1 and 2 threads, the fast paths' by up
to 2.1e-3 from the plain ones (AMD EPYC, AVX-512); a wrong fold, layout or
Winograd transform is off by orders of magnitude more. The inputs are large
enough for the Winograd path to run at P3 (head and FPN).
"""
import contextlib
import json
import os

import pytest
import torch
from torch import nn

from conftest import REFERENCE_DIR, load_cfg, requires_reference
from test_parity import assert_same_detections, fixture_input, relative_error, write_reference_checkpoint

import atss_core.modeling.backbone.resnet as resnet
from atss_core.layers import DFConv2d, FrozenBatchNorm2d, conv_norm
from atss_core.layers import conv as conv_module
from atss_core.layers.conv import nnpack_available
from atss_core.modeling.detector import build_detection_model
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.image_list import to_image_list
from atss_core.utils.checkpoint import DetectronCheckpointer


def random_frozen_bn(channels, generator):
    bn = FrozenBatchNorm2d(channels)
    bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
    bn.bias.copy_(torch.randn(channels, generator=generator))
    bn.running_mean.copy_(torch.randn(channels, generator=generator))
    bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.1)
    return bn


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (1, 4)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_conv_norm_folds_frozen_bn_exactly_up_to_rounding(bias, stride, groups, memory_format):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, stride=stride, padding=1, groups=groups, bias=bias)
    bn = random_frozen_bn(32, g)
    conv = conv.to(memory_format=memory_format)
    x = torch.randn(2, 16, 17, 23, generator=g).contiguous(memory_format=memory_format).requires_grad_()
    folded = conv_norm(conv, bn, x)
    grads_folded = torch.autograd.grad(folded.square().sum(), [x] + list(conv.parameters()))
    plain = bn(conv(x))
    grads_plain = torch.autograd.grad(plain.square().sum(), [x] + list(conv.parameters()))
    assert folded.shape == plain.shape
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_folded, grads_plain):
        assert relative_error(a, b) < 1e-5
    # The buffers stay buffers: nothing of the batch norm is trained.
    assert [n for n, _ in bn.named_parameters()] == []


def test_conv_norm_other_pairs_run_unfolded():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 32, 9, 9, generator=g)
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    gn = nn.GroupNorm(8, 32)
    assert torch.equal(conv_norm(conv, gn, x), gn(conv(x)))
    reflect = nn.Conv2d(32, 32, 3, padding=1, bias=False, padding_mode="reflect")
    bn = random_frozen_bn(32, g)
    assert torch.equal(conv_norm(reflect, bn, x), bn(reflect(x)))
    dcn = DFConv2d(32, 32, kernel_size=3, padding=1)
    assert torch.equal(conv_norm(dcn, bn, x), bn(dcn(x)))


# --------------------------------------------------------------------------- #
# The whole model: inference and one training step, on the synthetic weights
# --------------------------------------------------------------------------- #
def _unfolded_conv_norm(conv, norm, x):
    return norm(conv(x))


@contextlib.contextmanager
def unfolded_batch_norm():
    """The backbone with every frozen batch norm applied after its convolution."""
    saved = resnet.conv_norm
    resnet.conv_norm = _unfolded_conv_norm
    try:
        yield
    finally:
        resnet.conv_norm = saved


VARIANTS = {
    # name: (MODEL.CHANNELS_LAST, batch norm folded, MODEL.WINOGRAD)
    "fast": (True, True, True),
    "direct": (True, True, False),
    "unfolded": (True, False, True),
    "contiguous": (False, True, True),
    "plain": (False, False, False),
}
FAST_VARIANTS = [name for name in VARIANTS if name != "plain"]


def run_variant_counting_winograd(name, fn, monkeypatch):
    """``run_variant``, checking that the Winograd path ran (forward and, in
    training, backward) exactly in the variants with ``MODEL.WINOGRAD``."""
    calls = []
    nnpack_conv = conv_module._nnpack_conv3x3
    monkeypatch.setattr(conv_module, "_nnpack_conv3x3", lambda *args: calls.append(1) or nnpack_conv(*args))
    result = run_variant(name, fn)
    monkeypatch.setattr(conv_module, "_nnpack_conv3x3", nnpack_conv)
    assert bool(calls) == (VARIANTS[name][2] and nnpack_available()), name
    return result


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("weights") / "ATSS_R_50_FPN_1x_synthetic.pth")
    write_reference_checkpoint("atss_R_50_FPN_1x", path)
    return path


def build(weights, channels_last, winograd=True):
    cfg = load_cfg("atss_R_50_FPN_1x", ["MODEL.CHANNELS_LAST", channels_last, "MODEL.WINOGRAD", winograd])
    model = build_detection_model(cfg)
    DetectronCheckpointer(cfg, model).load(weights)
    return model


def run_variant(name, fn):
    channels_last, folded, winograd = VARIANTS[name]
    with contextlib.nullcontext() if folded else unfolded_batch_norm():
        return fn(channels_last, winograd)


@requires_reference()
def test_channels_last_model_keeps_its_layout_and_state_dict(weights):
    model = build(weights, True)
    conv = model.backbone.body.layer1[0].conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = build(weights, False)
    assert list(model.state_dict()) == list(plain.state_dict())
    for (k, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k
    # Too small for the Winograd path anywhere: channels-last from the stem to the head outputs.
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 64, 96).contiguous(memory_format=torch.channels_last))
        outputs = model.rpn.head(features)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features)
    assert all(o.is_contiguous(memory_format=torch.channels_last) for level in outputs for o in level)


@requires_reference()
@pytest.mark.parametrize("winograd", [False, True])
def test_layout_with_and_without_winograd(weights, winograd):
    """At 512 x 768, P3 (64 x 96) takes the Winograd path in the FPN and the
    head's towers: NNPACK's outputs are NCHW, so the FPN's P3 is contiguous;
    P4-P7 (too small), the predictors (too few output channels at this size)
    and everything without Winograd stay channels-last."""
    model = build(weights, True, winograd)
    x = torch.randn(1, 3, 512, 768).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        features = model.backbone(x)
        outputs = model.rpn.head(features)
    assert features[0].is_contiguous() == (winograd and nnpack_available())
    for level in range(1, 5):
        assert features[level].is_contiguous(memory_format=torch.channels_last)
    assert all(o.is_contiguous(memory_format=torch.channels_last) for level in outputs for o in level)


@requires_reference()
def test_inference_fast_paths_equal_plain(weights, monkeypatch):
    with open(os.path.join(REFERENCE_DIR, "parity", "r50_single.json")) as f:
        fx = json.load(f)
    images = to_image_list([fixture_input(fx)], 32)
    results = {}
    for name in VARIANTS:
        def infer(channels_last, winograd):
            model = build(weights, channels_last, winograd).eval()
            with torch.no_grad():
                head = model.rpn.head(model.backbone(images.tensors))
                return head, model(images)[0]
        results[name] = run_variant_counting_winograd(name, infer, monkeypatch)
    (plain_head, plain_dets) = results["plain"]
    assert len(plain_dets) > 50
    for name in FAST_VARIANTS:
        head, dets = results[name]
        for outputs, plain_outputs in zip(head, plain_head):
            for level, (a, b) in enumerate(zip(outputs, plain_outputs)):
                assert relative_error(a, b) < 1e-4, (name, level)
        assert_same_detections(dets, {
            "boxes": plain_dets.bbox.tolist(),
            "scores": plain_dets.get_field("scores").tolist(),
            "labels": plain_dets.get_field("labels").tolist(),
        })
    # ... and the fixture's reference detections, for the default path.
    assert_same_detections(results["fast"][1], fx["detections"][0])


@requires_reference()
def test_training_step_fast_paths_equal_plain(weights, monkeypatch):
    g = torch.Generator().manual_seed(3)
    # P3 is 48 x 64: large enough for the Winograd path (head towers, FPN)
    images = to_image_list([torch.randn(3, 384, 512, generator=g) * 50 for _ in range(2)], 32)
    targets = []
    for _ in range(2):
        xy = torch.rand(6, 2, generator=g) * torch.tensor([390.0, 280.0])
        wh = 16 + torch.rand(6, 2, generator=g) * 100
        boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([511.0, 383.0]))], dim=1)
        target = BoxList(boxes, (512, 384))
        target.add_field("labels", torch.randint(1, 81, (6,), generator=g))
        targets.append(target)

    results = {}
    for name in VARIANTS:
        def step(channels_last, winograd):
            model = build(weights, channels_last, winograd).train()
            losses = model(images, targets)
            total = sum(losses.values())
            params = {k: p for k, p in model.named_parameters() if p.requires_grad}
            grads = torch.autograd.grad(total, list(params.values()))
            return {k: float(v.detach()) for k, v in losses.items()}, dict(zip(params, grads))
        results[name] = run_variant_counting_winograd(name, step, monkeypatch)
    plain_losses, plain_grads = results["plain"]
    assert plain_losses["loss_reg"] > 0
    for name in FAST_VARIANTS:
        losses, grads = results[name]
        for key, value in losses.items():
            assert abs(value - plain_losses[key]) <= 1e-5 * abs(plain_losses[key]), (name, key)
        assert list(grads) == list(plain_grads)
        for key, grad in grads.items():
            # (a zero gradient, e.g. the Scale of a level without positives, stays zero)
            assert torch.equal(grad, plain_grads[key]) or relative_error(grad, plain_grads[key]) < 5e-3, (name, key)

"""Deformable convolution: compiled kernels == pure-PyTorch fallback, conv2d special cases,
gradcheck, modules and their state-dict names."""
import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cuda_ext, needs_ext

from atss_core.layers import _ext
from atss_core.layers.deform_conv import (
    DeformConv,
    DFConv2d,
    ModulatedDeformConv,
    _deform_conv_torch,
    deform_conv,
    modulated_deform_conv,
)

PATHS = ["fallback", pytest.param("compiled", marks=needs_ext)]

# (N, C_in, H, W, C_out, (kh, kw), stride, padding, dilation, groups, deformable_groups)
CONFIGS = [
    (2, 4, 7, 9, 6, (3, 3), 1, 1, 1, 1, 1),
    (2, 8, 10, 8, 4, (3, 3), 2, 2, 2, 2, 2),
    (1, 6, 5, 6, 6, (2, 2), 1, 0, 1, 3, 3),
    (1, 4, 6, 5, 2, (3, 1), (2, 1), (1, 0), (1, 2), 1, 2),
]

# Small enough for a full (not fast-mode) gradcheck in about a second.
GRADCHECK_CONFIGS = [
    (1, 2, 4, 5, 3, (3, 3), 1, 1, 1, 1, 1),
    (2, 4, 5, 4, 2, (2, 2), 2, 1, 2, 2, 2),
]


def pair(v):
    return v if isinstance(v, tuple) else (v, v)


def make(config, seed, dtype=torch.float64, device="cpu", offset_scale=2.0):
    n, c, h, w, c_out, (kh, kw), stride, padding, dilation, groups, dg = config
    s, p, d = pair(stride), pair(padding), pair(dilation)
    ho = (h + 2 * p[0] - (d[0] * (kh - 1) + 1)) // s[0] + 1
    wo = (w + 2 * p[1] - (d[1] * (kw - 1) + 1)) // s[1] + 1
    g = torch.Generator().manual_seed(seed)
    tensors = [
        torch.randn(n, c, h, w, generator=g, dtype=torch.float64),
        torch.randn(n, 2 * dg * kh * kw, ho, wo, generator=g, dtype=torch.float64) * offset_scale,
        torch.rand(n, dg * kh * kw, ho, wo, generator=g, dtype=torch.float64),
        torch.randn(c_out, c // groups, kh, kw, generator=g, dtype=torch.float64),
        torch.randn(c_out, generator=g, dtype=torch.float64),
    ]
    tensors = [t.to(device, dtype) for t in tensors]
    return tensors, dict(stride=s, padding=p, dilation=d, groups=groups, dg=dg)


def run(path, tensors, args):
    input, offset, mask, weight, bias = tensors
    if path == "compiled":
        return _ext.ops().modulated_deform_conv_forward(
            input, offset, mask, weight, bias, list(args["stride"]), list(args["padding"]),
            list(args["dilation"]), args["groups"], args["dg"])
    return _deform_conv_torch(input, offset, mask, weight, bias, args["stride"], args["padding"],
                              args["dilation"], args["groups"], args["dg"])


def forward_and_grads(path, tensors, args, grad_seed=0):
    return output_and_grads(lambda *t: run(path, t, args), tensors, grad_seed)


def output_and_grads(fn, tensors, grad_seed=0):
    """``fn(*tensors)`` and the gradients w.r.t. ``tensors`` for a seeded random ``grad_out``."""
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed),
                           dtype=torch.float64).to(out)
    return out, torch.autograd.grad(out, tensors, grad_out)


@needs_ext
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_matches_fallback(config, dtype):
    tensors, args = make(config, seed=1, dtype=dtype)
    out_c, grads_c = forward_and_grads("compiled", tensors, args)
    out_f, grads_f = forward_and_grads("fallback", tensors, args)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_c, out_f, **tol)
    for name, gc, gf in zip(("input", "offset", "mask", "weight", "bias"), grads_c, grads_f):
        torch.testing.assert_close(gc, gf, **tol, msg=lambda m: f"grad {name}: {m}")


@needs_ext
def test_compiled_matches_fallback_integer_and_out_of_image_offsets():
    # Integer offsets put samples exactly on pixels and image borders; large ones push
    # them outside (h <= -1, h >= H), where the sample must be 0.
    config = (2, 4, 6, 7, 3, (3, 3), 1, 1, 1, 1, 2)
    tensors, args = make(config, seed=2)
    tensors[1] = torch.randint(-8, 9, tensors[1].shape, generator=torch.Generator().manual_seed(3)).double()
    out_c, grads_c = forward_and_grads("compiled", tensors, args)
    out_f, grads_f = forward_and_grads("fallback", tensors, args)
    torch.testing.assert_close(out_c, out_f, rtol=1e-10, atol=1e-10)
    for gc, gf in zip(grads_c, grads_f):
        torch.testing.assert_close(gc, gf, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", CONFIGS)
def test_zero_offset_unit_mask_is_conv2d(path, config):
    tensors, args = make(config, seed=4)
    tensors[1].zero_()
    tensors[2].fill_(1.0)
    want = F.conv2d(tensors[0], tensors[3], tensors[4], args["stride"], args["padding"],
                    args["dilation"], args["groups"])
    torch.testing.assert_close(run(path, tensors, args), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", PATHS)
def test_integer_offset_is_shifted_conv2d(path):
    # Offset (dy, dx) = (1, -2) everywhere: tap (i, j) of output (y, x) reads
    # input[y + i, x + j - 3] (padding 1), i.e. a valid conv2d over a zero-padded,
    # shifted window of the input.
    config = (1, 3, 8, 9, 2, (3, 3), 1, 1, 1, 1, 1)
    tensors, args = make(config, seed=5)
    tensors[1][:, 0::2] = 1.0
    tensors[1][:, 1::2] = -2.0
    tensors[2].fill_(1.0)
    h, w = tensors[0].shape[-2:]
    padded = F.pad(tensors[0], (3, 3, 3, 3))
    want = F.conv2d(padded[:, :, 3:3 + h + 2, 0:w + 2], tensors[3], tensors[4])
    torch.testing.assert_close(run(path, tensors, args), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", GRADCHECK_CONFIGS)
def test_gradcheck(path, config):
    tensors, args = make(config, seed=6, offset_scale=1.3)
    tensors = [t.requires_grad_() for t in tensors]
    assert torch.autograd.gradcheck(lambda *t: run(path, t, args), tensors)


def test_public_function_and_deform_conv_without_mask():
    tensors, args = make(CONFIGS[1], seed=7, dtype=torch.float32)
    input, offset, mask, weight, bias = tensors
    out = modulated_deform_conv(input, offset, mask, weight, bias, args["stride"], args["padding"],
                                args["dilation"], args["groups"], args["dg"])
    torch.testing.assert_close(out, run("fallback", tensors, args), rtol=1e-4, atol=1e-4)
    plain = deform_conv(input, offset, weight, None, args["stride"], args["padding"],
                        args["dilation"], args["groups"], args["dg"])
    ones = torch.ones_like(mask)
    torch.testing.assert_close(plain, run("fallback", [input, offset, ones, weight, None], args),
                               rtol=1e-4, atol=1e-4)


def test_empty_batch():
    tensors, args = make(CONFIGS[0], seed=8, dtype=torch.float32)
    tensors = [t[:0] for t in tensors[:3]] + tensors[3:]
    weight = tensors[3].requires_grad_()
    out = modulated_deform_conv(*tensors, args["stride"], args["padding"], args["dilation"],
                                args["groups"], args["dg"])
    assert out.shape == (0, 6, 7, 9)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_argument_errors_name_the_argument():
    tensors, args = make(CONFIGS[0], seed=9, dtype=torch.float32)
    input, offset, mask, weight, bias = tensors
    with pytest.raises(ValueError, match="offset"):
        modulated_deform_conv(input, offset[:, :4], mask, weight, bias, 1, 1)
    with pytest.raises(ValueError, match="mask"):
        modulated_deform_conv(input, offset, mask[:, :3], weight, bias, 1, 1)
    with pytest.raises(TypeError, match="weight"):
        modulated_deform_conv(input, offset, mask, weight.double(), bias, 1, 1)
    with pytest.raises(ValueError, match="weight"):
        modulated_deform_conv(input, offset, mask, weight, bias, 1, 1, groups=3)
    with pytest.raises(TypeError, match="stride"):
        modulated_deform_conv(input, offset, mask, weight, bias, "1", 1)


def test_dfconv2d_state_dict_names_and_shapes():
    dcn = DFConv2d(256, 256, with_modulated_dcn=True, kernel_size=3, bias=True)
    shapes = {k: tuple(v.shape) for k, v in dcn.state_dict().items()}
    assert shapes == {"offset.weight": (27, 256, 3, 3), "offset.bias": (27,),
                      "conv.weight": (256, 256, 3, 3), "conv.bias": (256,)}
    resnext = DFConv2d(128, 128, with_modulated_dcn=True, groups=32)
    shapes = {k: tuple(v.shape) for k, v in resnext.state_dict().items()}
    assert shapes == {"offset.weight": (27, 128, 3, 3), "offset.bias": (27,),
                      "conv.weight": (128, 4, 3, 3)}
    plain = DFConv2d(64, 32, with_modulated_dcn=False, deformable_groups=2, stride=2)
    shapes = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    assert shapes == {"offset.weight": (36, 64, 3, 3), "offset.bias": (36,),
                      "conv.weight": (32, 64, 3, 3)}
    assert isinstance(plain.conv, DeformConv) and isinstance(dcn.conv, ModulatedDeformConv)


@pytest.mark.parametrize("modulated", [True, False])
def test_dfconv2d_with_still_offsets_is_a_regular_conv(modulated):
    torch.manual_seed(0)
    dcn = DFConv2d(8, 16, with_modulated_dcn=modulated, groups=2, stride=2, deformable_groups=2)
    # The reference's initialisation: kaiming-uniform (a=1) offset weights, zero bias.
    bound = (3 / (8 * 9)) ** 0.5
    assert dcn.offset.weight.abs().max() <= bound and dcn.offset.weight.abs().max() > 0.9 * bound
    assert torch.all(dcn.offset.bias == 0)
    with torch.no_grad():
        dcn.offset.weight.zero_()
    x = torch.randn(2, 8, 11, 10)
    want = F.conv2d(x, dcn.conv.weight, None, stride=2, padding=1, groups=2)
    if modulated:
        want = want * 0.5  # mask = sigmoid(0)
    torch.testing.assert_close(dcn(x), want, rtol=1e-4, atol=1e-5)


def test_module_init():
    torch.manual_seed(0)
    conv = ModulatedDeformConv(32, 64, 3, padding=1, groups=2)
    bound = 1 / (32 * 9) ** 0.5  # the reference's n = in_channels * kh * kw, groups ignored
    assert conv.weight.shape == (64, 16, 3, 3)
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert torch.all(conv.bias == 0)
    assert DeformConv(32, 64, 3).bias is None
    assert ModulatedDeformConv(32, 64, 3, bias=False).bias is None


def test_autocast_runs_in_float32():
    dcn = DFConv2d(4, 4)
    x = torch.randn(1, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dcn(x.bfloat16())
    assert out.dtype == torch.float32


@needs_cuda_ext
@pytest.mark.parametrize("config", CONFIGS)
def test_cuda_matches_cpu_and_fallback(config):
    tensors, args = make(config, seed=10, dtype=torch.float64)
    out_cpu, grads_cpu = forward_and_grads("compiled", tensors, args)
    cuda = [t.cuda() for t in tensors]
    out_gpu, grads_gpu = forward_and_grads("compiled", cuda, args)
    out_fb, grads_fb = forward_and_grads("fallback", cuda, args)
    for got, want in [(out_gpu, out_cpu), (out_gpu, out_fb)] + list(zip(grads_gpu, grads_cpu)) + list(
            zip(grads_gpu, grads_fb)):
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-9, atol=1e-9)


@needs_cuda_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_low_precision(dtype):
    tensors, args = make(CONFIGS[0], seed=11, dtype=torch.float32)
    want = run("compiled", tensors, args)
    got = run("compiled", [t.to("cuda", dtype) for t in tensors], args)
    tol = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 2e-1}[dtype]
    assert got.dtype == dtype
    torch.testing.assert_close(got.float().cpu(), want, rtol=tol, atol=tol)


@needs_cuda_ext
def test_cuda_gradcheck():
    tensors, args = make(GRADCHECK_CONFIGS[1], seed=12, offset_scale=1.3, device="cuda")
    tensors = [t.requires_grad_() for t in tensors]
    assert torch.autograd.gradcheck(lambda *t: run("compiled", t, args), tensors)


@needs_ext
@pytest.mark.slow
def test_torch_compile_fullgraph():
    from atss_core.layers.sigmoid_focal_loss import sigmoid_focal_loss

    dcn = DFConv2d(4, 6)
    torch.nn.init.normal_(dcn.offset.weight, std=0.1)

    def step(x, targets):
        out = dcn(x)
        logits = out.permute(0, 2, 3, 1).reshape(-1, 6)
        return sigmoid_focal_loss(logits, targets, 2.0, 0.25).sum()

    x = torch.randn(2, 4, 8, 8)
    targets = torch.randint(-1, 7, (2 * 8 * 8,))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x, targets)
    loss.backward()
    grad = dcn.offset.weight.grad.clone()
    dcn.zero_grad()
    eager = step(x, targets)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(grad, dcn.offset.weight.grad)

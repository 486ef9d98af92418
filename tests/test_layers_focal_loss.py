"""sigmoid_focal_loss: compiled kernels == pure-PyTorch fallback == the textbook formula."""
import pytest
import torch

from conftest import needs_cuda_ext, needs_ext

from atss_core.layers import _ext
from atss_core.layers.sigmoid_focal_loss import SigmoidFocalLoss, _focal_loss_torch, sigmoid_focal_loss

PATHS = ["fallback", pytest.param("compiled", marks=needs_ext)]


def run(path, logits, targets, gamma, alpha):
    if path == "compiled":
        return _ext.ops().sigmoid_focal_loss_forward(logits, targets, gamma, alpha)
    return _focal_loss_torch(logits, targets, gamma, alpha)


def textbook(logits, targets, gamma, alpha):
    """Direct transcription of the definition (fine for moderate logits)."""
    p = torch.sigmoid(logits)
    classes = torch.arange(1, logits.size(1) + 1, device=logits.device)
    t = targets[:, None]
    pos = (t == classes).to(logits.dtype)
    neg = ((t >= 0) & (t != classes)).to(logits.dtype)
    return (-alpha * (1 - p) ** gamma * torch.log(p) * pos
            - (1 - alpha) * p ** gamma * torch.log(1 - p) * neg)


def make(n, c, seed, scale=3.0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    targets = torch.randint(-1, c + 1, (n,), generator=g)
    return logits.to(device, dtype), targets.to(device)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.0, 0.5), (1.5, 0.75)])
def test_matches_textbook_formula(path, gamma, alpha):
    logits, targets = make(64, 7, seed=1)
    got = run(path, logits, targets, gamma, alpha)
    torch.testing.assert_close(got, textbook(logits, targets, gamma, alpha), rtol=1e-10, atol=1e-12)
    assert torch.all(got[targets < 0] == 0)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_matches_fallback_forward_and_backward(dtype):
    logits, targets = make(500, 80, seed=2, scale=8.0, dtype=dtype)
    x1 = logits.clone().requires_grad_()
    x2 = logits.clone().requires_grad_()
    l1 = sigmoid_focal_loss(x1, targets, 2.0, 0.25)
    l2 = _focal_loss_torch(x2, targets, 2.0, 0.25)
    torch.testing.assert_close(l1, l2)
    grad = torch.rand_like(l1)
    l1.backward(grad)
    l2.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("path", PATHS)
def test_large_logits_are_finite(path):
    logits = torch.tensor([[-1e4, -100.0, 0.0, 100.0, 1e4]] * 3, dtype=torch.float32, requires_grad=True)
    targets = torch.tensor([1, 4, 5])
    if path == "compiled":
        loss = sigmoid_focal_loss(logits, targets, 2.0, 0.25)
    else:
        loss = _focal_loss_torch(logits, targets, 2.0, 0.25)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    # A confidently missed positive costs alpha * |x|, a confident false positive
    # (1 - alpha) * |x|, a confident right answer nothing.
    assert loss[0, 0].item() == pytest.approx(0.25 * 1e4, rel=1e-6)
    assert loss[1, 4].item() == pytest.approx(0.75 * 1e4, rel=1e-6)
    assert loss[2, 4].item() == 0.0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_float32_relative_accuracy(path, gamma):
    # Logits from -120 to 120 (where float32 exp under/overflows), against float64.
    x = torch.linspace(-120, 120, 48000).reshape(-1, 3)
    targets = torch.arange(x.size(0)) % 5 - 1
    ref_x = x.double().requires_grad_()
    ref = _focal_loss_torch(ref_x, targets, gamma, 0.25)
    ref.sum().backward()
    got_x = x.clone().requires_grad_()
    got = run(path, got_x, targets, gamma, 0.25)
    got.sum().backward()
    for a, b in ((got, ref), (got_x.grad, ref_x.grad)):
        a, b = a.detach().double(), b.detach()
        significant = b.abs() > 1e-30
        assert ((a - b).abs()[significant] / b.abs()[significant]).max() < 1e-5
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("gamma", [2.0, 0.0, 1.5])
def test_gradcheck(path, gamma):
    logits, targets = make(6, 4, seed=3)
    logits.requires_grad_()
    if path == "compiled":
        fn = lambda x: sigmoid_focal_loss(x, targets, gamma, 0.25)  # noqa: E731
    else:
        fn = lambda x: _focal_loss_torch(x, targets, gamma, 0.25)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


def test_module_sums_and_accepts_int32_targets():
    logits, targets = make(20, 5, seed=4, dtype=torch.float32)
    module = SigmoidFocalLoss(gamma=2.0, alpha=0.25)
    total = module(logits, targets.int())
    assert total.dim() == 0
    torch.testing.assert_close(total, sigmoid_focal_loss(logits, targets, 2.0, 0.25).sum())
    assert "gamma=2.0" in repr(module)


def test_empty_inputs():
    logits = torch.zeros(0, 80, requires_grad=True)
    loss = sigmoid_focal_loss(logits, torch.zeros(0, dtype=torch.int64), 2.0, 0.25)
    assert loss.shape == (0, 80)
    loss.sum().backward()
    assert logits.grad.shape == (0, 80)


def test_argument_errors_name_the_argument():
    logits, targets = make(4, 3, seed=5)
    with pytest.raises(ValueError, match="logits"):
        sigmoid_focal_loss(logits[0], targets, 2.0, 0.25)
    with pytest.raises(ValueError, match="targets"):
        sigmoid_focal_loss(logits, targets[:2], 2.0, 0.25)
    with pytest.raises(TypeError, match="targets"):
        sigmoid_focal_loss(logits, targets.float(), 2.0, 0.25)
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(logits, targets, -1.0, 0.25)


@needs_cuda_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    logits, targets = make(1000, 80, seed=6, scale=5.0, dtype=torch.float32)
    x_cpu = logits.clone().requires_grad_()
    want = sigmoid_focal_loss(x_cpu, targets, 2.0, 0.25)
    want.sum().backward()
    x_gpu = logits.to("cuda", dtype).requires_grad_()
    got = sigmoid_focal_loss(x_gpu, targets.cuda(), 2.0, 0.25)
    got.sum().backward()
    assert got.dtype == dtype and x_gpu.grad.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    # Compare against the CPU result on the rounded inputs.
    x_ref = x_gpu.detach().float().cpu().requires_grad_()
    ref = sigmoid_focal_loss(x_ref, targets, 2.0, 0.25)
    ref.sum().backward()
    torch.testing.assert_close(got.float().cpu(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(x_gpu.grad.float().cpu(), x_ref.grad, rtol=tol, atol=tol)
    fallback = _focal_loss_torch(x_gpu.detach(), targets.cuda(), 2.0, 0.25)
    torch.testing.assert_close(got, fallback, rtol=tol, atol=tol)
    if dtype == torch.float32:
        torch.testing.assert_close(got.cpu(), want.detach())

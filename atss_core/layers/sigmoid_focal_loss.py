"""Sigmoid focal loss (Lin et al., 2017) with the reference ATSS target encoding.

``logits`` is ``[N, C]``; ``targets`` is ``[N]`` (integer) with ``0`` for
background, ``c`` in ``1..C`` for class ``c`` (logit column ``c - 1``) and
``-1`` for an ignored row. With ``p = sigmoid(x)`` the element loss of column
``j`` is

- ``-alpha * (1 - p)**gamma * log(p)`` where ``targets == j + 1``,
- ``-(1 - alpha) * p**gamma * log(1 - p)`` where ``targets >= 0`` otherwise,
- ``0`` where ``targets < 0``.

``log(p)`` and ``log(1 - p)`` are evaluated as log-sigmoids, so the loss and
its gradient stay finite for any logit. Half-precision inputs are computed
in float32 and returned in their own dtype.
"""
import torch
from torch import nn

from atss_core.layers import _ext

__all__ = ["sigmoid_focal_loss", "SigmoidFocalLoss"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def sigmoid_focal_loss(logits, targets, gamma, alpha):
    """Element-wise sigmoid focal loss.

    Args:
        logits (Tensor[N, C]): raw scores, floating point.
        targets (Tensor[N], integer): 0 background, 1..C class, -1 ignore.
        gamma (float): focusing parameter (>= 0).
        alpha (float): weight of the positive term, ``1 - alpha`` for negatives.

    Returns:
        Tensor[N, C]: the loss of each element, differentiable w.r.t. ``logits``.
    """
    _check(logits, targets, gamma, alpha)
    targets = targets.to(torch.int64).contiguous()
    gamma, alpha = float(gamma), float(alpha)
    if _ext.has_kernel(logits.device, logits.dtype, _DTYPES, _DTYPES):
        return _ext.ops().sigmoid_focal_loss_forward(logits.contiguous(), targets, gamma, alpha)
    _ext.warn_fallback("sigmoid_focal_loss", logits.device)
    return _focal_loss_torch(logits, targets, gamma, alpha)


class SigmoidFocalLoss(nn.Module):
    """Sum of :func:`sigmoid_focal_loss` over all elements (what the reference returns)."""

    def __init__(self, gamma, alpha):
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def forward(self, logits, targets):
        """logits [N, C], targets [N] -> scalar loss."""
        return sigmoid_focal_loss(logits, targets, self.gamma, self.alpha).sum()

    def extra_repr(self):
        return f"gamma={self.gamma}, alpha={self.alpha}"


def _check(logits, targets, gamma, alpha):
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a [N, C] tensor, got {got}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating point tensor, got {logits.dtype}")
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:1]:
        got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a [N] tensor with N={logits.size(0)}, got {got}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got {targets.dtype}")
    if targets.device != logits.device:
        raise ValueError(f"targets is on {targets.device} but logits is on {logits.device}")
    if not isinstance(gamma, (int, float)) or gamma < 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")


def _focal_loss_torch(logits, targets, gamma, alpha):
    """Pure-PyTorch focal loss (autograd by PyTorch)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    classes = torch.arange(1, x.size(1) + 1, device=x.device)
    t = targets[:, None]
    pos = t == classes
    neg = (t >= 0) & ~pos
    log_p = nn.functional.logsigmoid(x)
    log_1mp = nn.functional.logsigmoid(-x)
    pos_loss = -alpha * torch.sigmoid(-x).pow(gamma) * log_p
    neg_loss = -(1 - alpha) * torch.sigmoid(x).pow(gamma) * log_1mp
    zero = x.new_zeros(())
    loss = torch.where(pos, pos_loss, zero) + torch.where(neg, neg_loss, zero)
    return loss.to(logits.dtype)


def _register_compiled():
    """Autograd formula and fake tensor rule of the compiled forward op."""
    name = "atss::sigmoid_focal_loss_forward"

    @torch.library.register_fake(name)
    def _fake_forward(logits, targets, gamma, alpha):
        return torch.empty_like(logits)

    @torch.library.register_fake("atss::sigmoid_focal_loss_backward")
    def _fake_backward(logits, targets, grad_loss, gamma, alpha):
        return torch.empty_like(logits)

    def setup_context(ctx, inputs, output):
        logits, targets, gamma, alpha = inputs
        ctx.save_for_backward(logits, targets)
        ctx.gamma, ctx.alpha = gamma, alpha

    def backward(ctx, grad_loss):
        logits, targets = ctx.saved_tensors
        grad = _ext.ops().sigmoid_focal_loss_backward(
            logits, targets, grad_loss.contiguous(), ctx.gamma, ctx.alpha
        )
        return grad, None, None, None

    torch.library.register_autograd(name, backward, setup_context=setup_context)


if _ext.is_loaded():
    _register_compiled()

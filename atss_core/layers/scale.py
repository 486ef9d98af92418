"""A learnable scalar multiplier."""
import torch
from torch import nn


class Scale(nn.Module):
    """y = scale * x with one learnable ``scale`` (shape [1]); the ATSS head
    has one per FPN level on its box regression output."""

    def __init__(self, init_value=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x):
        return x * self.scale

"""Shared test fixtures: a linear binary classifier whose smoothed robust radius is known exactly."""
import torch
import torch.nn as nn


class LinearBinary(nn.Module):
    """f(x) = 1[w·x > 0] with ‖w‖ = 1, as 2-class logits [0, w·x]. Under any radially symmetric noise the
    smoothed classifier at x = δ·w has true robust radius δ (the distance to the hyperplane)."""

    def __init__(self, d: int, seed: int = 0):
        super().__init__()
        w = torch.randn(d, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("w", w / w.norm())

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([torch.zeros_like(s), s], 1)

    def point_at(self, dist: float, shape):
        return (dist * self.w).reshape(shape)

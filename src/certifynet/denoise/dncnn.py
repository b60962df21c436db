"""DnCNN (Zhang et al., TIP 2017), the light denoiser of denoised smoothing (Salman et al., NeurIPS 2020).

Layout matches microsoft/denoised-smoothing code/archs/dncnn.py: one Sequential `dncnn` =
[conv(bias), ReLU, (depth−2) × [conv(no bias), BN(eps=1e-4), ReLU], conv(no bias)], so their
`cifar_dncnn` checkpoints load by key (ImageNet ones after stripping DataParallel's `module.`).
depth 17, 64 channels, 3 image channels: 558,400 parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from certifynet.denoise.drunet import orthogonal_init_


class DnCNN(nn.Module):
    """D(x) = x − net(x) (the net predicts the noise). Takes no σ map; `sigma` is accepted and ignored."""

    arch = "dncnn"

    def __init__(self, in_channels: int = 3, channels: int = 64, depth: int = 17):
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN depth must be >= 3, got {depth}")
        self.in_channels, self.channels, self.depth = int(in_channels), int(channels), int(depth)
        layers = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            # eps as in the reference (it changes outputs of loaded weights); momentum is PyTorch's default,
            # the reference's 0.95 would keep only the last batch in the running statistics.
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(channels, eps=1e-4), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels, in_channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)
        orthogonal_init_(self)
        nn.init.zeros_(layers[-1].weight)  # start as the identity D(x) = x, as the reference does

    def config(self) -> dict:
        return {"channels": self.channels, "depth": self.depth}

    def forward(self, x_noisy: torch.Tensor, sigma=None) -> torch.Tensor:
        return x_noisy - self.dncnn(x_noisy)

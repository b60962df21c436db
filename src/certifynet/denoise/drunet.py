"""DRUNet / UNetRes denoiser (Zhang et al., "Plug-and-Play Image Restoration with Deep Denoiser Prior", TPAMI 2021).

Input: the noisy image (C channels) plus ONE constant noise-level map, so the head sees C+1 channels.
The map is filled with σ itself, on the same [0, 1] pixel scale the Gaussian noise δ ~ N(0, σ²I) is drawn
in (σ = 0.25 → map value 0.25, not 0.25/255 and not a fixed 15/255). δ is added to the image only, never
to the map. The net predicts the clean image directly (no global residual).

Module names follow KAIR's `UNetRes` (cszn/KAIR, models/network_unet.py, built with bias=False):
m_head, m_down1..3 (nb ResBlocks then a 2×2 stride-2 conv, as one Sequential), m_body,
m_up3..1 (2×2 stride-2 ConvTranspose then nb ResBlocks), m_tail; a ResBlock's convs are `res.0`, `res.2`.
For nb ≥ 2 the published drunet_{gray,color}.pth state dicts load by key with no remap.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """Bias-free 3×3 convolution, padding 1."""
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)


def orthogonal_init_(model: nn.Module, gain: float = 1.0) -> nn.Module:
    """Orthogonal init of every (transposed) conv weight; conv biases ← 0, BN (γ, β) ← (1, 0)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def noise_level_map(x: torch.Tensor, sigma) -> torch.Tensor:
    """Constant map M[b, 0, i, j] = σ_b of shape [B, 1, H, W]; σ is a float, a 0-d tensor or a [B] tensor."""
    b, _, h, w = x.shape
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(b)
    if s.shape != (b,):
        raise ValueError(f"sigma must be a float or a tensor of shape [{b}], got shape {tuple(s.shape)}")
    return s.view(b, 1, 1, 1).expand(b, 1, h, w)


class ResBlock(nn.Module):
    """ResBlock(c): x + conv3×3(ReLU(conv3×3(x))), bias-free."""

    def __init__(self, c: int):
        super().__init__()
        self.res = nn.Sequential(conv3x3(c, c), nn.ReLU(inplace=True), conv3x3(c, c))

    def forward(self, x):
        return x + self.res(x)


class DRUNet(nn.Module):
    """UNetRes: head → 3×(nb ResBlocks, ↓2) → body → 3×(↑2, nb ResBlocks) → tail, additive skips.

    x1 = head(x); x2 = down1(x1); x3 = down2(x2); x4 = down3(x3); y = body(x4);
    y = up3(y + x4); y = up2(y + x3); y = up1(y + x2); D(x) = tail(y + x1).
    H, W not divisible by 8 are replicate-padded and the output is cropped back.
    Paper configuration (channels=(64,128,256,512), nb=4): 32,640,960 params (colour), 32,638,656 (grey).
    """

    arch = "drunet"

    def __init__(self, in_channels: int = 3, channels=(64, 128, 256, 512), nb: int = 4, init_gain: float = 0.2):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4 or nb < 1:
            raise ValueError(f"DRUNet needs 4 channel widths and nb >= 1, got channels={channels}, nb={nb}")
        self.in_channels, self.channels, self.nb = int(in_channels), channels, int(nb)
        c0, c1, c2, c3 = channels

        def blocks(c):
            return [ResBlock(c) for _ in range(nb)]

        def down(ci, co):  # 2×2 stride-2 conv, no activation
            return nn.Conv2d(ci, co, 2, stride=2, bias=False)

        def up(ci, co):
            return nn.ConvTranspose2d(ci, co, 2, stride=2, bias=False)

        self.m_head = conv3x3(in_channels + 1, c0)
        self.m_down1 = nn.Sequential(*blocks(c0), down(c0, c1))
        self.m_down2 = nn.Sequential(*blocks(c1), down(c1, c2))
        self.m_down3 = nn.Sequential(*blocks(c2), down(c2, c3))
        self.m_body = nn.Sequential(*blocks(c3))
        self.m_up3 = nn.Sequential(up(c3, c2), *blocks(c2))
        self.m_up2 = nn.Sequential(up(c2, c1), *blocks(c1))
        self.m_up1 = nn.Sequential(up(c1, c0), *blocks(c0))
        self.m_tail = conv3x3(c0, in_channels)
        orthogonal_init_(self, init_gain)  # KAIR's DRUNet training: orthogonal, gain 0.2

    def config(self) -> dict:
        return {"channels": list(self.channels), "nb": self.nb}

    def forward(self, x_noisy: torch.Tensor, sigma) -> torch.Tensor:
        """D(x_noisy ⊕ σ-map); σ on the [0, 1] pixel scale, float or per-sample tensor [B]."""
        h, w = x_noisy.shape[-2:]
        ph, pw = -h % 8, -w % 8
        x = F.pad(x_noisy, (0, pw, 0, ph), mode="replicate") if ph or pw else x_noisy
        x1 = self.m_head(torch.cat([x, noise_level_map(x, sigma)], dim=1))
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        y = self.m_body(x4)
        y = self.m_up3(y + x4)
        y = self.m_up2(y + x3)
        y = self.m_up1(y + x2)
        y = self.m_tail(y + x1)
        return y[..., :h, :w]

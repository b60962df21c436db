"""F∘D: noise → denoiser D (σ map) → the classifier's own normalisation → classifier F."""
from __future__ import annotations

import torch
import torch.nn as nn


def freeze(module: nn.Module) -> nn.Module:
    """eval() + requires_grad_(False); returns the module. Used for F while D trains."""
    module.eval()
    module.requires_grad_(False)
    return module


def _is_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


class DenoisedClassifier(nn.Module):
    """x_noisy ↦ F(D(x_noisy, σ)). F receives D's output unclamped and normalises it itself.

    `train(mode)` sets D's mode only while F is frozen (no parameter requires grad): F stays in eval,
    so a frozen classifier's BatchNorm statistics never move during denoiser training.
    """

    def __init__(self, denoiser: nn.Module, classifier: nn.Module, sigma: float):
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier
        self.sigma = float(sigma)

    def train(self, mode: bool = True):
        super().train(mode)
        if _is_frozen(self.classifier):
            self.classifier.eval()
        return self

    def forward(self, x_noisy: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(x_noisy, self.sigma))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"

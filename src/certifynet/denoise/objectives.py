"""Denoiser training objectives (denoised smoothing, Salman et al. 2020; DRUNet's L1).

Notation: x clean image in [0, 1], δ ~ N(0, σ²I), D the denoiser, F the frozen classifier, which contains
its own normalisation layer as its first module and takes [0, 1] images. `denoised` is D(x + δ).
Every loss is a mean over the batch (and over pixels for the image losses).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mse_loss(denoised: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """L_MSE = mean (D(x+δ) − x)²."""
    return F.mse_loss(denoised, clean)


def l1_loss(denoised: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """L_1 = mean |D(x+δ) − x| (DRUNet's training loss)."""
    return F.l1_loss(denoised, clean)


def classification_loss(classifier, denoised: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_clf = CE(F(D(x+δ)), y) with the true labels y."""
    return F.cross_entropy(classifier(denoised), labels)


def stability_loss(classifier, denoised: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """L_stab = CE(F(D(x+δ)), argmax F(x)); the pseudo-label comes from the clean x under no_grad.

    Gradients reach D only if F is frozen (see `certifynet.denoise.freeze`); F's mode is left as set.
    """
    with torch.no_grad():
        pseudo = classifier(clean).argmax(dim=1)
    return classification_loss(classifier, denoised, pseudo)

"""Denoisers for denoised smoothing: DRUNet, DnCNN, objectives, F∘D composition, a registry and checkpoints.

Every denoiser is called as `D(x_noisy, sigma)` with images in [0, 1] and σ on that same scale
(a float or a per-sample [B] tensor); DnCNN ignores σ. A checkpoint should store
`{"config": denoiser_config(D), "state_dict": D.state_dict(), ...}` and be rebuilt with
`build_denoiser_from_config(ckpt["config"])` followed by `load_denoiser_state_dict` (`registry`), or
written and read whole with `save_denoiser` / `load_denoiser` (`checkpoint`).
"""
from __future__ import annotations

from certifynet.denoise.checkpoint import LoadedDenoiser, load_denoiser, save_denoiser
from certifynet.denoise.compose import DenoisedClassifier, freeze
from certifynet.denoise.dncnn import DnCNN
from certifynet.denoise.drunet import DRUNet
from certifynet.denoise.objectives import classification_loss, l1_loss, mse_loss, stability_loss
from certifynet.denoise.registry import (DENOISER_PRESETS, build_denoiser_from_config, denoiser_config, get_denoiser,
                                         load_denoiser_state_dict)

__all__ = [
    "DENOISER_PRESETS", "DRUNet", "DnCNN", "DenoisedClassifier", "LoadedDenoiser", "build_denoiser_from_config",
    "classification_loss", "denoiser_config", "freeze", "get_denoiser", "l1_loss", "load_denoiser",
    "load_denoiser_state_dict", "mse_loss", "save_denoiser", "stability_loss",
]

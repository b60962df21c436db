"""Denoisers for denoised smoothing: DRUNet, DnCNN, objectives, F∘D composition and a registry.

Every denoiser is called as `D(x_noisy, sigma)` with images in [0, 1] and σ on that same scale
(a float or a per-sample [B] tensor); DnCNN ignores σ. A checkpoint should store
`{"config": denoiser_config(D), "state_dict": D.state_dict(), ...}` and be rebuilt with
`build_denoiser_from_config(ckpt["config"])` followed by `load_denoiser_state_dict`.
"""
from __future__ import annotations

import torch.nn as nn

from certifynet.denoise.compose import DenoisedClassifier, freeze
from certifynet.denoise.dncnn import DnCNN
from certifynet.denoise.drunet import DRUNet
from certifynet.denoise.objectives import classification_loss, l1_loss, mse_loss, stability_loss
from certifynet.errors import CertifyNetError
from certifynet.models import unwrap_model

_ARCHS = {cls.arch: cls for cls in (DRUNet, DnCNN)}

# name -> architecture and its default hyper-parameters (any of them can be overridden in get_denoiser).
DENOISER_PRESETS = {
    "drunet": {"arch": "drunet", "channels": (64, 128, 256, 512), "nb": 4},  # paper configuration
    "drunet_small": {"arch": "drunet", "channels": (16, 32, 64, 64), "nb": 1},  # CPU tests / quickstart
    "dncnn": {"arch": "dncnn", "channels": 64, "depth": 17},
}


def get_denoiser(name: str, in_channels: int, **kw) -> nn.Module:
    """Build preset `name` for `in_channels` image channels; keyword arguments override the preset."""
    if name not in DENOISER_PRESETS:
        raise CertifyNetError(f"unknown denoiser {name!r}; choose one of {sorted(DENOISER_PRESETS)}")
    preset = dict(DENOISER_PRESETS[name])
    cls = _ARCHS[preset.pop("arch")]
    try:
        return cls(in_channels=in_channels, **{**preset, **kw})
    except (TypeError, ValueError) as e:
        raise CertifyNetError(f"bad configuration for denoiser {name!r}: {e}") from e


def denoiser_config(model: nn.Module) -> dict:
    """Architecture record, e.g. {"name": "drunet", "in_channels": 3, "channels": [64,128,256,512], "nb": 4}."""
    model = unwrap_model(model)
    return {"name": model.arch, "in_channels": model.in_channels, **model.config()}


def build_denoiser_from_config(cfg: dict) -> nn.Module:
    """Inverse of `denoiser_config` (fresh weights)."""
    cfg = dict(cfg)
    try:
        name, in_channels = cfg.pop("name"), cfg.pop("in_channels")
    except KeyError as e:
        raise CertifyNetError(f"denoiser config lacks {e}: {cfg}") from e
    return get_denoiser(name, in_channels, **cfg)


def load_denoiser_state_dict(model: nn.Module, state: dict, strict: bool = True):
    """Load own, KAIR (drunet_*.pth) or denoised-smoothing weights: a bare state dict or one under
    "state_dict"/"model"; DataParallel's `module.` prefix is stripped. Returns load_state_dict's result."""
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return unwrap_model(model).load_state_dict(state, strict=strict)


__all__ = [
    "DENOISER_PRESETS", "DRUNet", "DnCNN", "DenoisedClassifier", "build_denoiser_from_config",
    "classification_loss", "denoiser_config", "freeze", "get_denoiser", "l1_loss",
    "load_denoiser_state_dict", "mse_loss", "stability_loss",
]

# Checkpoints (after the definitions above: checkpoint.py imports them).
from certifynet.denoise.checkpoint import LoadedDenoiser, load_denoiser, save_denoiser  # noqa: E402

__all__ += ["LoadedDenoiser", "load_denoiser", "save_denoiser"]

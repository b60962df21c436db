"""The denoiser registry: presets by name (`DENOISER_PRESETS`, `get_denoiser`), the architecture record a
checkpoint stores (`denoiser_config`) and its inverse (`build_denoiser_from_config`), and loading weights
of our, KAIR's or denoised-smoothing's layout into a built denoiser (`load_denoiser_state_dict`)."""
from __future__ import annotations

import torch.nn as nn

from certifynet.denoise.dncnn import DnCNN
from certifynet.denoise.drunet import DRUNet
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

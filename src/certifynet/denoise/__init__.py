"""Denoisers for denoised smoothing: DRUNet, DnCNN, objectives, F∘D composition, a registry and checkpoints.

Every denoiser is called as `D(x_noisy, sigma)` with images in [0, 1] and σ on that same scale
(a float or a per-sample [B] tensor); DnCNN ignores σ. A checkpoint should store
`{"config": denoiser_config(D), "state_dict": D.state_dict(), ...}` and be rebuilt with
`build_denoiser_from_config(ckpt["config"])` followed by `load_denoiser_state_dict` (`registry`), or
written and read whole with `save_denoiser` / `load_denoiser` (`checkpoint`). Diffusion denoisers (Carlini et al.
2023): `certifynet.denoise.diffusion`. Every name is loaded on first use (as in `certifynet.sampling`), so that
the torch-free `certifynet.denoise.diffusion.options` can be imported without torch.
"""
from __future__ import annotations

from certifynet.lazy import lazy_exports

_EXPORTS = {
    "checkpoint": ("LoadedDenoiser", "load_denoiser", "save_denoiser"),
    "compose": ("DenoisedClassifier", "freeze"),
    "dncnn": ("DnCNN",),
    "drunet": ("DRUNet",),
    "objectives": ("classification_loss", "l1_loss", "mse_loss", "stability_loss"),
    "registry": ("DENOISER_PRESETS", "build_denoiser_from_config", "denoiser_config", "get_denoiser",
                 "load_denoiser_state_dict"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

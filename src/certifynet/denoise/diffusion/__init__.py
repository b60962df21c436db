"""Diffusion denoised smoothing (Carlini et al., "(Certified!!) Adversarial Robustness for Free!", ICLR 2023).

An off-the-shelf diffusion UNet denoises x + δ in one step at the time t* whose noise level matches σ, and any
classifier classifies the result. Entry points:

- `load_diffusion_denoiser(path, σ, DiffusionOptions(...))` → (DiffusionDenoiser, meta): a diffusers folder (flat,
  pipeline or hub-cache layout) or an OpenAI improved/guided-diffusion checkpoint, offline; `is_diffusion_source`.
- `build_classifier(ClassifierSpec(...))`: registry / torchvision / timm classifiers with resize + normalisation.
- `choose_t`, the schedules (float64): schedule.py; the OpenAI → diffusers key map: openai.py.
- `train_ddpm(DDPMOptions(...))`: a small ε-prediction UNet2DModel on mnist5k, saved as a diffusers folder.
diffusers itself is imported only when a model is built or loaded. Every name is loaded on first use (as in
`certifynet.sampling`), so the torch-free `DiffusionOptions` serves `SamplingConfig` and every CLI `--help`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "classifiers": ("ClassifierSpec", "ResizeNormalize", "build_classifier"),
    "denoiser": ("DIFFUSION_STREAM_OFFSET", "DiffusionDenoiser", "NoiseStream", "diffusion_denoisers",
                 "diffusion_noise_stream"),
    "load": ("describe_chain", "is_diffusers_folder", "is_diffusion_source", "load_diffusion_denoiser",
             "load_summary"),
    "options": ("DIFFUSION_FIELDS", "DiffusionOptions"),
    "schedule": ("Schedule", "TStar", "choose_t", "cosine_schedule", "linear_schedule", "parse_schedule",
                 "schedule_from_config"),
    "train": ("DDPMOptions", "train_ddpm"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

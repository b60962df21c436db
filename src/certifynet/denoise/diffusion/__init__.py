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

from certifynet.lazy import lazy_exports

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
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

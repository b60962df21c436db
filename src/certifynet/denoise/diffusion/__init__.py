"""Diffusion denoised smoothing (Carlini et al., "(Certified!!) Adversarial Robustness for Free!", ICLR 2023).

An off-the-shelf diffusion UNet denoises x + δ in one step at the time t* whose noise level matches σ, and any
classifier classifies the result. Entry points:

- `load_diffusion_denoiser(path, σ, DiffusionOptions(...))` → (DiffusionDenoiser, meta): a diffusers folder (flat,
  pipeline or hub-cache layout) or an OpenAI improved/guided-diffusion checkpoint, offline; `is_diffusion_source`.
- `build_classifier(ClassifierSpec(...))`: registry / torchvision / timm classifiers with resize + normalisation.
- `choose_t`, the schedules (float64): schedule.py; the OpenAI → diffusers key map: openai.py.
- `train_ddpm(DDPMOptions(...))`: a small ε-prediction UNet2DModel on mnist5k, saved as a diffusers folder.
diffusers itself is imported only when a model is built or loaded.
"""
from __future__ import annotations

from certifynet.denoise.diffusion.classifiers import ClassifierSpec, ResizeNormalize, build_classifier
from certifynet.denoise.diffusion.denoiser import (
    DIFFUSION_STREAM_OFFSET,
    DiffusionDenoiser,
    NoiseStream,
    diffusion_denoisers,
    diffusion_noise_stream,
)
from certifynet.denoise.diffusion.load import describe_chain, is_diffusion_source, load_diffusion_denoiser, load_summary
from certifynet.denoise.diffusion.options import DiffusionOptions
from certifynet.denoise.diffusion.schedule import (
    Schedule,
    TStar,
    choose_t,
    cosine_schedule,
    linear_schedule,
    parse_schedule,
    schedule_from_config,
)
from certifynet.denoise.diffusion.train import DDPMOptions, train_ddpm

__all__ = [
    "DDPMOptions", "DIFFUSION_STREAM_OFFSET", "ClassifierSpec", "DiffusionDenoiser", "DiffusionOptions", "NoiseStream",
    "ResizeNormalize", "Schedule", "TStar", "build_classifier", "choose_t", "cosine_schedule", "describe_chain",
    "diffusion_denoisers", "diffusion_noise_stream", "is_diffusion_source", "linear_schedule",
    "load_diffusion_denoiser", "load_summary", "parse_schedule", "schedule_from_config", "train_ddpm",
]

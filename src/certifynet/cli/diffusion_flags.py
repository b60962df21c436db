"""The diffusion-denoiser flags of sample/certify/predict/attack/web (`add_diffusion_args`), whose dests are the
fields of `certifynet.denoise.diffusion.DiffusionOptions` (fill it with `DiffusionOptions.from_namespace(args)`).
They apply only when --denoiser names a diffusion model (a diffusers folder or an OpenAI checkpoint). Torch-free:
every --help (and certify.py --counts) builds on it."""
from __future__ import annotations

import argparse

from certifynet.denoise.diffusion.options import (
    DIFFUSION_FIELDS,
    INPUT_RANGES,
    PREDICTION_TYPES,
    QKV_ORDERS,
    DiffusionOptions,
)
from certifynet.denoise.diffusion.schedule import T_RULES

# dests, for `refuse(args, DIFFUSION_DESTS, "without a diffusion --denoiser")`
DIFFUSION_DESTS = DIFFUSION_FIELDS


def add_diffusion_args(parser: argparse.ArgumentParser, d=None) -> None:
    """The flags, with defaults from `d` (a `SamplingConfig` or `DiffusionOptions`; default DiffusionOptions())."""
    d = d or DiffusionOptions()
    g = parser.add_argument_group("diffusion denoiser (when --denoiser is a diffusers folder or an OpenAI .pt)")
    g.add_argument("--diffusion-steps", type=int, default=d.diffusion_steps,
                   help="K reverse steps from t* (1: one shot; K > 1 draws fresh noise per input stream)")
    g.add_argument("--diffusion-t-rule", choices=T_RULES, default=d.diffusion_t_rule,
                   help="t*: first t with noise ≥ 2σ (first), closest (nearest), exact real t (exact, continuous "
                        "models); auto = exact if --diffusion-continuous else first")
    g.add_argument("--diffusion-schedule", metavar="SPEC",
                   help="noise schedule when the files do not say it: linear[:T[:b0:b1]], scaled_linear[...], "
                        "cosine[:T] (default: the scheduler config, or the OpenAI preset)")
    g.add_argument("--diffusion-prediction", choices=PREDICTION_TYPES,
                   help="what the UNet predicts (default: the scheduler config's prediction_type, else epsilon)")
    g.add_argument("--diffusion-input-range", choices=tuple(INPUT_RANGES),
                   help="pixel range the model was trained on (default -1,1)")
    g.add_argument("--diffusion-timestep-rescale", type=float, metavar="R",
                   help="feed the UNet t·R (default 1; OpenAI files 1000/T, improved-diffusion's rescale_timesteps)")
    g.add_argument("--diffusion-continuous", action="store_const", const=True, default=None,
                   help="the UNet was trained at real-valued t (allows --diffusion-t-rule exact)")
    g.add_argument("--diffusion-resolution", type=int, metavar="S",
                   help="resize to S×S for the UNet and back (default: the input's size, reflect-padded)")
    g.add_argument("--diffusion-no-clip", action="store_true", help="do not clip x̂₀ to the model's range")
    g.add_argument("--openai-heads", type=int, metavar="H", help="attention heads of an OpenAI UNet (num_heads)")
    g.add_argument("--openai-head-channels", type=int, metavar="C",
                   help="channels per attention head of an OpenAI UNet (num_head_channels)")
    g.add_argument("--qkv-order", choices=QKV_ORDERS,
                   help="OpenAI qkv layout: legacy (heads, 3, ch) of both published checkpoints, or new (3, heads, "
                        "ch) of guided-diffusion's use_new_attention_order (default legacy)")

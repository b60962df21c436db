"""What a diffusion model's files cannot say, as one typed configuration the CLI fills (`from_namespace`).

Torch-free (with numpy only, like `schedule.py`): `SamplingConfig` and every CLI `--help` build on it. Field names
are the CLI's argparse dests, so an error names `--diffusion-steps` on the command line and
`diffusion_steps` in Python. `None` means "from the files, else the default" (precedence: flag > the folder's
`certifynet_diffusion.json` > its scheduler config / the OpenAI preset > default).

| field | CLI flag | default |
|---|---|---|
| diffusion_input_range | --diffusion-input-range {-1,1 \\| 0,1} | -1,1 |
| diffusion_prediction | --diffusion-prediction {epsilon, sample, v_prediction} | scheduler config, else epsilon |
| diffusion_schedule | --diffusion-schedule linear[:T[:b0:b1]] \\| scaled_linear[..] \\| cosine[:T] | the files |
| diffusion_t_rule | --diffusion-t-rule {auto, first, nearest, exact} | auto (exact if continuous, else first) |
| diffusion_timestep_rescale | --diffusion-timestep-rescale R (UNet fed t·R) | 1; OpenAI files 1000/T |
| diffusion_continuous | --diffusion-continuous (the UNet takes real t) | false |
| diffusion_resolution | --diffusion-resolution S (resize to S×S for the UNet) | none: the input's size, padded |
| diffusion_steps | --diffusion-steps K (reverse steps from t*) | 1 (one shot) |
| diffusion_no_clip | --diffusion-no-clip | false (x̂₀ clipped to the range) |
| openai_heads / openai_head_channels | --openai-heads H / --openai-head-channels C | the matched preset |
| qkv_order | --qkv-order {legacy, new} | legacy |
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from certifynet.denoise.diffusion.schedule import T_RULES, parse_schedule
from certifynet.errors import CertifyNetError

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
INPUT_RANGES = {"-1,1": (2.0, -1.0), "0,1": (1.0, 0.0)}   # name → (a, b): model input a·x + b
QKV_ORDERS = ("legacy", "new")       # OpenAI qkv channels: (heads, 3, ch) or (3, heads, ch) (openai.py)
MAX_WEIGHT_BYTES = 8 << 30           # guided-diffusion's 256×256 UNet is 2.2 GB in fp32


@dataclass
class DiffusionOptions:
    """Flags of a diffusion denoiser (module docstring); `check()` validates them before anything is loaded."""
    diffusion_input_range: str | None = None
    diffusion_prediction: str | None = None
    diffusion_schedule: str | None = None
    diffusion_t_rule: str = "auto"
    diffusion_timestep_rescale: float | None = None
    diffusion_continuous: bool | None = None
    diffusion_resolution: int | None = None
    diffusion_steps: int = 1
    diffusion_no_clip: bool = False
    openai_heads: int | None = None
    openai_head_channels: int | None = None
    qkv_order: str | None = None
    max_bytes: int = MAX_WEIGHT_BYTES

    @classmethod
    def from_namespace(cls, args) -> DiffusionOptions:
        """The fields present on an argparse Namespace or a `SamplingConfig` (absent ones keep their defaults),
        checked."""
        opts = cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
        opts.check()
        return opts

    def check(self) -> DiffusionOptions:
        def choice(name, allowed):
            v = getattr(self, name)
            if v is not None and v not in allowed:
                raise CertifyNetError(f"{{{name}}} must be one of {', '.join(allowed)}, got {v!r}", name)
        choice("diffusion_input_range", tuple(INPUT_RANGES))
        choice("diffusion_prediction", PREDICTION_TYPES)
        choice("diffusion_t_rule", T_RULES)
        choice("qkv_order", QKV_ORDERS)
        if self.diffusion_schedule is not None:
            parse_schedule(self.diffusion_schedule)
        r = self.diffusion_timestep_rescale
        if r is not None and not (math.isfinite(r) and r > 0):
            raise CertifyNetError(f"{{diffusion_timestep_rescale}} must be > 0, got {r}", "diffusion_timestep_rescale")
        for name, low in (("diffusion_resolution", 1), ("diffusion_steps", 1), ("openai_heads", 1),
                          ("openai_head_channels", 1)):
            v = getattr(self, name)
            if v is not None and int(v) < low:
                raise CertifyNetError(f"{{{name}}} must be >= {low}, got {v}", name)
        if self.openai_heads and self.openai_head_channels:
            raise CertifyNetError("give {openai_heads} or {openai_head_channels}, not both", "openai_heads",
                                  "openai_head_channels")
        return self

    def record(self) -> dict:
        """The flags as given (for the sidecar), max_bytes left out."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "max_bytes"}


# The flags' names (argparse dests, and `SamplingConfig` fields): every field but max_bytes, in order.
DIFFUSION_FIELDS = tuple(f.name for f in fields(DiffusionOptions) if f.name != "max_bytes")

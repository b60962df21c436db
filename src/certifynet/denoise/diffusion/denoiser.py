"""The diffusion denoiser D(x + δ, σ) of Carlini et al. (ICLR 2023): one shot by default, K reverse steps on request.

One shot, for x + δ ∈ [0, 1]-scale pixels (δ ~ N(0, σ²I), drawn by the certifier) and a model on a·x + b:
    x_t* = √ᾱ_t* · (a(x + δ) + b)                      (the law of the forward process at t* given x₀ = a·x + b)
    p̂ = UNet(x_t*, t*·rescale)[:, :C]                  (first C channels: learned-variance rows dropped)
    x̂₀ = (x_t* − √(1 − ᾱ_t*)·ε̂)/√ᾱ_t*                  (ε-prediction; x₀-prediction: x̂₀ = p̂;
                                                          v-prediction: x̂₀ = √ᾱ·x_t* − √(1 − ᾱ)·v̂)
    output (clip(x̂₀, range) − b)/a ∈ [0, 1].
This is a deterministic function of x + δ (eval mode, no noise drawn), so the NP/DSRS certificate for σ holds for
any t*. Sizes that the UNet cannot take (not a multiple of 2^(levels−1)) are reflect-padded and cropped back.

K steps (`steps = K > 1`): times τ_K = t* > … > τ_1 (`schedule.step_times`); at each τ_k, x̂₀ as above, clipped,
then x_{τ_{k−1}} ~ q(x_{τ_{k−1}} | x_{τ_k}, x̂₀), the DDPM posterior, with fresh noise ξ; the output is x̂₀ at τ_1.
Why the certificate still holds: the base classifier f(z, ξ) is now randomised, and the smoothed classifier is
taken over (δ, ξ). With ξ drawn independently of δ and of the input, define the soft base classifier
h_c(z) = P_ξ[f(z, ξ) = c] ∈ [0, 1]; then P_{δ,ξ}[f(x + δ, ξ) = c] = E_δ[h_c(x + δ)], and the NP bound holds for
any [0, 1]-valued h (Salman et al. 2019's argument for soft base classifiers), so certifying from the counts of
f(x + δ_j, ξ_j) is sound. ξ comes from `NoiseStream`, a generator seeded by (seed, idx, stream) only
(`diffusion_noise_stream`), so runs are reproducible and ξ never depends on δ. Cost: K UNet passes per draw
instead of one (the classifier's pass is unchanged), and h is a noisier function of z, which can only lower
the counts, never make the certificate unsound. Under CUDA-graph capture the K-step module refuses to run (its
noise would be frozen into the graph), and no DiffusionDenoiser can be traced (K-step: the same reason; one shot:
eager was 1.2–1.4× faster than the Sampler's CPU trace), so the Sampler falls back to eager mode.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from certifynet.denoise.diffusion.options import INPUT_RANGES, PREDICTION_TYPES
from certifynet.denoise.diffusion.schedule import Schedule, TStar, choose_t, step_times
from certifynet.errors import CertifyNetError

# K-step noise ξ: input idx's stream s draws from (seed, idx, DIFFUSION_STREAM_OFFSET + s), apart from δ's streams.
DIFFUSION_STREAM_OFFSET = 100


class NoiseStream:
    """Where K-step denoising draws ξ: one generator per device, seeded by (seed, idx, stream) through
    `sampling.input_generator`. Shared, not copied, when the model is deep-copied (the Sampler's private copy
    draws from the stream the caller bound)."""

    def __init__(self, seed: int = 0, idx: int = 0, stream: int = 0):
        self.bind(seed, idx, stream)

    def bind(self, seed: int, idx: int, stream: int) -> None:
        self.key = (int(seed), int(idx), DIFFUSION_STREAM_OFFSET + int(stream))
        self._gens: dict = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._gens:
            from certifynet.sampling import input_generator
            self._gens[key] = input_generator(*self.key, device)
        return self._gens[key]

    def __deepcopy__(self, memo):
        return self


class DiffusionDenoiser(nn.Module):
    """D(x_noisy, σ) ↦ x̂ ∈ [0, 1] with a diffusers UNet2DModel (module docstring).

    `schedule`: ᾱ_t in float64; `prediction_type`: epsilon | sample | v_prediction; `input_range`: '-1,1' or
    '0,1'; `t_rule`, `continuous`: how t* is chosen (`schedule.choose_t`); `timestep_rescale`: the UNet is fed
    t·rescale; `steps`: K (1 = one shot); `resolution`: resize to this size before the UNet and back after
    (None: the input's own size, reflect-padded to a multiple the UNet takes)."""

    arch = "diffusion"

    def __init__(self, unet: nn.Module, schedule: Schedule, sigma: float, *, prediction_type: str = "epsilon",
                 input_range: str = "-1,1", t_rule: str = "auto", continuous: bool = False,
                 timestep_rescale: float = 1.0, steps: int = 1, clip: bool = True, resolution: int | None = None):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise CertifyNetError(f"{{diffusion_prediction}} must be one of {', '.join(PREDICTION_TYPES)}, "
                                  f"got {prediction_type!r}", "diffusion_prediction")
        if input_range not in INPUT_RANGES:
            raise CertifyNetError(f"{{diffusion_input_range}} must be one of {', '.join(INPUT_RANGES)}, "
                                  f"got {input_range!r}", "diffusion_input_range")
        if int(steps) < 1:
            raise CertifyNetError(f"{{diffusion_steps}} must be >= 1, got {steps}", "diffusion_steps")
        self.unet = unet
        self.schedule, self.prediction_type, self.input_range = schedule, prediction_type, input_range
        self.a, self.b = INPUT_RANGES[input_range]
        self.t_rule, self.continuous, self.timestep_rescale = t_rule, bool(continuous), float(timestep_rescale)
        self.steps, self.clip, self.resolution = int(steps), bool(clip), resolution
        self.noise = NoiseStream()
        self.sigma = float(sigma)
        self._tstars: dict[float, TStar] = {}
        self.tstar = self.t_star(self.sigma)
        levels = len(getattr(getattr(unet, "config", None), "block_out_channels", ()) or (0,))
        self.multiple = 2 ** max(levels - 1, 0)

    def t_star(self, sigma: float) -> TStar:
        """t* for σ (cached): see `schedule.choose_t`."""
        sigma = float(sigma)
        if sigma not in self._tstars:
            self._tstars[sigma] = choose_t(self.schedule, sigma, self.a, self.t_rule, self.continuous,
                                           self.timestep_rescale)
        return self._tstars[sigma]

    def config(self) -> dict:
        """Architecture-free settings (the UNet's own config lives in its folder)."""
        return {"schedule": self.schedule.record(), "prediction_type": self.prediction_type,
                "input_range": self.input_range, "t_rule": self.tstar.rule, "continuous_timesteps": self.continuous,
                "timestep_rescale": self.timestep_rescale, "steps": self.steps, "clip": self.clip,
                "resolution": self.resolution}

    # ---------------------------------------------------------------- the UNet at one time
    def _unet(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        ts = torch.full((x_t.shape[0],), t * self.timestep_rescale, device=x_t.device,
                        dtype=torch.float32 if self.continuous or not float(t).is_integer()
                        or self.timestep_rescale != 1.0 else torch.long)
        out = self.unet(x_t, ts, return_dict=False)[0]
        return out[:, :x_t.shape[1]].float()

    def _x0(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """x̂₀ from the UNet's prediction at time t, clipped to the model's range when `clip`."""
        ab = self.schedule.alpha_bar(t)
        pred = self._unet(x_t, t)
        if self.prediction_type == "epsilon":
            x0 = (x_t - math.sqrt(1.0 - ab) * pred) / math.sqrt(ab)
        elif self.prediction_type == "sample":
            x0 = pred
        else:
            x0 = math.sqrt(ab) * x_t - math.sqrt(1.0 - ab) * pred
        lo, hi = self.b, self.a + self.b
        return x0.clamp(lo, hi) if self.clip else x0

    def _posterior(self, x_t, x0, t, s, generator):
        """x_s ~ q(x_s | x_t, x₀) for s < t: mean √ᾱ_s·β̃/(1−ᾱ_t)·x₀ + √(ᾱ_t/ᾱ_s)(1−ᾱ_s)/(1−ᾱ_t)·x_t with
        β̃ = 1 − ᾱ_t/ᾱ_s, variance (1−ᾱ_s)/(1−ᾱ_t)·β̃."""
        at, as_ = self.schedule.alpha_bar(t), self.schedule.alpha_bar(s)
        beta = 1.0 - at / as_
        mean = (math.sqrt(as_) * beta / (1 - at)) * x0 + (math.sqrt(at / as_) * (1 - as_) / (1 - at)) * x_t
        std = math.sqrt((1 - as_) / (1 - at) * beta)
        xi = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=torch.float32)
        return mean + std * xi

    # ---------------------------------------------------------------- forward
    def forward(self, x_noisy: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        if sigma is not None and torch.is_tensor(sigma):
            if sigma.numel() != 1 and not torch.all(sigma == sigma.flatten()[0]):
                raise CertifyNetError("a diffusion denoiser takes one σ per batch, not one per sample")
            sigma = float(sigma.flatten()[0])
        ts = self.tstar if sigma is None else self.t_star(sigma)
        self._refuse_capture()
        z, crop = self._to_model(x_noisy)
        x = math.sqrt(ts.alpha_bar) * z
        times = step_times(ts.t, self.steps, integer=not self.continuous)
        for i, t in enumerate(times):
            x0 = self._x0(x, t)
            if i + 1 < len(times):
                x = self._posterior(x, x0, t, times[i + 1], self.noise.generator(x.device))
        return self._from_model(x0, crop, x_noisy)

    def _to_model(self, x: torch.Tensor):
        """a·x + b, resized to `resolution` or reflect-padded to a multiple of 2^(levels−1)."""
        z = (self.a * x.float() + self.b)
        h, w = z.shape[-2:]
        if self.resolution and (h, w) != (self.resolution, self.resolution):
            return F.interpolate(z, size=(self.resolution, self.resolution), mode="bilinear",
                                 align_corners=False), ("resize", h, w)
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            return F.pad(z, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode), ("pad", h, w, ph, pw)
        return z, None

    def _from_model(self, x0: torch.Tensor, crop, like: torch.Tensor) -> torch.Tensor:
        if crop is not None and crop[0] == "resize":
            x0 = F.interpolate(x0, size=crop[1:], mode="bilinear", align_corners=False)
        elif crop is not None:
            _, h, w, ph, pw = crop
            x0 = x0[..., ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]
        return ((x0 - self.b) / self.a).to(like.dtype)

    def _refuse_capture(self) -> None:
        """Never traced: K-step noise must be drawn afresh at every call, and a one-shot UNet ran 1.2–1.4× slower
        through the Sampler's CPU trace than eagerly (docs/diffusion.md), so the Sampler falls back to eager
        mode. K-step noise is never captured into a CUDA graph either (one shot may be)."""
        if torch.jit.is_tracing():
            raise RuntimeError("a diffusion denoiser runs eagerly: it cannot be traced (K-step draws fresh noise per "
                               "call; one shot is faster eager on the CPU)")
        if self.steps > 1 and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("K-step diffusion denoising draws fresh noise per call; it cannot be graphed")

    def extra_repr(self) -> str:
        ts = self.tstar
        return (f"sigma={self.sigma}, t*={ts.t:g}, alpha_bar={ts.alpha_bar:.5f}, schedule={self.schedule.describe()}, "
                f"prediction={self.prediction_type}, steps={self.steps}")


def diffusion_denoisers(model: nn.Module) -> list[DiffusionDenoiser]:
    return [m for m in model.modules() if isinstance(m, DiffusionDenoiser)]


@contextlib.contextmanager
def diffusion_noise_stream(model: nn.Module, seed: int, idx: int, stream: int):
    """While open, every K-step DiffusionDenoiser inside `model` draws ξ from input idx's (seed, idx, stream)
    generator (offset from δ's streams by DIFFUSION_STREAM_OFFSET); a no-op for one-shot denoisers. The
    sampler wraps each input's counts in it, so ξ never depends on other inputs, sharding or resumption."""
    dens = [d for d in diffusion_denoisers(model) if d.steps > 1]
    saved = [d.noise.key for d in dens]
    for d in dens:
        d.noise.bind(seed, idx, stream)
    try:
        yield
    finally:
        for d, key in zip(dens, saved):
            d.noise.bind(key[0], key[1], key[2] - DIFFUSION_STREAM_OFFSET)

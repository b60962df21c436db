"""Noise schedules in float64 and the choice of t* for diffusion denoised smoothing (Carlini et al., ICLR 2023).

Forward process (Ho et al. 2020), 0-indexed t = 0 … T−1 as in diffusers and OpenAI's code:
    ᾱ_t = ∏_{i ≤ t} (1 − β_i),   x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε.
Its noise level (noise-to-signal ratio) is ν_t = √((1 − ᾱ_t)/ᾱ_t), increasing in t.

The certifier adds δ ~ N(0, σ²I) to x ∈ [0, 1]. The model works on a·x + b (a = 2, b = −1 for the usual
[−1, 1] range; a = 1, b = 0 for [0, 1]), where the noise has standard deviation a·σ. Scaling the noisy image by
√ᾱ_t gives √ᾱ_t(a·x + b) + √ᾱ_t·aσ·z, which has exactly the law of x_t given x₀ = a·x + b when ν_t = a·σ,
i.e. ᾱ_t = 1/(1 + a²σ²). t* is chosen by one of these rules (`choose_t`):

- ``first``: the first integer t with ν_t ≥ a·σ (Carlini et al.'s code; the reference values t* = 145 / 259 / 396
  for the linear schedule and 1158 / 1984 / 2809 for the cosine one with T = 4000, at σ = 0.25 / 0.5 / 1.0);
- ``nearest``: the integer t whose log ν_t is closest to log(a·σ);
- ``exact``: the real t with ν_t = a·σ exactly, log ᾱ interpolated linearly between integer t (exact at every
  integer, monotone); only for models that take a continuous timestep;
- ``auto``: ``exact`` where the model takes continuous timesteps, else ``first``.

Whatever t* is, denoise-then-classify is a deterministic function of x + δ, so the certificate for σ holds; t*
only decides how well the UNet's assumption (noise level ν_t*) matches the actual one (a·σ).
The UNet assumes pixel-space noise σ_model = ν_t*/a; `TStar.effective_sigma` records it.
Pure numpy: no torch, no files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from certifynet.errors import CertifyNetError

T_RULES = ("auto", "first", "nearest", "exact")
SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine", "trained")


@dataclass(frozen=True)
class Schedule:
    """ᾱ_t (float64, length T) and the parameters that define it (`params`, for the sidecar)."""
    kind: str
    alphas_cumprod: np.ndarray = field(repr=False)
    params: dict = field(default_factory=dict)

    @property
    def T(self) -> int:
        return len(self.alphas_cumprod)

    def noise_levels(self) -> np.ndarray:
        """ν_t = √((1 − ᾱ_t)/ᾱ_t) for t = 0 … T−1."""
        a = self.alphas_cumprod
        return np.sqrt((1.0 - a) / a)

    def alpha_bar(self, t: float) -> float:
        """ᾱ at a real t in [0, T−1]: log ᾱ interpolated linearly between the integers (exact at integers)."""
        if not 0.0 <= t <= self.T - 1:
            raise CertifyNetError(f"t = {t} is outside the schedule's [0, {self.T - 1}]")
        return float(np.exp(np.interp(t, np.arange(self.T), np.log(self.alphas_cumprod))))

    def describe(self) -> str:
        p = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({p})"

    def record(self) -> dict:
        """JSON-able description for sidecars."""
        return {"kind": self.kind, "T": self.T, **self.params}


def _from_betas(kind: str, betas: np.ndarray, params: dict) -> Schedule:
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or len(betas) < 2 or not np.all((betas > 0) & (betas < 1)):
        raise CertifyNetError(f"a {kind} schedule needs T >= 2 betas in (0, 1)")
    return Schedule(kind, np.cumprod(1.0 - betas), params)


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Ho et al.'s β_t linear from beta_start to beta_end (google/ddpm-cifar10-32, guided-diffusion 256×256)."""
    return _from_betas("linear", np.linspace(beta_start, beta_end, int(T), dtype=np.float64),
                       {"beta_start": float(beta_start), "beta_end": float(beta_end)})


def scaled_linear_schedule(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
    """diffusers' "scaled_linear": √β linear from √beta_start to √beta_end."""
    betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), int(T), dtype=np.float64) ** 2
    return _from_betas("scaled_linear", betas, {"beta_start": float(beta_start), "beta_end": float(beta_end)})


def cosine_schedule(T: int = 4000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal's cosine schedule (improved-diffusion; diffusers "squaredcos_cap_v2"):
    f(u) = cos²((u + s)/(1 + s) · π/2), β_t = min(1 − f((t+1)/T)/f(t/T), max_beta)."""
    T = int(T)
    u = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    return _from_betas("cosine", betas, {"s": float(s), "max_beta": float(max_beta)})


def trained_schedule(betas) -> Schedule:
    """An explicit list of β_t (diffusers' `trained_betas`)."""
    return _from_betas("trained", np.asarray(betas, dtype=np.float64), {})


def schedule_from_config(cfg: dict, where: str = "scheduler config") -> Schedule:
    """The schedule of a diffusers scheduler config (DDPMScheduler, DDIMScheduler, ... all share these keys):
    num_train_timesteps, beta_schedule (linear | scaled_linear | squaredcos_cap_v2), beta_start, beta_end,
    trained_betas. Refuses what it cannot reproduce exactly (other schedules, zero-SNR rescaling)."""
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("rescale_betas_zero_snr"):
        raise CertifyNetError(f"{where}: rescale_betas_zero_snr is not supported (ᾱ_T = 0 has no t* rule)")
    if cfg.get("trained_betas") is not None:
        return trained_schedule(cfg["trained_betas"])
    kind = cfg.get("beta_schedule", "linear")
    start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if kind == "linear":
        return linear_schedule(T, start, end)
    if kind == "scaled_linear":
        return scaled_linear_schedule(T, start, end)
    if kind == "squaredcos_cap_v2":
        if cfg.get("alpha_transform_type", "cosine") != "cosine":
            raise CertifyNetError(f"{where}: alpha_transform_type {cfg['alpha_transform_type']!r} is not supported")
        return cosine_schedule(T)
    raise CertifyNetError(f"{where}: beta_schedule {kind!r} is not supported "
                          f"(linear, scaled_linear, squaredcos_cap_v2 or trained_betas)")


def parse_schedule(text: str, name: str = "diffusion_schedule") -> Schedule:
    """A schedule from its short spelling: ``linear[:T[:beta_start:beta_end]]`` (default 1000, 1e-4, 0.02),
    ``scaled_linear[:T[:beta_start:beta_end]]``, ``cosine[:T]`` (default 4000, s = 0.008)."""
    kind, *rest = str(text).strip().split(":")
    try:
        nums = [float(v) for v in rest]
    except ValueError:
        nums = None
    shapes = {"linear": (0, 1, 3), "scaled_linear": (0, 1, 3), "cosine": (0, 1)}
    if kind not in shapes or nums is None or len(nums) not in shapes[kind] or (nums and nums[0] != int(nums[0])):
        raise CertifyNetError(f"{{{name}}} must be linear[:T[:beta_start:beta_end]], scaled_linear[:T[:start:end]] "
                              f"or cosine[:T], got {text!r}", name)
    if nums and nums[0] < 2:
        raise CertifyNetError(f"{{{name}}}: T must be >= 2, got {text!r}", name)
    if kind == "cosine":
        return cosine_schedule(int(nums[0]) if nums else 4000)
    fn = linear_schedule if kind == "linear" else scaled_linear_schedule
    return fn(int(nums[0]), *nums[1:]) if nums else fn()


@dataclass(frozen=True)
class TStar:
    """The timestep chosen for noise σ, and the bookkeeping that goes into sidecars and load summaries.

    `t` is an index of the schedule (an integer unless rule 'exact'); the UNet is fed `model_timestep` =
    t · `timestep_rescale`. `noise_level` = ν_t* (model units); `target` = a·σ; `effective_sigma` = ν_t*/a
    is the pixel-space σ the UNet assumes it removes (≥ σ under rule 'first')."""
    sigma: float
    scale: float
    rule: str
    t: float
    alpha_bar: float
    noise_level: float
    timestep_rescale: float = 1.0

    @property
    def target(self) -> float:
        return self.scale * self.sigma

    @property
    def effective_sigma(self) -> float:
        return self.noise_level / self.scale

    @property
    def model_timestep(self) -> float:
        return self.t * self.timestep_rescale

    def record(self) -> dict:
        t = int(self.t) if float(self.t).is_integer() else self.t
        return {"sigma": self.sigma, "t_rule": self.rule, "t_star": t, "model_timestep": self.model_timestep,
                "alpha_bar": self.alpha_bar, "sqrt_alpha_bar": math.sqrt(self.alpha_bar),
                "noise_level_model": self.noise_level, "noise_level_target": self.target,
                "effective_sigma": self.effective_sigma, "timestep_rescale": self.timestep_rescale}


def choose_t(schedule: Schedule, sigma: float, scale: float = 2.0, rule: str = "first",
             continuous: bool = False, timestep_rescale: float = 1.0) -> TStar:
    """t* for smoothing noise σ on images the model sees as a·x + b (a = `scale`); see the module docstring.

    σ below the noise of t = 0 gives t* = 0; σ above the noise of t = T−1 is an error (the schedule cannot
    represent it)."""
    if rule not in T_RULES:
        raise CertifyNetError(f"{{diffusion_t_rule}} must be one of {', '.join(T_RULES)}, got {rule!r}",
                              "diffusion_t_rule")
    if rule == "auto":
        rule = "exact" if continuous else "first"
    if rule == "exact" and not continuous:
        raise CertifyNetError("{diffusion_t_rule} exact needs a model that takes continuous timesteps "
                              "(the UNet was trained at integer t only)", "diffusion_t_rule")
    target = scale * float(sigma)
    nu = schedule.noise_levels()
    if target > nu[-1]:
        raise CertifyNetError(f"σ = {sigma} is too large for this schedule: the model-space noise {target:.4g} "
                              f"exceeds the noise level {nu[-1]:.4g} of its last step t = {schedule.T - 1}")
    if rule == "first":
        t = float(np.argmax(nu >= target))
    elif rule == "nearest":
        t = float(np.argmin(np.abs(np.log(nu) - math.log(target))))
    else:
        t = _exact_t(schedule, target)
    ab = schedule.alpha_bar(t)
    return TStar(float(sigma), float(scale), rule, t, ab, math.sqrt((1.0 - ab) / ab), float(timestep_rescale))


def _exact_t(schedule: Schedule, target: float) -> float:
    """Real t with ν_t = target: ᾱ* = 1/(1 + target²), located between integers in log ᾱ (clamped to t ≥ 0)."""
    log_a = np.log(schedule.alphas_cumprod)
    want = -math.log1p(target * target)
    if want >= log_a[0]:
        return 0.0
    hi = int(np.argmax(log_a <= want))  # first integer at or past the target (log ᾱ decreases)
    lo = hi - 1
    frac = (log_a[lo] - want) / (log_a[lo] - log_a[hi])
    return float(lo + frac)


def step_times(t_star: float, steps: int, integer: bool) -> list[float]:
    """The K reverse-process times τ_K = t* > … > τ_1 > 0 of K-step denoising: τ_k = t*·k/K (rounded and
    deduplicated when the model takes integer timesteps; never below 1 step)."""
    ts = [t_star * k / steps for k in range(steps, 0, -1)]
    if integer:
        ts = sorted({float(round(t)) for t in ts if round(t) >= 1} | {float(t_star)}, reverse=True)
    return ts

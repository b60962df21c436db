"""Noise distributions P and Q, sampled on the model's device in torch.

All share one interface, `Noise.sample_(buf, generator)`, which fills a preallocated buffer [B, C, H, W]
with independent draws δ, with no host round-trip. Distributions (d = C·H·W):

- `gaussian`: δ ~ N(0, σ²I).
- `general_gaussian` (DSRS P, and Q in `rescaled` mode with its own σ): p(δ) ∝ ‖δ‖^(−2k)·exp(−‖δ‖²/(2σ'²)),
  σ' = σ·√(d/(d−2k)), so E‖δ‖² = dσ², for 0 ≤ 2k < d (σ' and the range of k are defined once, in
  `certifynet.certify.dsrs`: `sigma_prime`, `check_k`). The radial law is t = ‖δ‖²/(2σ'²) ~
  Gamma(d/2−k): we draw it exactly as t = ½‖z‖², z ~ N(0, I_{d−2k}), with a uniform direction u = g/‖g‖,
  g ~ N(0, I_d).
- `truncated` (DSRS Q): P restricted to ‖δ‖ ≤ T, with T given by its percentile p_T under P,
  β = T²/(2σ'²) = F⁻¹_Gamma(d/2−k)(p_T). t is drawn by the inverse CDF on [0, F(β)]: t = F⁻¹(U·p_T),
  solved by 64 float64 bisection steps on `torch.special.gammainc` (exact to double precision).
"""
from __future__ import annotations

import math

import torch

from certifynet.certify.dsrs import check_k, sigma_prime
from certifynet.errors import CertifyNetError, check_sigma

__all__ = ["Noise", "GaussianNoise", "GeneralizedGaussianNoise", "TruncatedGeneralizedGaussianNoise", "make_noise",
           "check_k", "sigma_prime"]


class Noise:
    """Base class: a distribution over δ ∈ R^d (added to images in [0,1] pixel space, no clipping)."""
    name = "noise"

    def sample_(self, buf: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def sample_like(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A fresh draw of the shape of `x` (training convenience)."""
        return self.sample_(torch.empty_like(x, memory_format=torch.contiguous_format), generator)

    __call__ = sample_like

    def params(self) -> dict:
        return {"dist": self.name}


class GaussianNoise(Noise):
    """δ ~ N(0, σ²I)."""
    name = "gaussian"

    def __init__(self, sigma: float):
        self.sigma = check_sigma(sigma)

    def sample_(self, buf, generator=None):
        return buf.normal_(0.0, self.sigma, generator=generator)

    def params(self):
        return {"dist": self.name, "sigma": self.sigma, "k": 0}


class GeneralizedGaussianNoise(Noise):
    """p(δ) ∝ ‖δ‖^(−2k)·exp(−‖δ‖²/(2σ'²)); k = 0 is N(0, σ²I)."""
    name = "general_gaussian"

    def __init__(self, sigma: float, k: int, d: int):
        self.sigma, self.d = check_sigma(sigma), int(d)
        self.k = check_k(self.d, k)
        self.sigma_p = sigma_prime(self.sigma, self.d, self.k)
        self.shape = self.d / 2.0 - self.k  # Gamma shape of t = ‖δ‖²/(2σ'²)

    def _radial_t(self, b, device, generator):
        """t ~ Gamma(d/2 − k) as ½‖z‖², z ∈ R^{d−2k}."""
        z = torch.randn(b, self.d - 2 * self.k, device=device, generator=generator)
        return 0.5 * z.square().sum(1)

    def _fill(self, buf, t, generator):
        """buf ← σ'·√(2t)·u with u uniform on the unit sphere (in place)."""
        buf.normal_(generator=generator)
        flat = buf.view(buf.shape[0], -1) if buf.is_contiguous() else buf.reshape(buf.shape[0], -1)
        norm = flat.norm(dim=1).clamp_min(1e-30)
        scale = (self.sigma_p * torch.sqrt(2.0 * t.to(norm.dtype))) / norm
        buf.mul_(scale.view(-1, *([1] * (buf.dim() - 1))))
        return buf

    def sample_(self, buf, generator=None):
        if self.k == 0:
            return buf.normal_(0.0, self.sigma, generator=generator)
        return self._fill(buf, self._radial_t(buf.shape[0], buf.device, generator), generator)

    def params(self):
        return {"dist": self.name, "sigma": self.sigma, "k": self.k, "d": self.d}


class TruncatedGeneralizedGaussianNoise(GeneralizedGaussianNoise):
    """Q = P restricted to ‖δ‖ ≤ T, q = ν·p·1[‖δ‖ ≤ T], ν = 1/p_T, with P_P(‖δ‖ ≤ T) = p_T.

    `beta` = T²/(2σ'²) must be F⁻¹_Gamma(d/2−k)(p_T); it is computed by `certify.dsrs.truncation_beta`
    (scipy) and passed in so that sampling and certification use the same number.
    """
    name = "truncated"
    _BISECT_STEPS = 64

    def __init__(self, sigma: float, k: int, d: int, percentile: float, beta: float):
        super().__init__(sigma, k, d)
        if not (0.0 < percentile <= 1.0):
            raise CertifyNetError(f"truncation percentile must be in (0, 1], got {percentile}")
        self.percentile, self.beta = float(percentile), float(beta)
        self.radius = self.sigma_p * math.sqrt(2.0 * self.beta)

    def _radial_t(self, b, device, generator):
        u = torch.rand(b, device=device, dtype=torch.float64, generator=generator) * self.percentile
        a = torch.full_like(u, self.shape)
        lo, hi = torch.zeros_like(u), torch.full_like(u, self.beta)
        for _ in range(self._BISECT_STEPS):  # fixed steps: no data-dependent host sync
            mid = 0.5 * (lo + hi)
            below = torch.special.gammainc(a, mid) < u
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return lo  # ≤ β always, so draws never leave the ball

    def sample_(self, buf, generator=None):
        return self._fill(buf, self._radial_t(buf.shape[0], buf.device, generator), generator)

    def params(self):
        return {**super().params(), "dist": self.name, "percentile": self.percentile, "beta": self.beta,
                "T": self.radius}


def make_noise(dist: str, sigma: float, d: int, k: int = 0, percentile: float | None = None,
               beta: float | None = None) -> Noise:
    """Build a distribution by name: 'gaussian', 'general_gaussian' or 'truncated'."""
    if dist == "gaussian":
        if k:
            raise CertifyNetError("{k} > 0 needs {dist} general_gaussian", "k", "dist")
        return GaussianNoise(sigma)
    if dist == "general_gaussian":
        return GeneralizedGaussianNoise(sigma, k, d)
    if dist == "truncated":
        return TruncatedGeneralizedGaussianNoise(sigma, k, d, percentile, beta)
    raise CertifyNetError(f"unknown noise distribution '{dist}'; choose gaussian, general_gaussian or truncated")

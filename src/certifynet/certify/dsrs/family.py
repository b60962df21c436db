"""The DSRS noise family: the generalized Gaussian P, its radial law, and the truncated Q's ball.

p(δ) ∝ ‖δ‖^(−2k)·exp(−‖δ‖²/(2σ'²)) on R^d, with σ' = σ·√(d/(d−2k)) so that E‖δ‖² = dσ² for every k.
The radial variable t = ‖δ‖²/(2σ'²) follows Gamma(n), n = d/2 − k, and the direction is uniform.
k = 0 is N(0, σ²I). The truncated Q is P restricted to ‖δ‖ ≤ T, T = σ'·√(2β), β = F⁻¹_Gamma(n)(p_T).

These are the single definitions of σ' and of the valid k (`check_k`); `certifynet.noise` samples with them.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.special import gammaincinv

from certifynet.errors import CertifyNetError

_X_PLUS_ONE = 1e-8   # heuristic x+: fall back to pooled NP when the P upper bound is ≥ 1 − 1e-8


def check_k(d: int, k: int, name: str = "k") -> int:
    """k as an int, if the generalized Gaussian with this k exists in dimension d: 0 ≤ 2k < d.

    Why 2k < d: in polar coordinates the density of ρ = ‖δ‖ is ∝ ρ^(d−1−2k)·exp(−ρ²/(2σ'²)), integrable
    at 0 iff d − 2k > 0. The same condition makes the Gamma shape n = d/2 − k positive, σ' = σ√(d/(d−2k))
    finite, and gives the sampler (t = ½‖z‖², z ∈ R^(d−2k)) at least one coordinate. For integer k this is
    k ≤ d/2 − 1 for even d (the reference's bound; every image size here is even) and k ≤ (d−1)/2 for odd d.
    Raises CertifyNetError naming the argument `name` (`--k` on the command line) otherwise.
    """
    d = int(d)
    if d < 1:
        raise CertifyNetError(f"input dimension d must be >= 1, got {d}")
    if not (isinstance(k, numbers.Integral) or (isinstance(k, numbers.Real) and float(k).is_integer())):
        raise CertifyNetError(f"{{{name}}} must be an integer, got {k!r}", name)
    k = int(k)
    if k < 0 or 2 * k >= d:
        bound = "d/2 - 1" if d % 2 == 0 else "(d-1)/2"
        raise CertifyNetError(f"{{{name}}} must be in [0, {bound}] = [0, {(d - 1) // 2}] for input dimension "
                              f"d={d} (the density needs d - 2k > 0), got {k}", name)
    return k


def _check_dk(d, k):
    """(d, k) as ints for the DSRS shell geometry: `check_k`, and d ≥ 2 (a direction's first coordinate
    follows Beta((d−1)/2, (d−1)/2), which needs d > 1)."""
    k = check_k(d, k)
    d = int(d)
    if d < 2:
        raise CertifyNetError(f"DSRS certification needs input dimension d >= 2, got d={d}")
    return d, k


def sigma_prime(sigma: float, d: int, k: int) -> float:
    """σ' = σ·√(d/(d − 2k)), so that E‖δ‖² = dσ² for every k (k must pass `check_k`)."""
    k = check_k(d, k)
    d = int(d)
    return float(sigma) * math.sqrt(d / (d - 2 * k))


def radial_quantile(p, d, k):
    """Quantile of t = ‖δ‖²/(2σ'²) ~ Gamma(d/2 − k). ‖δ‖ = σ'·√(2t).

    For truncated sampling, draw U ~ Uniform(0, p_T) and take t = radial_quantile(U, d, k). This is the
    inverse CDF on [0, F(β)], so t is exactly Gamma conditioned on t ≤ β.
    """
    d, k = _check_dk(d, k)
    return gammaincinv(d / 2 - k, np.asarray(p, dtype=float))


def _check_percentile(p_T) -> float:
    """p_T ∈ (0, 1], the P-mass of the truncation ball."""
    p_T = float(p_T)
    if not 0.0 < p_T <= 1.0:
        raise CertifyNetError(f"truncation percentile must be in (0, 1], got {p_T}")
    return p_T


def truncation_beta(p_T, d, k):
    """β = F⁻¹_Gamma(d/2−k)(p_T) = T²/(2σ'²), the radial cut of the truncated Q.

    ν = 1/p_T is its density ratio inside the ball. p_T = 1 gives β = ∞ (Q = P).
    """
    p_T = _check_percentile(p_T)
    return math.inf if p_T >= 1.0 else float(radial_quantile(p_T, d, k))


def truncation_radius(p_T, sigma, d, k):
    """T = σ'·√(2β), the ℓ2 radius of the truncation ball."""
    return sigma_prime(sigma, d, k) * math.sqrt(2.0 * truncation_beta(p_T, d, k))


def truncation_percentile(p_lower, heuristic="x", clamp=False):
    """Truncation percentile p_T from the P run's lower bound P̲_A (heuristic x, also used by x+).

    p_T = 0.08·(−ln(1 − P̲_A) − 5) + 0.6 when P̲_A ≥ ½, else 0.5.

    Decision: no clamp by default, because the reference does not clamp and its vectors contain
    0.4538 < ½. Unclamped, p_T lies in [0.2555, 1) for every P̲_A < 1 − e^(−10) ≈ 1 − 4.5e-5. That covers
    every Clopper–Pearson bound at α = 0.001 from fewer than about 1.8·10⁵ samples. Above that, p_T is
    capped at 1 − 1e-9, a ball that holds almost all of P.
    With ``clamp=True`` the value is clipped to [0.5, 0.99], the curve drawn in the reference's fitting
    plot. Clamping changes only efficiency, never soundness: any p_T fixed before the Q run is valid.
    """
    if heuristic not in ("x", "x+"):
        raise CertifyNetError(f"unknown truncation heuristic {heuristic!r} (use 'x' or 'x+')")
    p = float(p_lower)
    if p < 0.5:
        pt = 0.5
    else:
        pt = 0.08 * (-math.log1p(-min(p, 1.0 - 1e-300)) - 5.0) + 0.6 if p < 1.0 else 1.0
    return min(max(pt, 0.5), 0.99) if clamp else min(pt, 1.0 - 1e-9)


def pooled_np_fallback_needed(p_upper):
    """Heuristic x+: the second run samples P again (pooled NP) when P̄_A ≥ 1 − 1e-8."""
    return float(p_upper) >= 1.0 - _X_PLUS_ONE


def pooled_np_alpha(alpha):
    """Heuristic x+: the level of the pooled NP bound, α/4, so that x+ is sound at α overall.

    The first P run's count c picks the branch: A = {P̄(c) ≥ 1 − 1e-8} (P̄ one-sided at α/4, the upper end of
    the DSRS P interval). On A the second run samples P again and the certificate is NP on the pooled
    p̲ = CP_lower(c + c', 2n; α_pool); on Aᶜ it is DSRS on the box [P̲, P̄] × [Q̲, Q̄], each interval two-sided
    at α/2 (tails α/4). The reported certificate can be false only on
        E = (A ∩ G) ∪ (Aᶜ ∩ (L ∪ U ∪ H)),   G = {pooled p̲ > p_A},  L = {P̲ > p_A},  U = {P̄ < p_A},
    H = {q_A ∉ [Q̲, Q̄]} (L, U with the exact bounds; the computed ones lie outside them). A and L are both
    upper sets of c (P̄ and P̲ increase with c), so one contains the other:
    * A ⊆ L: P(A ∩ G) + P(Aᶜ ∩ L) ≤ P(A) + P(Aᶜ ∩ L) = P(L) ≤ α/4;
    * L ⊆ A: Aᶜ ∩ L = ∅, and P(A ∩ G) ≤ P(G) ≤ α_pool = α/4 (c + c' ~ Bin(2n, p_A)).
    With P(U) ≤ α/4 and P(H | c) ≤ α/2 (the Q draws are fresh, whatever law c chose for Q), P(E) ≤ α.
    The reference pools at α, and α/2 is not enough either: computed exactly at n = 5,000 and α = 0.001,
    the worst case of P(E) is 1.55α and 1.16α (tests/test_accounting.py); at α/4 it is ≤ α.
    """
    return float(alpha) / 4.0

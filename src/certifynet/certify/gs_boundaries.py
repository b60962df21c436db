"""Boundaries of the group-sequential test at one threshold θ, and their exact calibration. Pure numpy/scipy.

Schedule: checks n_1 < … < n_K (batch sizes m_k). A boundary is integer per check: certify (reject H: p ≤ θ)
at the first check with S_{n_k} ≥ b_k; refute (reject H': p ≥ θ) at the first check with S_{n_k} ≤ a_k.

Families of upper boundaries, each indexed by one level λ:
* "cp":      b_k = min{s : P_θ(S_{n_k} ≥ s) ≤ λ}: the one-sided Clopper–Pearson bound at level λ, re-checked
             at every check (Clopper–Pearson lower bound at λ > θ ⟺ that p-value ≤ λ).
* "mixture": b_k = min{s > n_kθ : log M_{n_k}(θ) ≥ ln(1/λ)}, the Beta(a, b) mixture of `sequential.py` at level
             λ instead of α, combined with the confidence-sequence boundary (min with b^cs_k).
* "cp+cs":   min(b^cp_k(λ), b^cs_k): Clopper–Pearson at λ, lowered further to the confidence-sequence
             boundary b^cs_k = min{s : L_{n_k}(s) > θ} (L: `confidence_sequence` at α) where that is lower.
Calibration: λ* = the largest λ (bisection on ln λ to a relative 1e-4) with the exact crossing bound
P_θ(∃k : S_{n_k} ≥ b_k(λ)) ≤ α (`crossing.crossing_probability`, its rounding bound included). b_k(λ) is
non-increasing in λ, so the crossing probability is non-decreasing in λ and bisection is valid.
The refuting boundary is the mirror image: a_k = max(max{s : P_θ(S_{n_k} ≤ s) ≤ λ'}, a^cs_k) with
a^cs_k = max{s : U_{n_k}(s) < θ}, λ' the largest level with P_θ(∃k : S_{n_k} ≤ a_k) ≤ α.
Calibrations are cached in memory (`calibrated_design`, lru_cache keyed by schedule, θ, α, family, prior).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import beta, binom

from certifynet.certify.crossing import Crossing, crossing_probability, lower_crossing_probability
from certifynet.certify.sequential import DEFAULT_PRIOR, confidence_sequence, log_mixture_ratio
from certifynet.errors import CertifyNetError

FAMILIES = ("cp+cs", "cp", "mixture")
DEFAULT_FAMILY = "cp+cs"
LEVEL_REL_TOL = 1e-4     # bisection on ln λ stops when hi/lo ≤ 1 + this
_MIXTURE_TOP = 0.5       # largest mixture level tried
_LOG_MARGIN = 1e-9       # log M must exceed ln(1/λ) by a relative 1e-9 (rounding of betaln/xlogy)


def first_true(pred, lo, hi) -> np.ndarray:
    """Smallest s in [lo, hi] with pred(s), elementwise (hi + 1 where none); pred must be monotone in s."""
    top = np.asarray(hi, dtype=np.int64)
    lo, hi = np.broadcast_to(np.asarray(lo, dtype=np.int64), top.shape).copy(), top + 1
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = np.asarray(pred(np.minimum(mid, top)), dtype=bool)
        open_ = lo < hi
        hi = np.where(open_ & ok, mid, hi)
        lo = np.where(open_ & ~ok, mid + 1, lo)
    return lo


def cp_upper_boundary(ns, theta: float, level: float) -> np.ndarray:
    """b_k = min{s : P_θ(S_{n_k} ≥ s) ≤ λ} (n_k + 1 where even s = n_k has P > λ)."""
    ns = np.asarray(ns, dtype=np.int64)
    b = np.clip(binom.isf(level, ns, theta), -1, ns).astype(np.int64) + 1  # scipy: min{k : sf(k) ≤ λ} + 1
    for _ in range(4):   # make it exact whatever isf's rounding: sf(b−1) ≤ λ < sf(b−2)
        b = np.where((b <= ns) & (binom.sf(b - 1, ns, theta) > level), b + 1, b)
        b = np.where((b >= 1) & (binom.sf(b - 2, ns, theta) <= level), b - 1, b)
    return b


def cp_lower_boundary(ns, theta: float, level: float) -> np.ndarray:
    """a_k = max{s : P_θ(S_{n_k} ≤ s) ≤ λ} (−1 where none): the mirror image n_k − b_k at 1 − θ."""
    ns = np.asarray(ns, dtype=np.int64)
    return ns - cp_upper_boundary(ns, 1.0 - theta, level)


def mixture_upper_boundary(ns, theta: float, level: float, prior=DEFAULT_PRIOR) -> np.ndarray:
    """b_k = min{s > n_kθ : log M_{n_k}(θ) ≥ ln(1/λ)} (n_k + 1 where none); log M rises in s above n_kθ."""
    ns = np.asarray(ns, dtype=np.int64)
    c = math.log(1.0 / level) * (1.0 + _LOG_MARGIN) + _LOG_MARGIN

    def rejects(s):
        return (s > ns * theta) & (log_mixture_ratio(s, ns, theta, prior) >= c)
    return first_true(rejects, np.zeros_like(ns), ns)


def cs_boundaries(ns, theta: float, alpha: float, prior=DEFAULT_PRIOR) -> tuple[np.ndarray, np.ndarray]:
    """Today's rule as integer boundaries: (b, a) with L_{n_k}(s) > θ ⟺ s ≥ b_k and U_{n_k}(s) < θ ⟺ s ≤ a_k
    (L, U: `confidence_sequence` at α, non-decreasing in s)."""
    ns = np.asarray(ns, dtype=np.int64)
    zero = np.zeros_like(ns)
    b = first_true(lambda s: confidence_sequence(s, ns, alpha, prior)[0] > theta, zero, ns)
    a = first_true(lambda s: confidence_sequence(s, ns, alpha, prior)[1] >= theta, zero, ns) - 1
    return b, a


@dataclass(frozen=True)
class Design:
    """The calibrated test at one threshold θ: certify at S_{n_k} ≥ upper[k], refute at S_{n_k} ≤ lower[k]."""
    theta: float
    family: str
    upper: np.ndarray
    lower: np.ndarray
    cs_upper: np.ndarray      # the confidence-sequence boundary b^cs (upper ≤ cs_upper for "cp+cs" and "mixture")
    level: float              # λ* of the certifying boundary
    refute_level: float       # λ'* of the refuting boundary
    crossing: Crossing        # P_θ(∃k: S ≥ upper_k): bound ≤ α
    refute_crossing: Crossing  # P_θ(∃k: S ≤ lower_k): bound ≤ α


def _largest_level(boundary_of, crossing_of, alpha: float, lo: float, hi: float):
    """(λ, boundary, crossing): the largest λ in [lo, hi] (to LEVEL_REL_TOL) with crossing bound ≤ α."""
    memo = {}

    def evaluate(level):
        b = boundary_of(level)
        key = b.tobytes()
        if key not in memo:
            memo[key] = crossing_of(b)
        return b, memo[key]

    b_hi, c_hi = evaluate(hi)
    if c_hi.bound <= alpha:
        return hi, b_hi, c_hi
    for _ in range(60):   # lo must be valid: shrink it (Bonferroni makes α/K valid for the pure families)
        b_lo, c_lo = evaluate(lo)
        if c_lo.bound <= alpha:
            break
        lo *= 0.1
    else:
        raise CertifyNetError(f"no boundary level keeps the crossing probability at or below {{alpha}} = {alpha:g}",
                              "alpha")
    while hi > lo * (1.0 + LEVEL_REL_TOL):
        mid = math.sqrt(lo * hi)
        b_mid, c_mid = evaluate(mid)
        if c_mid.bound <= alpha:
            lo, b_lo, c_lo = mid, b_mid, c_mid
        else:
            hi = mid
    return lo, b_lo, c_lo


@lru_cache(maxsize=256)
def calibrated_design(sizes: tuple, theta: float, alpha: float, family: str = DEFAULT_FAMILY,
                      prior: tuple = DEFAULT_PRIOR) -> Design:
    """The test at θ with both boundaries calibrated exactly for this schedule and α (module docstring)."""
    if family not in FAMILIES:
        raise CertifyNetError(f"{{boundary}} must be one of {', '.join(FAMILIES)}, got {family!r}", "boundary")
    ns = np.cumsum(np.asarray(sizes, dtype=np.int64))
    b_cs, a_cs = cs_boundaries(ns, theta, alpha, prior)
    if family == "cp":
        def upper_of(level):
            return cp_upper_boundary(ns, theta, level)
        lo, hi = alpha / len(ns), alpha
    elif family == "cp+cs":
        def upper_of(level):
            return np.minimum(cp_upper_boundary(ns, theta, level), b_cs)
        lo, hi = alpha / len(ns) / 2, alpha
    else:
        def upper_of(level):
            return np.minimum(mixture_upper_boundary(ns, theta, level, prior), b_cs)
        lo, hi = alpha, _MIXTURE_TOP
    level, upper, cross = _largest_level(upper_of, lambda b: crossing_probability(sizes, b, theta), alpha, lo, hi)
    refute_level, lower, refute = _largest_level(
        lambda lv: np.maximum(cp_lower_boundary(ns, theta, lv), a_cs),
        lambda a: lower_crossing_probability(sizes, a, theta), alpha, alpha / len(ns) / 2, alpha)
    for arr in (upper, lower, b_cs):
        arr.setflags(write=False)
    return Design(float(theta), family, upper, lower, b_cs, float(level), float(refute_level), cross, refute)


def verify_design(design: Design, sizes, alpha: float) -> bool:
    """Re-check a design read back from storage (a file cache): both exact crossing bounds at θ are ≤ α.
    One DP per boundary (milliseconds), so a stale or edited cache entry cannot make the rule invalid."""
    return (crossing_probability(sizes, design.upper, design.theta).bound <= alpha
            and lower_crossing_probability(sizes, design.lower, design.theta).bound <= alpha)


def futility_boundary(ns, theta: float, gamma: float) -> np.ndarray:
    """f_k = max{s : P_θ(S_{n_k} ≤ s) < γ}: the Clopper–Pearson upper bound at level γ is below θ."""
    ns = np.asarray(ns, dtype=np.int64)
    return first_true(lambda s: binom.cdf(s, ns, theta) >= gamma, np.zeros_like(ns), ns) - 1


def projected_futility_boundary(ns, upper, gamma: float) -> np.ndarray:
    """f_k = max{s : s + (n_k' − n_k)·ū < b_k' for every later check k'}, ū = the Clopper–Pearson upper bound at
    level γ from (s, n_k): even at that optimistic rate the expected path misses every later boundary."""
    ns, upper = np.asarray(ns, dtype=np.int64), np.asarray(upper, dtype=np.int64)
    gap = ns[None, :] - ns[:, None]                  # [k, k']: n_k' − n_k
    later = gap > 0

    def reaches(s):
        u = np.where(s >= ns, 1.0, beta.ppf(1.0 - gamma, s + 1, np.maximum(ns - s, 1)))
        return np.any(later & (s[:, None] + gap * u[:, None] >= upper[None, :]), axis=1)
    return first_true(reaches, np.zeros_like(ns), ns) - 1

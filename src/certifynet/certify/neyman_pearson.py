"""Neyman–Pearson certification (Cohen, Rosenfeld & Kolter, ICML 2019). Pure numpy/scipy.

Floating point: every bound here is rounded toward the conservative side. `cp_lower` is
nudged down by a few ulps and `np_radius` by a relative 1e-12, so rounding inside
scipy's Beta quantile or Φ⁻¹ can never turn into a larger certificate (Voráček & Hein, 2023).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import beta, binomtest, norm

from certifynet.certify.outcome import ABSTAIN
from certifynet.errors import CertifyNetError, check_alpha

# Relative safety margin applied to radii: larger than any rounding error of Φ⁻¹ in double precision.
_RADIUS_REL_MARGIN = 1e-12


def cp_lower(count, n, alpha):
    """One-sided (1−α) Clopper–Pearson lower bound: p̲ = Beta.ppf(α; c, n−c+1), and 0 when c = 0."""
    count = np.asarray(count, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        lo = beta.ppf(alpha, count, n - count + 1)
    lo = np.where(count <= 0, 0.0, lo)
    lo = np.nextafter(np.nextafter(lo, -np.inf), -np.inf)  # round down by two ulps
    lo = np.clip(lo, 0.0, 1.0)
    return float(lo) if lo.ndim == 0 else lo


def cp_upper(count, n, alpha):
    """One-sided (1−α) Clopper–Pearson upper bound: p̄ = Beta.ppf(1−α; c+1, n−c), and 1 when c = n."""
    count = np.asarray(count, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        hi = beta.ppf(1.0 - alpha, count + 1, n - count)
    hi = np.where(count >= n, 1.0, hi)
    hi = np.nextafter(np.nextafter(hi, np.inf), np.inf)
    hi = np.clip(hi, 0.0, 1.0)
    return float(hi) if hi.ndim == 0 else hi


def cp_interval(count, n, alpha):
    """Two-sided (1−α) Clopper–Pearson interval [p̲, p̄], each side at level α/2."""
    return cp_lower(count, n, alpha / 2.0), cp_upper(count, n, alpha / 2.0)


def np_radius(p_lower, sigma):
    """Gaussian NP radius R = σ·Φ⁻¹(p̲_A); 0.0 when p̲_A ≤ ½."""
    p = np.asarray(p_lower, dtype=float)
    with np.errstate(invalid="ignore"):
        r = sigma * norm.ppf(np.clip(p, 0.5, 1.0)) * (1.0 - _RADIUS_REL_MARGIN)
    r = np.where(p > 0.5, np.maximum(r, 0.0), 0.0)
    return float(r) if r.ndim == 0 else r


def certify_from_counts(count: int, n: int, sigma: float, alpha: float):
    """Cohen CERTIFY step 3–4 on the estimation counts of the selected class ĉ_A.

    Returns (abstain, p̲_A, R): abstain when p̲_A < ½, else R = σ·Φ⁻¹(p̲_A).
    """
    p_low = cp_lower(count, n, alpha)
    if p_low < 0.5:
        return True, p_low, 0.0
    return False, p_low, np_radius(p_low, sigma)


def predict_pvalue(n1: int, n2: int) -> float:
    """Two-sided binomial test p-value of n1 successes out of n1+n2 at p = ½ (Cohen PREDICT)."""
    if n1 + n2 == 0:
        return 1.0
    return float(binomtest(int(n1), int(n1 + n2), 0.5).pvalue)


def predict_abstains(n1: int, n2: int, alpha: float) -> bool:
    """PREDICT abstains when the binomial p-value exceeds α."""
    return predict_pvalue(n1, n2) > alpha


class Prediction(NamedTuple):
    """Cohen's PREDICT on one input's class counts."""

    label: int     # the top class c₁, or ABSTAIN (−1)
    n1: int        # count of c₁
    n2: int        # count of the runner-up (0 when there is only one class)
    pvalue: float  # two-sided binomial p-value of n1 out of n1 + n2 at ½


def top_two(counts) -> tuple[int, int, int]:
    """(c₁, n1, n2): the most frequent class and the two largest counts, n1 ≥ n2.

    Tie rule: among equal counts the smallest class index ranks first (np.argmax, as CERTIFY's selection
    picks ĉ_A). A tie for first place gives n1 = n2, whose p-value is 1, so PREDICT abstains whatever the
    rule. One class: n2 = 0.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise CertifyNetError(f"PREDICT needs a non-empty 1-D vector of class counts, got shape {counts.shape}")
    c1 = int(np.argmax(counts))
    n2 = int(np.max(np.delete(counts, c1))) if counts.size > 1 else 0
    return c1, int(counts[c1]), n2


def predict_from_counts(counts, alpha: float) -> Prediction:
    """Cohen's PREDICT on class counts: c₁ unless the binomial p-value of n1 vs n2 exceeds α, else ABSTAIN.

    The one PREDICT of the toolkit: (label, n1, n2, p-value), with the top two from `top_two`.
    """
    alpha = check_alpha(alpha)
    c1, n1, n2 = top_two(counts)
    pvalue = predict_pvalue(n1, n2)
    return Prediction(ABSTAIN if pvalue > alpha else c1, n1, n2, pvalue)

"""Neyman–Pearson certification (Cohen, Rosenfeld & Kolter, ICML 2019). Pure numpy/scipy.

Floating point (Voráček & Hein, 2023): every bound here is rounded toward the conservative side.

* `cp_lower` / `cp_upper` do not trust the Beta quantile: they take it at a slightly smaller level, then
  VERIFY the defining inequality, P(Bin(n, p̲) ≥ c) = I_p̲(c, n−c+1) ≤ α for the lower bound and
  P(Bin(n, p̄) ≤ c) = 1 − I_p̄(c+1, n−c) ≤ α for the upper one, in the form that computes the small tail
  directly (`betainc` / `betaincc`, no cancellation), with the relative margin τ(n) = 64·ε·(n + 16), and step
  the bound outward (1 ulp, 2, 4, …) until it holds. What this covers: every error of the quantile inversion,
  whatever its size. What it assumes: scipy's incomplete Beta (Boost's `ibeta`) is accurate to τ(n) relative.
  That is not proven; measured against a 40-digit reference on a grid up to n = 10⁷ (tests/test_accounting.py)
  its error stays below 0.6·ε·n, ≥ 100× inside τ.
* `np_radius` is shrunk by a relative 1e-12, larger than the rounding of Φ⁻¹ (ndtri, a few ε) and of σ·x.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import betainc, betaincc
from scipy.stats import beta, binomtest, norm

from certifynet.certify.outcome import ABSTAIN
from certifynet.errors import CertifyNetError, check_alpha, check_sigma

# Relative safety margin applied to radii: larger than any rounding error of Φ⁻¹ in double precision.
_RADIUS_REL_MARGIN = 1e-12
_EPS = float(np.finfo(float).eps)


def tail_tolerance(n):
    """τ(n) = 64·ε·(n + 16): the relative error allowed to scipy's incomplete Beta at sample size n (module doc)."""
    return 64.0 * _EPS * (np.asarray(n, dtype=float) + 16.0)


def _step_out(x, holds, toward: float):
    """x moved toward `toward` (0 or 1) by 1, 2, 4, … ulps, element by element, until holds(x, mask) is True
    there; `toward` itself always holds (I_0 = 0, 1 − I_1 = 0). Non-finite entries are left as they are."""
    x = x.copy()
    todo = np.isfinite(x)
    todo[todo] = ~holds(x, todo)
    step = np.abs(np.spacing(x))
    for _ in range(1100):  # 2^1100 ulps spans every double: the loop always ends at `toward` at the latest
        if not todo.any():
            break
        moved = x[todo] + np.copysign(step[todo], toward - x[todo])
        x[todo] = np.maximum(moved, toward) if toward == 0.0 else np.minimum(moved, toward)
        step[todo] *= 2.0
        todo[todo] = ~holds(x, todo)
    return x


def _as_arrays(count, n, alpha):
    """(shape, count, n, alpha): the broadcast arguments as flat float arrays."""
    count, n, alpha = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (count, n, alpha)))
    return count.shape, count.ravel(), n.ravel(), alpha.ravel()


def _shaped(x, shape):
    x = np.clip(x, 0.0, 1.0).reshape(shape)
    return float(x) if x.ndim == 0 else x


def cp_lower(count, n, alpha):
    """One-sided (1−α) Clopper–Pearson lower bound: p̲ = Beta.ppf(α; c, n−c+1), and 0 when c = 0.

    Verified (module doc): the returned p̲ has I_p̲(c, n−c+1) ≤ α·(1 − τ(n)) as betainc computes it, so it
    lies at or below the exact bound."""
    shape, count, n, alpha = _as_arrays(count, n, alpha)
    a, b, target = count, n - count + 1.0, alpha * (1.0 - tail_tolerance(n))
    with np.errstate(invalid="ignore"):
        lo = beta.ppf(target * (1.0 - tail_tolerance(n)), a, b)
        lo = np.where(count <= 0, 0.0, lo)
        lo = _step_out(lo, lambda x, m: (a[m] <= 0) | (betainc(a[m], b[m], x[m]) <= target[m]), 0.0)
    return _shaped(lo, shape)


def cp_upper(count, n, alpha):
    """One-sided (1−α) Clopper–Pearson upper bound: p̄ = Beta.isf(α; c+1, n−c), and 1 when c = n.

    Verified (module doc): the returned p̄ has 1 − I_p̄(c+1, n−c) ≤ α·(1 − τ(n)) as betaincc computes it, so
    it lies at or above the exact bound. (`isf(α)`, not `ppf(1 − α)`: 1 − α rounds, by up to 10⁴ ulps of p̄
    at α = 1e-6.)"""
    shape, count, n, alpha = _as_arrays(count, n, alpha)
    a, b, target = count + 1.0, n - count, alpha * (1.0 - tail_tolerance(n))
    with np.errstate(invalid="ignore"):
        hi = beta.isf(target * (1.0 - tail_tolerance(n)), a, b)
        hi = np.where(count >= n, 1.0, hi)
        hi = _step_out(hi, lambda x, m: (b[m] <= 0) | (betaincc(a[m], b[m], x[m]) <= target[m]), 1.0)
    return _shaped(hi, shape)


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


def _whole(v) -> bool:
    try:
        return float(v).is_integer() and not isinstance(v, bool)
    except (TypeError, ValueError, OverflowError):
        return False


def certify_from_counts(count: int, n: int, sigma: float, alpha: float):
    """Cohen CERTIFY step 3–4 on the estimation counts of the selected class ĉ_A.

    Returns (abstain, p̲_A, R): abstain when p̲_A < ½, else R = σ·Φ⁻¹(p̲_A). The count is a whole number
    of hits in [0, n] (a fractional count, e.g. p̂·n, would be bounded as if more draws had hit).
    """
    check_alpha(alpha)
    check_sigma(sigma)
    if not (_whole(n) and n >= 1 and _whole(count) and 0 <= count <= n):
        raise CertifyNetError(f"{{count}} must be a whole number of hits in [0, {{n}}] with {{n}} >= 1, got "
                              f"count={count}, n={n}", "count", "n")
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
    if not (np.issubdtype(counts.dtype, np.number) and np.all(np.isfinite(counts)) and np.all(counts >= 0)
            and np.all(counts == np.floor(counts))):
        raise CertifyNetError(f"PREDICT needs class counts that are whole numbers >= 0, got {counts.tolist()}")
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

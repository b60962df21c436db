"""Exact boundary-crossing probability of a binomial random walk on a fixed check schedule. Pure numpy/scipy.

Draws X_1, X_2, … ~ Bernoulli(p) i.i.d., S_n = Σ_{i≤n} X_i, checks at n_1 < n_2 < … < n_K (batch sizes
m_k = n_k − n_{k−1}), an upper boundary b_1, …, b_K (integers; b_k > n_k: no crossing possible at check k).
The crossing probability

    P_p(∃k : S_{n_k} ≥ b_k)

is computed by a dynamic programme over the not-yet-crossed states: v_k(s) = P(S_{n_k} = s, no crossing at
checks 1..k) for s < b_k; v_k = (v_{k−1} * Binomial(m_k, p) pmf) restricted to s < b_k, and the mass at
s ≥ b_k is the crossing mass of check k. A lower boundary (S_{n_k} ≤ a_k) is the upper boundary n_k − a_k
of n − S ~ Binomial(n, 1 − p) (`lower_crossing_probability`).

Accuracy (the returned `bound` is an upper bound on the exact probability):
* Trimming: kernel entries of either tail with total mass < `TAIL` = 1e-20, and the lowest states of v_k with
  cumulative mass < TAIL, are dropped and their mass is counted as crossing (conservative).
* Direct convolution (np.convolve, used while |v|·|kernel| ≤ `DIRECT_MAX`): every entry is a sum of ≤ w
  non-negative products, so it carries a relative error ≤ γ_w = w·u/(1 − w·u) (u = 2⁻⁵³), plus the
  kernel's relative error δ_pmf ≤ `PMF_REL` (scipy's binom.pmf; tests check it against a log-gamma
  evaluation). Later checks convolve with sub-stochastic kernels, which do not enlarge ℓ1 errors, so
  check k adds at most (γ_w + γ_L + δ_pmf)·(mass carried) to the ℓ1 error (γ_L: summing the crossing mass).
* FFT convolution (larger cases): ‖error‖₂ ≤ c·log₂(L)·u·‖v‖₂‖kernel‖₂ for length L (Higham, Accuracy and
  Stability of Numerical Algorithms, §24.1); ℓ1 ≤ √L·ℓ2, taken with c = 10 (`FFT_C`). Negative rounding
  noise is clipped to 0, which never increases the error of a non-negative quantity.
The sum of these per-check terms is `error`; `bound = probability + error`. For the default schedule
(204 checks, N = 100,000) error ≲ 1e-9, against α ≥ 1e-6 in use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.signal import fftconvolve
from scipy.stats import binom

from certifynet.errors import CertifyNetError

TAIL = 1e-20          # mass trimmed per tail (counted as crossing)
DIRECT_MAX = 2_000_000  # |v|·|kernel| up to which the exact direct convolution is used
PMF_REL = 1e-12       # assumed relative error of scipy.stats.binom.pmf (checked in tests)
FFT_C = 10.0
_U = 2.0 ** -53


@dataclass(frozen=True)
class Crossing:
    """probability: the DP value (trimmed mass counted as crossing); error: bound on its rounding error;
    bound = probability + error ≥ the exact crossing probability."""
    probability: float
    error: float

    @property
    def bound(self) -> float:
        return self.probability + self.error


def _gamma(n: int) -> float:
    return n * _U / (1.0 - n * _U)


@lru_cache(maxsize=64)
def _kernel(m: int, p: float):
    """(j0, pmf[j0:j1], trimmed mass) of Binomial(m, p), tails of mass < TAIL cut off."""
    pmf = binom.pmf(np.arange(m + 1), m, p)
    low = np.cumsum(pmf)
    high = np.cumsum(pmf[::-1])[::-1]
    j0 = int(np.searchsorted(low, TAIL))                  # P(X < j0) = low[j0 - 1] < TAIL
    j1 = m + 1 - int(np.searchsorted(high[::-1], TAIL))   # P(X ≥ j1) = high[j1] < TAIL
    lost = (low[j0 - 1] if j0 > 0 else 0.0) + (high[j1] if j1 <= m else 0.0)
    ker = pmf[j0:j1].copy()
    ker.setflags(write=False)
    return j0, ker, float(lost)


def _convolve(v: np.ndarray, ker: np.ndarray, mass: float) -> tuple[np.ndarray, float]:
    """v * ker and a bound on the ℓ1 error of the result (module docstring); mass = Σ v."""
    if v.size * ker.size <= DIRECT_MAX:
        return np.convolve(v, ker), (_gamma(min(v.size, ker.size)) + PMF_REL) * mass
    length = v.size + ker.size - 1
    out = np.maximum(fftconvolve(v, ker), 0.0)
    l2 = float(np.linalg.norm(v) * np.linalg.norm(ker))
    return out, FFT_C * math.log2(length) * _U * l2 * math.sqrt(length) + PMF_REL * mass


def crossing_probability(sizes, upper, p: float) -> Crossing:
    """P_p(∃k: S_{n_k} ≥ upper_k) for batch sizes m_k (n_k = m_1 + … + m_k); see the module docstring."""
    sizes = np.asarray(sizes, dtype=np.int64)
    upper = np.asarray(upper, dtype=np.int64)
    if sizes.shape != upper.shape or sizes.ndim != 1 or np.any(sizes < 1):
        raise CertifyNetError("crossing_probability needs one boundary per batch and batch sizes >= 1")
    p = float(p)
    v, lo = np.ones(1), 0                # v[i] = P(S = lo + i, not crossed yet)
    cross, lost, err = 0.0, 0.0, 0.0
    for m, b in zip(sizes.tolist(), upper.tolist()):
        j0, ker, ker_lost = _kernel(m, p)
        mass = float(v.sum())
        w, e = _convolve(v, ker, mass)
        lost += ker_lost * mass
        lo += j0
        cut = min(max(b - lo, 0), w.size)
        cross += float(w[cut:].sum())
        err += e + _gamma(w.size) * mass
        v = w[:cut]
        low = np.cumsum(v)
        drop = int(np.searchsorted(low, TAIL))
        if drop:
            lost += float(low[drop - 1])
            v, lo = v[drop:], lo + drop
        if v.size == 0:
            break
    return Crossing(cross + lost, err)


def lower_crossing_probability(sizes, lower, p: float) -> Crossing:
    """P_p(∃k: S_{n_k} ≤ lower_k), as the upper crossing of n − S ~ Binomial(n, 1 − p) at n_k − lower_k."""
    ns = np.cumsum(np.asarray(sizes, dtype=np.int64))
    return crossing_probability(sizes, ns - np.asarray(lower, dtype=np.int64), 1.0 - float(p))

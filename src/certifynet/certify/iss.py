"""ISS: input-specific sample sizes (Chen, Li, Yan, Li & Sheng, AAAI 2022). Pure numpy/scipy.

Notation: b batch, N maximum sample size, ε allowed decline, α failure probability, n0 pilot size.

ISS-NP
  R(n, p)  = σ·Φ⁻¹(Beta.ppf(α; n·p, n − n·p + 1))  (fractional expected count; 0 when the bound ≤ ½)
  T(p)     = R(N, p) − ε  (absolute)   or   (1 − ε)·R(N, p)  (relative)
  n*(p)    = min{n ∈ {b, 2b, …, N} : R(n, p) ≥ T(p)},  0 (abstain) when T(p) ≤ 0
  n_ISS    = max{n*(p) : p ∈ [p_l, p_u]},  [p_l, p_u] = two-sided CP interval of the pilot count k0/n0 at α.
The final certificate is Cohen's bound on n_ISS FRESH samples (the pilot only picks ĉ_A and n_ISS), so
its (1−α) guarantee holds conditionally on the pilot; the cost is n0 + n_ISS.

Monotonicity used below: R(n, p) is non-decreasing in p (the Beta(a, b) quantile grows with a and
shrinks with b, here a = n·p ↑ and b = n − n·p + 1 ↓), hence so is T(p). R(n, p) is non-decreasing in
n (checked numerically in the tests), which makes bisection over the multiples of b exact.
n*(p) itself is NOT monotone: U-shaped for the relative rule.

ISS-DSRS (design; see docs/iss_dsrs.md)
  * Pilot: n0 draws under P give k_P; the Q law is fixed from the pilot only (truncated Q: p_T from the
    pilot lower bound of p_A), then n0 draws under Q give k_Q.
  * Plan: one common budget n_P = n_Q = n ∈ {b, …, N}. E(n) = DSRS radius on EXPECTED counts
    (n·p̃, n·q̃) with (p̃, q̃) the upper ends of the pilot CP intervals (default; or the point estimates,
    or the max of the plans at both ends).
    Target T = E(N) − ε or (1 − ε)·E(N); n = smallest multiple of b with E(n) ≥ T, by bisection that
    keeps the invariant E(hi) ≥ T (or hi = the cap): the result meets the target even if E is not
    monotone in n (monotonicity only makes it the smallest). Calls to the radius: 1 + ⌈log₂⌈N/b⌉⌉ (9 for 50k/200).
  * Certify with fresh n draws from P and from Q; radius = max(NP on the P run, DSRS) (`dsrs_radius`).
  * Never dearer than fixed N (`iss_dsrs_q_pilot_cap`): the P pilot (n0, it also picks ĉ_A like N0) is
    paid either way; the Q pilot (n0 more) is drawn only when a Gaussian-NP proxy plan at the P pilot
    predicts a saving, n0 + 2·n_pred < 2N, and then the budget is capped at N − ⌈n0/2⌉ (target still
    from E(N)), so cost = 2·n0 + 2n ≤ n0 + 2N. Otherwise the input gets the fixed run n = N (cost
    n0 + 2N). ISS-NP needs nothing: its cost n0 + n_ISS ≤ n0 + N by construction.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.stats import binom

from certifynet.certify.dsrs import dsrs_intervals, dsrs_radius, truncation_percentile
from certifynet.certify.neyman_pearson import certify_from_counts, cp_interval, cp_lower, np_radius
from certifynet.errors import CertifyNetError, check_alpha, check_sigma

MODES = ("absolute", "relative")
# Slack (in σ units) added to the target in the cell bounds so that rounding can only enlarge n.
_TARGET_SLACK = 1e-9
# Radius spacing of the planner grid (σ units): at most _MAX_STEP, at least _MIN_STEP (build-time cap).
_MAX_STEP, _MIN_STEP = 2e-3, 2e-4


def expected_radius(n, p, sigma, alpha):
    """R(n, p) = σ·Φ⁻¹(Beta.ppf(α; n·p, n − n·p + 1)), 0 when the bound ≤ ½. Vectorised over n, p."""
    n, p = np.broadcast_arrays(np.asarray(n, dtype=float), np.asarray(p, dtype=float))
    return np_radius(cp_lower(n * p, n, alpha), sigma)


def _check_rule(n_max, batch, decline, mode):
    if mode not in MODES:
        raise CertifyNetError(f"ISS decline type must be one of {MODES}, got {mode!r}")
    if int(batch) < 1 or int(n_max) < int(batch):
        raise CertifyNetError(f"ISS needs 1 <= batch <= N, got batch={batch}, N={n_max}")
    d = float(decline)
    if not (d >= 0.0 and (mode == "absolute" or d < 1.0) and math.isfinite(d)):
        raise CertifyNetError(f"ISS decline must be >= 0 (and < 1 if relative), got {decline}")


def _target(r_full, decline, mode):
    """T = R(N, p) − ε (absolute) or (1 − ε)·R(N, p) (relative)."""
    return r_full - decline if mode == "absolute" else (1.0 - decline) * r_full


def _size_grid(n_max, batch):
    """Candidate sizes {b, 2b, …} capped by N (N itself is the last candidate)."""
    return np.minimum(np.arange(1, -(-n_max // batch) + 1) * batch, n_max)


def _smallest_size(p_plan, target, sizes, sigma, alpha):
    """Vectorised bisection: smallest size s with R(s, p_plan) ≥ target, else sizes[-1]; 0 where target ≤ 0.

    Invariant: sizes[hi] passes or is the cap, sizes[lo] fails (lo = −1 is 'nothing tried').
    """
    p_plan, target = np.broadcast_arrays(np.atleast_1d(p_plan).astype(float),
                                         np.atleast_1d(target).astype(float))
    lo = np.full(p_plan.shape, -1)
    hi = np.full(p_plan.shape, len(sizes) - 1)
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        active = hi - lo > 1
        ok = expected_radius(sizes[np.maximum(mid, 0)], p_plan, sigma, alpha) >= target
        hi = np.where(active & ok, mid, hi)
        lo = np.where(active & ~ok, mid, lo)
    return np.where(target > 0.0, sizes[hi], 0)


def iss_sample_size(p, n_max, batch, sigma, alpha, decline, mode) -> int:
    """n*(p): smallest n ∈ {b, …, N} with R(n, p) ≥ T(p); 0 (abstain) when T(p) ≤ 0."""
    alpha, sigma = check_alpha(alpha), check_sigma(sigma)
    _check_rule(n_max, batch, decline, mode)
    if not 0.0 <= float(p) <= 1.0:
        raise CertifyNetError(f"p must be in [0, 1], got {p}")
    target = _target(expected_radius(n_max, p, sigma, alpha), float(decline), mode)
    return int(_smallest_size(p, target, _size_grid(int(n_max), int(batch)), sigma, alpha)[0])


def _radius_levels(r_top, step, rel):
    """Levels 0 = r_0 < r_1 < … < r_top (σ units) with r_{j+1} − r_j ≤ min(step, rel·r_{j+1}) beyond r_1."""
    if rel <= 0.0:
        return np.arange(0.0, r_top, step)
    r_switch = min(step / rel, r_top)  # geometric below, arithmetic above
    geo = 1e-4 * (1.0 + rel) ** np.arange(math.ceil(math.log(r_switch / 1e-4) / math.log1p(rel)))
    return np.concatenate(([0.0], geo[geo < r_switch], np.arange(r_switch, r_top, step)))


@lru_cache(maxsize=16)
def _cell_table(n_max, batch, alpha, decline_per_sigma, mode, resolution):
    """Grid g_0 < … < g_M = 1 on p and an upper bound ub_j ≥ n*(p) for every p in [g_j, g_{j+1}].

    Built at σ = 1 (absolute: n* depends on σ only via ε/σ; relative: not at all), once per rule.
    Grid: g_j = R(N, ·)⁻¹(r_j), with target steps r_{j+1} − r_j ≤ ε/resolution (absolute) or
    ≤ ε·r_{j+1}/resolution (relative), within [_MIN_STEP, _MAX_STEP]; g_0 has R(N, g_0) = 0.
    Bound: since R(n, ·) and T(·) are non-decreasing, R(n, p) ≥ R(n, g_j) ≥ T(g_{j+1}) ≥ T(p) on the
    cell, so ub_j = min{n : R(n, g_j) ≥ T(g_{j+1})} (capped at N, where n*(p) ≤ N anyway) dominates n*.
    """
    r_top = float(expected_radius(n_max, 1.0, 1.0, alpha))
    eps = decline_per_sigma / resolution
    step = min(_MAX_STEP, max(eps, _MIN_STEP)) if mode == "absolute" and eps > 0 else _MAX_STEP
    levels = _radius_levels(r_top, step, eps if mode == "relative" else 0.0)
    lo, hi = np.full(levels.shape, 0.5), np.ones(levels.shape)  # R(N, lo) ≤ level < R(N, hi)
    for _ in range(45):
        mid = 0.5 * (lo + hi)
        above = expected_radius(n_max, mid, 1.0, alpha) > levels
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    grid = np.unique(np.append(lo, 1.0))
    target = _target(expected_radius(n_max, grid[1:], 1.0, alpha), decline_per_sigma, mode)
    ub = _smallest_size(grid[:-1], target + _TARGET_SLACK, _size_grid(n_max, batch), 1.0, alpha)
    return grid, ub


class IssPlanner:
    """ISS sample sizes n_ISS(k0) = max{n*(p) : p ∈ CP_α(k0, n0)} for every pilot count k0 ∈ {0, …, n0}.

    The table is built once (cached across planners with the same rule). Conservative by construction:
    the result is the max of ub_j over every grid cell meeting [p_l, p_u] (endpoints included), and
    ub_j ≥ n*(p) on its whole cell (see `_cell_table`), so it is never below the true max of n* over
    the interval. Overshoot is about one cell: as if ε shrank by ≈ 2ε/`resolution`.
    """

    def __init__(self, n_max, batch, sigma, alpha, decline, mode, n0, resolution=40):
        self.alpha, self.sigma = check_alpha(alpha), check_sigma(sigma)
        _check_rule(n_max, batch, decline, mode)
        if int(n0) < 0:
            raise CertifyNetError(f"ISS pilot size n0 must be >= 0, got {n0}")
        self.n_max, self.batch, self.n0 = int(n_max), int(batch), int(n0)
        self.decline, self.mode = float(decline), mode
        eps = self.decline / self.sigma if mode == "absolute" else self.decline
        self.grid, self.cell_bound = _cell_table(self.n_max, self.batch, self.alpha, eps, mode,
                                                 int(resolution))
        k0 = np.arange(self.n0 + 1)
        self.p_low, self.p_up = (np.atleast_1d(v) for v in cp_interval(k0, self.n0, self.alpha))
        first = np.searchsorted(self.grid[1:], self.p_low, side="left")  # first cell with g_{j+1} ≥ p_l
        last = np.searchsorted(self.grid[:-1], self.p_up, side="right") - 1  # last cell with g_j ≤ p_u
        self._sizes = np.array([self.cell_bound[a:b + 1].max() if b >= a else 0
                                for a, b in zip(first, last)], dtype=np.int64)

    def sample_size(self, k0) -> int:
        """n_ISS for a pilot count k0 of the top class among n0 draws (0 means abstain)."""
        k0 = int(k0)
        if not 0 <= k0 <= self.n0:
            raise CertifyNetError(f"pilot count must be in [0, n0={self.n0}], got {k0}")
        return int(self._sizes[k0])

    def pilot_interval(self, k0):
        """Two-sided CP interval [p_l, p_u] of the pilot at level α (α/2 per tail)."""
        return float(self.p_low[int(k0)]), float(self.p_up[int(k0)])

    def expected_sample_size(self, p):
        """E[n_ISS] = Σ_k Bin(k; n0, p)·n_ISS(k) for a true top-class rate p (pilot cost n0 not included)."""
        p = np.atleast_1d(np.asarray(p, dtype=float))
        pmf = binom.pmf(np.arange(self.n0 + 1)[None, :], self.n0, p[:, None])
        return pmf @ self._sizes.astype(float)


def iss_headroom(p, n_max, batch, sigma, alpha, decline, mode, pilot_sizes=(200, 500, 1000, 2000, 4000)):
    """What ISS can save on inputs with true top-class rates p (e.g. p̂ = count/N of a fixed-N run).

    Returns {'oracle': mean n*(p), n0: (mean E[n_ISS] with a free pilot, the same + n0)}. The oracle
    knows p; the pilot rules pay for their CP interval, whose max of n* is the ISS rule's price.
    """
    p = np.asarray(p, dtype=float)
    out = {"oracle": float(np.mean([iss_sample_size(v, n_max, batch, sigma, alpha, decline, mode) for v in p]))}
    for n0 in pilot_sizes:
        free = float(IssPlanner(n_max, batch, sigma, alpha, decline, mode, n0).expected_sample_size(p).mean())
        out[int(n0)] = (free, free + n0)
    return out


def iss_certify(count, n_iss, sigma, alpha):
    """Cohen's bound on n_ISS FRESH draws: (abstain, p̲_A, R). n_ISS = 0 abstains with R = 0."""
    count, n_iss = int(count), int(n_iss)
    if not 0 <= count <= n_iss:
        raise CertifyNetError(f"ISS needs 0 <= count <= n_iss, got count={count}, n_iss={n_iss}")
    if n_iss == 0:
        return True, 0.0, 0.0
    return certify_from_counts(count, n_iss, sigma, alpha)


# ---------------------------------------------------------------------------------------------- DSRS

def iss_dsrs_budget(count_p0, count_q0, n0, n_max, batch, alpha, decline, mode, radius_fn,
                    plan_at="upper", n_cap=None):
    """Common ISS budget (n_P, n_Q) = (n, n) for DSRS from pilot counts k_P, k_Q of n0 draws each.

    radius_fn(count_p, n_p, count_q, n_q) -> expected radius (fractional counts allowed), e.g.
    `dsrs_expected_radius_fn(...)`. E(n) = radius_fn(n·p̃, n, n·q̃, n); n = min{n ∈ {b, …, N} :
    E(n) ≥ T}, T = E(N) − ε or (1 − ε)·E(N); (0, 0) when T ≤ 0. Planning point (p̃, q̃): 'upper' =
    upper ends of the pilots' two-sided CP intervals at α (with NP as radius this is exactly ISS-NP's
    max over the interval for the absolute rule, where n* is non-decreasing in p), 'point' = k/n0,
    'both' = max of the plans at the lower and at the upper ends (for the U-shaped relative rule;
    twice the radius calls). Each plan calls radius_fn 1 + ⌈log₂⌈N/b⌉⌉ times.
    n_cap: largest budget allowed (sizes {b, …} up to n_cap; the target still comes from E(N)); where
    the target needs more, the plan is n_cap (`iss_dsrs_q_pilot_cap` sets it so ISS never costs more).
    """
    check_alpha(alpha)
    _check_rule(n_max, batch, decline, mode)
    n0, kp, kq = int(n0), int(count_p0), int(count_q0)
    if n0 < 1 or not (0 <= kp <= n0 and 0 <= kq <= n0):
        raise CertifyNetError(f"pilot counts must be in [0, n0] with n0 >= 1, got {kp}, {kq}, {n0}")
    (pl, pu), (ql, qu) = cp_interval(kp, n0, alpha), cp_interval(kq, n0, alpha)
    points = {"point": [(kp / n0, kq / n0)], "upper": [(pu, qu)], "both": [(pl, ql), (pu, qu)]}
    if plan_at not in points:
        raise CertifyNetError(f"plan_at must be one of {sorted(points)}, got {plan_at!r}")
    cap = int(n_max) if n_cap is None else int(n_cap)
    if not 1 <= cap <= int(n_max):
        raise CertifyNetError(f"ISS-DSRS budget cap must be in [1, N={n_max}], got {n_cap}")
    sizes = _size_grid(cap, min(int(batch), cap))
    n = max(_dsrs_plan(float(p), float(q), sizes, float(decline), mode, radius_fn, int(n_max))
            for p, q in points[plan_at])
    return n, n


def iss_dsrs_q_pilot_cap(count_p0, n0, n_max, batch, sigma, alpha, decline, mode, plan_at="upper") -> int:
    """Budget cap N − ⌈n0/2⌉ when ISS-DSRS's Q pilot can save draws, else 0 (plan the fixed run n = N).

    Decided from the P pilot alone, before any Q draw: the plan with Gaussian NP on the P interval at
    α/4 (the NP part of `dsrs_intervals`) as radius, on the capped sizes, must give n0 + 2·n_pred < 2N.
    A proxy only decides cost; the cap makes the bound hard: 2·n0 + 2n ≤ n0 + 2N for every input.
    """
    n0, n_max = int(n0), int(n_max)
    cap = n_max - (n0 + 1) // 2
    if cap < 1:
        return 0

    def np_proxy(count_p, n_p, count_q, n_q):
        return float(np_radius(cp_lower(count_p, n_p, alpha / 4.0), sigma))

    n_pred, _ = iss_dsrs_budget(count_p0, 0, n0, n_max, batch, alpha, decline, mode, np_proxy, plan_at, cap)
    return cap if n0 + 2 * n_pred < 2 * n_max else 0


def iss_dsrs_oracle_size(p, q, n_max, batch, decline, mode, radius_fn) -> int:
    """ISS-DSRS budget per distribution if (p_A, q_A) were known: min{n : E(n) ≥ T} at (p, q), no pilot."""
    _check_rule(n_max, batch, decline, mode)
    return _dsrs_plan(float(p), float(q), _size_grid(int(n_max), int(batch)), float(decline), mode, radius_fn)


def _dsrs_plan(p, q, sizes, decline, mode, radius_fn, n_full=None):
    """Smallest size with E(n) ≥ T at the planning point (p, q), else sizes[-1]; 0 when T ≤ 0.

    T comes from E(n_full) (default: the largest size).
    """
    def radius(n):
        return float(radius_fn(n * p, int(n), n * q, int(n)))

    target = _target(radius(n_full or sizes[-1]), decline, mode)
    if target <= 0.0:
        return 0
    lo, hi = -1, len(sizes) - 1  # invariant: E(sizes[hi]) ≥ T or sizes[hi] is the cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if radius(sizes[mid]) >= target else (mid, hi)
    return int(sizes[hi])


def pilot_truncation_percentile(count_p0, n0, alpha, heuristic="x"):
    """Truncated Q for ISS-DSRS: p_T from the PILOT one-sided lower bound p̲_A (α), fixed before any Q draw."""
    return truncation_percentile(cp_lower(count_p0, n0, alpha), heuristic=heuristic)


def dsrs_expected_radius_fn(sigma, d, k, q_mode, q_param, alpha):
    """radius_fn for `iss_dsrs_budget` and the final certificate: counts → max(NP, DSRS) radius.

    Intervals from `dsrs_intervals` (α/2 per distribution); 0 when either run is empty.
    """
    def radius_fn(count_p, n_p, count_q, n_q):
        if n_p <= 0 or n_q <= 0:
            return 0.0
        pl, pu, ql, qu = dsrs_intervals(count_p, n_p, count_q, n_q, alpha)
        return float(dsrs_radius(pl, pu, ql, qu, sigma, d, k, q_mode, q_param))

    return radius_fn

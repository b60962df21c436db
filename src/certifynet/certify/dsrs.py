"""Double-sampling randomized smoothing (DSRS; Li, Zhang, Xie & Li, ICML 2022): certification math.

numpy/scipy only. The symbols follow the paper and the reference implementation:

* P is the generalized Gaussian p(δ) ∝ ‖δ‖^(−2k)·exp(−‖δ‖²/(2σ'²)) with σ' = σ·√(d/(d−2k)). Its radial
  variable t = ‖δ‖²/(2σ'²) follows Gamma(n), n = d/2 − k, and its direction is uniform. k = 0 is N(0, σ²I).
* Q is either P truncated to the ball ‖δ‖ ≤ T (``'truncated'``: q = ν·p·1[t ≤ β], β = F⁻¹_Gamma(n)(p_T),
  ν = 1/p_T), or the same family with its own σ_Q < σ (``'rescaled'``).
* The shift is x₀ = r·e₁, and r̃ = r/σ'. Every squared norm is measured as τ = ‖·‖²/(2σ'²).

Shell geometry. On the shell ‖x‖² = 2σ'²t, the fraction of points with ‖x − x₀‖² ≥ 2σ'²u is I(½ − z).
On the shell ‖x − x₀‖² = 2σ'²t, the fraction with ‖x‖² ≤ 2σ'²u is I(½ + z). Here
z = (2(u − t) − r̃²)/(4·√(2t)·r̃), and I is the CDF of Beta((d−1)/2, (d−1)/2).
The log-likelihood ratio ℓ(x) = ln p(x − x₀) − ln p(x) is ≤ L on a shell exactly where u ≥ u_L, with
u_L + k·ln u_L = t + k·ln t − L. The closed form is the Lambert-W formula of the paper. Here it is solved by
Newton's method in ln(u/t), so that the small gap u − t keeps full relative precision even for ImageNet's k.

Certificate by weak duality. For any multipliers λ = (λ₁, λ₂) and any f with P-mass p and Q-mass q,
    ∫f·p(·−x₀) ≥ λ₁p + λ₂q − Φ(λ),    Φ(λ) = ∫(λ₁p + λ₂q − p(·−x₀))₊ = λ₁P(R) + λ₂Q(R) − P_x₀(R),
with R = {p(x − x₀) ≤ λ₁p(x) + λ₂q(x)}. Equality holds for the worst-case f = 1_R when λ fits both masses.
The check takes the minimum of the right side over the confidence box [P̲, P̄] × [Q̲, Q̄], a corner picked
by the signs of λ. It certifies r when that minimum exceeds ½ by more than err = e_S + |λ₁|·e_P + |λ₂|·e_Q,
the quadrature error bound of the three masses. The multiplier fits, and step 1's choice of corner, only
affect tightness: a poor fit lowers the bound and can never certify more.

Quadrature. Every mass is an expectation over the radial law of t, computed with fixed Gauss–Legendre
segments in ln t (`_Radial.integrate`), vectorised over shells. Segments are split at kinks and at log
singularities, around the sharp steps that small r̃ or large d produce, and wherever adjacent nodes are still
more than ½ standard deviation of I's argument apart. Fits use 48 nodes per segment. The masses that enter a
certificate are recomputed with 64 nodes, and twice their change from the 48-node values, at least 1e-12,
is taken as their error (e_P, e_Q, e_S). Against 192-node references the 64-node error stayed below 0.7 of
that estimate in every test for d ≥ 100, and below 1e-9 in absolute terms (tests/test_dsrs_math.py).
Smaller d, where I reaches 0 and 1 with power-law kinks, gets a 100× wider error (see `_checked`).
Rounding matters in three places, and each is handled:
* betainc at Beta parameters up to 75 264 (absolute error < 1e-13, checked against mpmath; inside the floor);
* the gaps u − t (computed as t·expm1(y), never as a difference of two large numbers);
* overflow of q/p = γ^(−2n)·e^(−bt) for large n (kept in log space).
The largest certified r is found by bracketing, and the lower end of the final bracket is returned. This
assumes, as the reference does, that the check is monotone in r.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import betainc, betaln, gammainc, gammaincc, gammainccinv, gammaincinv, roots_legendre
from scipy.stats import norm

from certifynet.certify.neyman_pearson import cp_interval, cp_lower, np_radius
from certifynet.errors import CertifyNetError

__all__ = ["generalized_np_radius", "dsrs_radius", "dsrs_intervals", "dsrs_certify",
           "truncation_percentile", "pooled_np_fallback_needed", "sigma_prime", "radial_quantile",
           "truncation_beta", "truncation_radius"]

_NODES = 48          # Gauss–Legendre nodes per segment of a radial expectation (fits)
_NODES_FINE = 64     # nodes for the masses that enter a certificate; the 48-node values give their error
_REFINE = 5          # levels of refinement around unresolved transitions
_ZSTEP = 0.5         # largest move of a step argument between adjacent nodes, in standard deviations
_TAIL = 1e-15        # Gamma mass left out at each end of the range
_QUAD_FLOOR = 1e-12  # error floor of a certified mass: dropped tails (2e-15) plus betainc rounding (< 1e-13)
_RADIUS_XTOL = 2e-5  # final bracket width of every radius search (the spec asks for ≤ 1e-4)
_LEVEL_CLIP = 1e6    # |log-level| beyond which a shell is saturated (I is exactly 0 or 1)
_X_PLUS_ONE = 1e-8   # heuristic x+: fall back to pooled NP when the P upper bound is ≥ 1 − 1e-8


# ----------------------------------------------------------------------------------------------------------
# distribution helpers (also used by the torch sampler)

def _check_dk(d, k):
    d, k = int(d), int(k)
    if d < 2 or k < 0 or 2 * k >= d:
        raise CertifyNetError(f"generalized Gaussian needs d >= 2 and 0 <= k < d/2, got d={d}, k={k}")
    return d, k


def sigma_prime(sigma, d, k):
    """σ' = σ·√(d/(d − 2k)), so that E‖δ‖² = dσ² for every k."""
    d, k = _check_dk(d, k)
    return float(sigma) * math.sqrt(d / (d - 2 * k))


def radial_quantile(p, d, k):
    """Quantile of t = ‖δ‖²/(2σ'²) ~ Gamma(d/2 − k). ‖δ‖ = σ'·√(2t).

    For truncated sampling, draw U ~ Uniform(0, p_T) and take t = radial_quantile(U, d, k). This is the
    inverse CDF on [0, F(β)], so t is exactly Gamma conditioned on t ≤ β.
    """
    d, k = _check_dk(d, k)
    return gammaincinv(d / 2 - k, np.asarray(p, dtype=float))


def truncation_beta(p_T, d, k):
    """β = F⁻¹_Gamma(d/2−k)(p_T) = T²/(2σ'²), the radial cut of the truncated Q.

    ν = 1/p_T is its density ratio inside the ball. p_T = 1 gives β = ∞ (Q = P).
    """
    p_T = float(p_T)
    if not 0.0 < p_T <= 1.0:
        raise CertifyNetError(f"truncation percentile must be in (0, 1], got {p_T}")
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


def dsrs_intervals(count_p, n_p, count_q, n_q, alpha):
    """Two-sided Clopper–Pearson intervals (P̲, P̄, Q̲, Q̄), each run at total level α/2 (tails α/4).

    The union bound gives a joint failure probability of α. This convention reproduces the reference vectors:
    α = 0.001, 0.0005 per run.
    """
    pl, pu = cp_interval(count_p, n_p, alpha / 2.0)
    ql, qu = cp_interval(count_q, n_q, alpha / 2.0)
    return float(pl), float(pu), float(ql), float(qu)


# ----------------------------------------------------------------------------------------------------------
# radial quadrature

@functools.lru_cache(maxsize=None)
def _gl(m):
    return roots_legendre(m)


class _Radial:
    """Expectations over t ~ Gamma(n) of shell functions, for one (d, k).

    Range: [F⁻¹(ε), F⁻¹(1−ε)], ε = 1e-15; the dropped tails hold 2e-15 of mass. Segments use Gauss–Legendre
    in y = ln t, where the log-density n(y − ln n) − (t − n) + const is smooth and unimodal. Next to a log
    singularity tz of the integrand they use s = ln|t − tz| instead. The constant is fixed so that the plain
    rule sums to 1 − 2ε.
    """

    def __init__(self, d, k, m=_NODES):
        self.d, self.k, self.n, self.m = d, k, d / 2.0 - k, m
        self.h = (d - 1) / 2.0                       # Beta parameter of the first coordinate of a direction
        self.lbeta = float(betaln(self.h, self.h))
        self.zscale = 2.0 * math.sqrt(d)             # 1 / sd of I's argument: z in standard deviations
        self.zsat = min(14.0, 0.5 * self.zscale)    # |z| beyond which I is 0 or 1 (exactly, for |z| ≥ ½)
        self.t_lo = float(gammaincinv(self.n, _TAIL))
        self.t_hi = float(gammainccinv(self.n, _TAIL))
        self.log_norm = 0.0
        t, w = self._nodes(self.t_lo, self.t_hi)
        self.log_norm = math.log((1.0 - 2.0 * _TAIL) / w.sum())
        self._fine = self if m == _NODES_FINE else None

    @property
    def fine(self):
        """The same law with _NODES_FINE nodes per segment."""
        if self._fine is None:
            self._fine = _Radial(self.d, self.k, _NODES_FINE)
        return self._fine

    def _logpdf_y(self, y):
        zc = y - math.log(self.n)
        return self.n * (zc - np.expm1(zc)) + self.log_norm

    def _nodes(self, a, b, tz=None):
        """Nodes and weights on [a, b]: GL in ln t, or GL in ln|t − tz| when tz (= a or b) is singular.

        In the graded case the piece within 1e-14·(b − a) of tz is left out (mass < 1e-14).
        """
        x, g = _gl(self.m)
        if tz is None:
            ya, yb = math.log(a), math.log(b)
            half = 0.5 * (yb - ya)
            y = ya + half * (x + 1.0)
            return np.exp(y), g * half * np.exp(self._logpdf_y(y))
        span = b - a
        sa, sb = math.log(1e-14 * span), math.log(span)
        half = 0.5 * (sb - sa)
        dist = np.exp(sa + half * (x + 1.0))
        t = a + dist if tz == a else b - dist
        return t, g * half * dist / t * np.exp(self._logpdf_y(np.log(t)))

    def _segments(self, cuts, windows, graded, bounds):
        lo, hi = bounds if bounds else (self.t_lo, self.t_hi)
        lo, hi = max(lo, self.t_lo), min(hi, self.t_hi)
        if not lo < hi:
            return []
        pts = {c for c in cuts if lo < c < hi}
        for win in windows:
            if win:
                pts.update(c for c in win if lo < c < hi)
        gz = [c for c in graded if c is not None and lo < c < hi]
        for c in gz:                                # graded pieces of width min(tz/2, √n/4) on both sides
            gap = min(0.5 * c, 0.25 * math.sqrt(self.n))
            pts.update(x for x in (c - gap, c, c + gap) if lo < x < hi)
        edges = [lo] + sorted(pts) + [hi]
        return [(a, b, a if a in gz else (b if b in gz else None)) for a, b in zip(edges[:-1], edges[1:])]

    def integrate(self, evaluate, cuts=(), windows=(), graded=(), bounds=None, scale=1.0):
        """Σ over shells of weight × evaluate(scale·t)[0]: one expectation per row of values.

        evaluate returns (values (nv, N), zc (nz, N)). zc holds the arguments z of the I terms, in standard
        deviations of I's argument. Between adjacent nodes z may move by at most _ZSTEP of them, unless both
        are saturated (|z| > zsat with one sign). Otherwise each run of such pairs becomes its own segment,
        for up to _REFINE levels. `bounds` restricts the range of t, and `scale` maps rule variables to shells
        (Q).
        """
        segs = self._segments(cuts, windows, graded, bounds)
        if not segs:                                # empty range: zeros of the right length
            return np.zeros(np.atleast_2d(evaluate(np.full(1, self.n))[0]).shape[0])
        R_sat, total = self.zsat, 0.0
        for level in range(_REFINE + 1):
            if not segs:
                break
            parts = [self._nodes(*s) for s in segs]
            t = np.concatenate([p[0] for p in parts])
            w = np.concatenate([p[1] for p in parts])
            sid = np.repeat(np.arange(len(segs)), self.m)
            vals, zc = evaluate(scale * t)
            vals = np.atleast_2d(vals)
            if level == _REFINE or zc is None:
                return total + vals @ w
            zc = np.atleast_2d(zc)
            z0, z1 = zc[:, :-1], zc[:, 1:]
            sat = ((z0 > R_sat) & (z1 > R_sat)) | ((z0 < -R_sat) & (z1 < -R_sat))
            bad = (np.abs(z1 - z0) > _ZSTEP) & ~sat
            if R_sat < 14.0:        # small d: I reaches 0 or 1 at |z| = ½ with a power-law kink
                bad |= (np.abs(z0) >= R_sat) != (np.abs(z1) >= R_sat)
            bad = np.any(bad, axis=0) & (sid[:-1] == sid[1:])
            bad_segs = np.unique(sid[:-1][bad])
            keep = ~np.isin(sid, bad_segs)
            total = total + vals[:, keep] @ w[keep]
            new = []
            for j in bad_segs:                      # each run of bad pairs becomes one segment
                a, b, tz = segs[j]
                idx = np.nonzero(bad & (sid[:-1] == j))[0]
                starts = idx[np.r_[True, np.diff(idx) > 1]]
                ends = idx[np.r_[np.diff(idx) > 1, True]] + 1
                edges = [a] + sorted(p for p in set(t[starts]) | set(t[ends]) if a < p < b) + [b]
                new += [(x, y, tz if tz in (x, y) else None) for x, y in zip(edges[:-1], edges[1:])]
            segs = new
        return total

    def step_window(self, tau_star, rt):
        """Shells t on which I(½ + z) for the fixed ball ‖x‖² ≤ 2σ'²τ* is neither 0 nor 1 (|z| < 14 sd).

        It is a step of width O(r̃·√t/√d) at t ≈ τ* − r̃²/2, which gets its own segment.
        """
        if tau_star is None or not (tau_star > 0 and math.isfinite(tau_star)):
            return None
        zw = self.zsat / self.zscale

        def t_at(z):            # 2(τ* − t) − r̃² = 4z·√(2t)·r̃, solved for √t
            disc = 8.0 * (4.0 * z * z * rt * rt + 2.0 * tau_star - rt * rt)
            return 0.0 if disc <= 0 else ((-4.0 * math.sqrt(2.0) * z * rt + math.sqrt(disc)) / 4.0) ** 2
        return t_at(zw), t_at(-zw)

    # --- the Beta((d−1)/2, (d−1)/2) law of (1 + first coordinate of a direction)/2 ----------------------
    def cdf(self, a):
        return betainc(self.h, self.h, np.clip(a, 0.0, 1.0))

    def pdf(self, a):
        a = np.clip(a, 0.0, 1.0)
        with np.errstate(divide="ignore"):
            return np.exp((self.h - 1.0) * (np.log(a) + np.log1p(-a)) - self.lbeta)


@functools.lru_cache(maxsize=16)
def _radial(d, k):
    return _Radial(d, k)


def _gap(t, c, k):
    """Δ = u − t and ∂Δ/∂c = u/(u + k), where u + k·ln u = t + k·ln t + c.

    That is u = k·W(exp(t/k + ln(t/k) + c/k)). With y = ln(u/t), g(y) = t·expm1(y) + k·y − c is convex
    and increasing. Newton's method started from an upper bound of the root therefore decreases
    monotonically to it. k = 0 gives Δ = c exactly; then u = t + c may be ≤ 0, which saturates I.
    """
    t = np.asarray(t, dtype=float)
    c = np.clip(np.asarray(c, dtype=float), -_LEVEL_CLIP, _LEVEL_CLIP)
    t, c = np.broadcast_arrays(t, c)
    if k == 0:
        return c.astype(float), np.ones_like(t)
    y = np.minimum(c / (t + k), (c + t) / k)                  # both are upper bounds of the root
    pos = c > -t
    y = np.where(pos, np.minimum(y, np.log1p(np.where(pos, c, 0.0) / t)), y)
    for _ in range(100):
        step = (t * np.expm1(y) + k * y - c) / (t * np.exp(y) + k)
        y = y - step
        if np.all(np.abs(step) <= 1e-13 * np.abs(y) + 1e-300):
            break
    u = t * np.exp(y)
    return t * np.expm1(y), u / (u + k)


def _z(t, rt, gap):
    """z = (2·gap − r̃²)/(4√(2t)·r̃): I(½ + z) is the ball ‖x‖² ≤ 2σ'²(t + gap) on a shifted shell t."""
    return (2.0 * gap - rt * rt) / (4.0 * np.sqrt(2.0 * t) * rt)


def _origin_eval(R, rt, level, dlevel=()):
    """evaluate() for P-masses of {ℓ ≤ level(t)} on origin shells: I(½ − z), z from u_L − t = Δ(t, −L).

    The extra rows are ∂I/∂θ for each function in `dlevel`, which returns ∂L/∂θ on the shells.
    """
    def evaluate(t):
        gap, dgap = _gap(t, -level(t), R.k)
        z = _z(t, rt, gap)
        rows = [R.cdf(0.5 - z)]
        if dlevel:
            dens = R.pdf(0.5 - z) * 2.0 * dgap / (4.0 * np.sqrt(2.0 * t) * rt)
            rows += [dens * f(t) for f in dlevel]
        return np.array(rows), z * R.zscale
    return evaluate


def _const(value):
    return lambda t: np.full_like(t, value)


def _ball_eval(R, rt, lev):
    """evaluate() for the shifted mass of {ℓ ≤ lev} (constant): the ball ‖x‖² ≤ 2σ'²m_lev on shifted shells."""
    def evaluate(t):
        z = _z(t, rt, _gap(t, lev, R.k)[0])
        return R.cdf(0.5 + z)[None], z[None] * R.zscale
    return evaluate


# ----------------------------------------------------------------------------------------------------------
# scalar solvers

def _solve_increasing(fn, target, x0, step=4.0, ftol=1e-14, maxit=80):
    """Safeguarded Newton for an increasing fn(x) -> (value, derivative). Returns (x, value) of the best try."""
    lo, hi = -math.inf, math.inf
    x, best = float(x0), None
    for _ in range(maxit):
        v, dv = fn(x)
        res = v - target
        if best is None or abs(res) < abs(best[1] - target):
            best = (x, v)
        if abs(res) <= ftol:
            break
        if res < 0:
            lo = x
        else:
            hi = x
        xn = x - res / dv if dv > 0 and math.isfinite(dv) else math.nan
        if math.isfinite(lo) and math.isfinite(hi):
            if hi - lo <= 1e-15 * max(1.0, abs(x)):
                break
            if not lo < xn < hi:
                xn = 0.5 * (lo + hi)
        elif not math.isfinite(xn) or abs(xn - x) > step:
            xn = x + (step if res < 0 else -step)
            step *= 2.0
        x = xn
    return best


def _largest_certified(h, lo, h_lo, hi, h_hi, xtol=_RADIUS_XTOL):
    """Illinois regula falsi on a decreasing margin h with h(lo) > 0 ≥ h(hi). Returns the certified end lo."""
    side = 0
    while hi - lo > xtol:
        x = (lo * h_hi - hi * h_lo) / (h_hi - h_lo) if math.isfinite(h_lo - h_hi) else math.nan
        if not math.isfinite(x):
            x = 0.5 * (lo + hi)
        x = min(max(x, lo + 0.45 * xtol), hi - 0.45 * xtol)
        hx = h(x)
        if hx > 0:
            lo, h_lo = x, hx
            if side == 1:
                h_hi *= 0.5
            side = 1
        else:
            hi, h_hi = x, hx
            if side == -1:
                h_lo *= 0.5
            side = -1
    return lo


def _search_up(h, lo, h_lo, step, r_max):
    """Largest certified r ≥ lo: expand [lo, lo + step·2^j] until h fails, then bracket."""
    hi = lo + step
    while True:
        h_hi = h(hi)
        if h_hi <= 0:
            return _largest_certified(h, lo, h_lo, hi, h_hi)
        if hi >= r_max:
            return hi
        lo, h_lo, step = hi, h_hi, 2.0 * step
        hi = min(lo + step, r_max)


# ----------------------------------------------------------------------------------------------------------
# Neyman–Pearson for the generalized Gaussian

def _gauss_level(rr, p):
    """Starting guess for the NP log-level: the Gaussian value L = R·Φ⁻¹(p) − R²/2 with R = r/σ."""
    return rr * float(norm.ppf(min(max(p, 1e-300), 1.0 - 1e-16))) - 0.5 * rr * rr


def _fit_level(R, rt, target, L0, offset=None, **where):
    """Log-level L with P-mass target for {ℓ ≤ L + offset(t)}. `where` is passed to integrate (bounds, scale).

    Returns (L, computed mass).
    """
    off = offset if offset is not None else (lambda t: 0.0)

    def fn(L):
        m, dm = R.integrate(_origin_eval(R, rt, lambda t: L + off(t), (lambda t: 1.0,)), **where)
        return float(m), float(dm)
    return _solve_increasing(fn, target, L0)


def _checked(fn, R):
    """Masses fn(rule) from the fine rule, with errors max(floor, 2·|fine − coarse|) from the 48-node rule.

    Below d = 100, where I has power-law kinks at its ends, the factor is 200 and the floor is 1e-9.
    """
    fine, coarse = np.atleast_1d(fn(R.fine)), np.atleast_1d(fn(R))
    small = R.d < 100
    return fine, np.maximum(1e-9 if small else _QUAD_FLOOR, (200.0 if small else 2.0) * np.abs(fine - coarse))


def _np_margin(R, rt, p, L0):
    """Bound − ½ − err for plain NP at P-mass p: K(p − P(R)) + P_x₀(R), R = {ℓ ≤ L}, K = e^L. Also returns L."""
    if p >= 1.0:
        return 0.5, L0
    L, _ = _fit_level(R, rt, p, L0)
    (mp, s), (ep, es) = _checked(lambda Rx: [float(Rx.integrate(_origin_eval(Rx, rt, _const(L)))[0]),
                                             float(Rx.integrate(_ball_eval(Rx, rt, L))[0])], R)
    return _box_dual((p, p, 0.0, 1.0), math.exp(min(L, 700.0)), 0.0, (mp, 0.0, s), (ep, 0.0, es)), L


def generalized_np_radius(p_lower, sigma, d, k):
    """NP radius for the generalized Gaussian: the largest r with min{P_x₀(f) : P(f) = P̲_A} > ½.

    k = 0 gives σ·Φ⁻¹(P̲_A) (`np_radius`). For k > 0 the radius is found by bracketing on r, at each r
    fitting the level L of {ℓ ≤ L} to P̲_A. It is 0.0 when P̲_A ≤ ½.
    """
    d, k = _check_dk(d, k)
    p, sigma = float(p_lower), float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise CertifyNetError(f"sigma must be > 0, got {sigma}")
    if not p > 0.5:
        return 0.0
    if p >= 1.0:
        raise CertifyNetError("a P lower bound of 1 gives an unbounded radius; pass a Clopper–Pearson bound")
    if k == 0:
        return float(np_radius(p, sigma))
    R, sp = _radial(d, k), sigma_prime(sigma, d, k)
    st = {"L": None}

    def h(r):
        marg, st["L"] = _np_margin(R, r / sp, p, _gauss_level(r / sigma, p) if st["L"] is None else st["L"])
        return marg

    hi = 1.01 * sigma * float(norm.ppf(p)) + 1e-9
    h_hi = h(hi)
    if h_hi > 0:
        return _search_up(h, hi, h_hi, hi, 1e3 * sigma)
    return _largest_certified(h, 0.0, p - 0.5, hi, h_hi)


# ----------------------------------------------------------------------------------------------------------
# DSRS, shared: step 1 and the box dual bound

def _step1(pl, pu, ql, qu, q_ideal, p_ideal_fn):
    """Step 1 of dsrs.md, using both ends of both intervals. Returns one of
    ('np', P̲)      : plain NP at P̲ (λ₂ = 0), when Q̲ ≤ q_ideal < Q̄;
    ('qnp', Q̲)     : the Q-NP set {p(x − x₀) ≤ K·q(x)} at Q̲ (λ₁ = 0), when its P-mass p_ideal ∈ [P̲, P̄];
    ('pq', p₁, q₁) : the corner (P̲, Q̄), (P̲, Q̲) or (P̄, Q̲) for the two-multiplier fit.
    q_ideal is the Q-mass of the NP set at P̲, and p_ideal_fn() gives p_ideal.
    For ('qnp') the reference certifies NP at p_ideal. The Q-NP value used here is the exact box minimum
    V(p_ideal, Q̲) = V_QNP(Q̲) ≥ V_NP(p_ideal), so it is never smaller and is just as rigorous.
    """
    if q_ideal >= qu:
        return "pq", pl, qu
    if q_ideal >= ql:
        return "np", pl
    p_ideal = p_ideal_fn()
    if p_ideal < pl:
        return "pq", pl, ql
    if p_ideal > pu:
        return "pq", pu, ql
    return "qnp", ql


def _box_dual(iv, lam1, lam2, masses, errors):
    """min over the box of λ₁p + λ₂q, minus Φ(λ), minus ½ and err. Φ(λ) = λ₁P(R) + λ₂Q(R) − P_x₀(R).

    masses = (P(R), Q(R), P_x₀(R)), and errors bounds their quadrature errors. By weak duality the first
    part is ≤ V(p, q) at every (p, q) in [P̲, P̄] × [Q̲, Q̄]. err = e_S + |λ₁|·e_P + |λ₂|·e_Q makes the
    check hold for the exact masses as well. A zero multiplier drops its term.
    """
    pl, pu, ql, qu = iv
    (mp, mq, s), (ep, eq, es) = masses, errors
    bound, err = s, es
    if lam1:
        bound += lam1 * ((pl if lam1 > 0 else pu) - mp)
        err += abs(lam1) * ep
    if lam2:
        bound += lam2 * ((ql if lam2 > 0 else qu) - mq)
        err += abs(lam2) * eq
    return bound - 0.5 - err


# ----------------------------------------------------------------------------------------------------------
# DSRS with truncated Q

def _trunc_margin(R, rt, iv, pT, beta, st):
    """Bound − ½ − err at radius r̃ = rt for Q = P restricted to t ≤ β (ν = 1/p_T).

    On each origin shell the worst-case set is {ℓ ≤ Λ} inside the ball (e^Λ = λ₁ + νλ₂) and {ℓ ≤ ln λ₁}
    outside it. So Λ is fitted to the Q-mass alone, then λ₁ to the P-mass that remains.
    """
    pl, pu, ql, qu = iv
    inner, outer = {"bounds": (0.0, beta)}, {"bounds": (beta, math.inf)}
    st["L1"], _ = _fit_level(R, rt, pl, st["L1"])
    q_ideal = float(R.integrate(_origin_eval(R, rt, _const(st["L1"])), **inner)[0]) / pT
    choice = _step1(pl, pu, ql, qu, q_ideal, lambda: ql * pT)    # the Q-NP set lies inside the ball
    if choice[0] == "np" or not 0.0 < choice[-1] < 1.0:          # q₁ = Q̄ = 1 only when the NP set fills Q
        return _np_margin(R, rt, pl, st["L1"])[0]
    p1, q1 = (None, choice[1]) if choice[0] == "qnp" else choice[1:]

    # inner level Λ fits the Q-mass: inner P-mass = q₁·p_T
    lam_in, m_in = _fit_level(R, rt, q1 * pT, st["Lin"], **inner)
    st["Lin"] = lam_in
    # outer level ln λ₁ fits the rest of the P-mass (λ₁ = 0 for the Q-NP set)
    target = -1.0 if p1 is None else p1 - m_in
    if target <= 0.0:
        l1 = -math.inf
    else:
        l1, _ = _fit_level(R, rt, target, st["Lout"], **outer)
        st["Lout"] = l1

    def masses(Rx):          # inner P-mass, outer P-mass, shifted mass
        m_o = float(Rx.integrate(_origin_eval(Rx, rt, _const(l1)), **outer)[0]) if l1 > -math.inf else 0.0
        return [float(Rx.integrate(_origin_eval(Rx, rt, _const(lam_in)), **inner)[0]), m_o,
                _trunc_shifted(Rx, rt, beta, lam_in, l1)]
    (m_i, m_o, s), (e_i, e_o, e_s) = _checked(masses, R)
    lam1 = 0.0 if l1 == -math.inf else math.exp(min(l1, 700.0))
    lam2 = (math.exp(min(lam_in, 700.0)) - lam1) * pT            # λ₂ = (e^Λ − λ₁)/ν
    return _box_dual(iv, lam1, lam2, (m_i + m_o, m_i / pT, s), (e_i + e_o, e_i / pT, e_s))


def _trunc_shifted(R, rt, beta, lam_in, l1):
    """P_x₀(R) = E_t[u₁ + u₂] on shifted shells.

    u₁ = I(½ + z(min(β, m_Λ))) covers the inside of the ball and u₂ = max(0, I(½ + z(m_λ₁)) − I(½ + z(β)))
    the outer ring, where m_c − t = Δ(t, c). Segments are cut where m_Λ = β and m_λ₁ = β (kinks), and around
    the step of the ball term.
    """
    def evaluate(t):
        zb = _z(t, rt, beta - t)
        zi = _z(t, rt, np.minimum(beta - t, _gap(t, lam_in, R.k)[0]))
        cap, u, zs = R.cdf(0.5 + zb), R.cdf(0.5 + zi), [zb, zi]
        if l1 > -math.inf:
            zo = _z(t, rt, _gap(t, l1, R.k)[0])
            u, zs = u + np.maximum(0.0, R.cdf(0.5 + zo) - cap), zs + [zo]
        return u[None], np.array(zs) * R.zscale
    cuts = [beta + float(_gap(beta, -lv, R.k)[0]) for lv in (lam_in, l1) if math.isfinite(lv)]
    return float(R.integrate(evaluate, cuts, [R.step_window(beta, rt)])[0])


# ----------------------------------------------------------------------------------------------------------
# DSRS with rescaled Q (same k, σ_Q = γσ, γ < 1)

def _signed_logsum(a1, s1, a2, s2):
    """ln(s₁e^a₁ + s₂e^a₂) with signs s ∈ {−1, 0, 1}; −∞ where the sum is ≤ 0."""
    m = np.maximum(np.where(s1 != 0, a1, -np.inf), np.where(s2 != 0, a2, -np.inf))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        v = s1 * np.exp(a1 - m) + s2 * np.exp(a2 - m)
        return np.where(v > 0, m + np.log(np.where(v > 0, v, 1.0)), -np.inf)


class _Rescaled:
    """Rescaled Q (σ_Q = γσ, same k, γ < 1), measured in P's radial units.

    Q's radial law is t = γ²·Gamma(n). On a shell q/p = w(t) = γ^(−2n)·e^(−b·t), with b = γ⁻² − 1 > 0.
    Multipliers are held as (λ₁, μ₂), with λ₂ = μ₂/w̄ and w̄ = w(t̄) at Q's mean shell t̄ = γ²n. So
    λ₂·w(t) = μ₂·ω(t), where ln ω(t) = −b(t − t̄) stays finite even where w itself would overflow
    (k = 0 and ImageNet's d). K(τ) = λ₁ + μ₂·ω(τ) is handled in log space throughout.
    """

    def __init__(self, R, gamma):
        self.R, self.gamma, self.g2 = R, gamma, gamma * gamma
        self._on = {R: self}
        self.b = 1.0 / self.g2 - 1.0
        self.tbar = self.g2 * R.n
        self.lnwbar = -2.0 * R.n * math.log(gamma) - self.b * self.tbar     # ≥ 0 for every γ < 1

    def on(self, R):
        """The same Q over another rule for the same law."""
        if R not in self._on:
            self._on[R] = _Rescaled(R, self.gamma)
        return self._on[R]

    def lnomega(self, t):
        return -self.b * (np.asarray(t, dtype=float) - self.tbar)

    def lam2(self, mu2):
        """λ₂ = μ₂/w̄. It may underflow to 0 harmlessly, since it then only multiplies terms of order 1."""
        return mu2 * math.exp(-self.lnwbar)

    def lnK(self, tau, lam1, mu2):
        a1 = math.log(abs(lam1)) if lam1 else 0.0
        a2 = (math.log(abs(mu2)) if mu2 else 0.0) + self.lnomega(tau)
        return _signed_logsum(a1, float(np.sign(lam1)), a2, float(np.sign(mu2)))

    def zero(self, lam1, mu2):
        """τ_z with K(τ_z) = 0, when λ₁ and μ₂ have opposite signs (else None): a log singularity of ln K."""
        if lam1 * mu2 >= 0:
            return None
        return self.tbar - math.log(-lam1 / mu2) / self.b

    def knee(self, lam1, mu2, scale=1.0):
        """Window (in rule units) around |λ₁| = |μ₂|·ω(t), where ln K bends.

        ln K has complex singularities at distance π/b from there. A segment of half-width 2π/b keeps GL
        convergence fast: 48 nodes reach 1e-15.
        """
        if not lam1 or not mu2:
            return None
        tk = self.tbar + math.log(abs(mu2 / lam1)) / self.b
        return (tk - 2.0 * math.pi / self.b) / scale, (tk + 2.0 * math.pi / self.b) / scale

    def masses(self, rt, lam1, mu2, deriv=False):
        """[P(R), Q(R)] for R = {ℓ ≤ ln K(t)}, and optionally the Jacobian in (λ₁, μ₂).

        The rules are log-graded at the zero of K.
        """
        tz = self.zero(lam1, mu2)

        def level(t):
            lk = self.lnK(t, lam1, mu2)
            return np.where(np.isfinite(lk), lk, -_LEVEL_CLIP)

        def dl1(t):                                                   # ∂L/∂λ₁ = 1/K
            lk = self.lnK(t, lam1, mu2)
            return np.where(np.isfinite(lk), np.exp(-np.where(np.isfinite(lk), lk, 0.0)), 0.0)

        def dl2(t):                                                   # ∂L/∂μ₂ = ω/K
            lk = self.lnK(t, lam1, mu2)
            with np.errstate(over="ignore"):
                return np.where(np.isfinite(lk), np.exp(self.lnomega(t) - np.where(np.isfinite(lk), lk, 0.0)), 0.0)

        ev = _origin_eval(self.R, rt, level, (dl1, dl2) if deriv else ())
        res = [self.R.integrate(ev, windows=(self.knee(lam1, mu2, sc),), graded=(None if tz is None else tz / sc,),
                                scale=sc) for sc in (1.0, self.g2)]
        masses = [float(r[0]) for r in res]
        return (masses, np.array([r[1:] for r in res])) if deriv else masses

    # --- shifted mass of R on shifted shells -------------------------------------------------------------
    def _h(self, t, dl, lam1, mu2):
        """h(δ) = G(t·e^δ) − (−k ln t − t) and h'(δ), with G(τ) = ln K(τ) − k ln τ − τ."""
        k = self.R.k
        tau = t * np.exp(dl)
        lk = self.lnK(tau, lam1, mu2)
        fin = np.isfinite(lk)
        with np.errstate(over="ignore", invalid="ignore"):
            val = lk - k * dl - t * np.expm1(dl)
            dlk = np.where(fin, -self.b * np.sign(mu2) * np.exp(
                (math.log(abs(mu2)) if mu2 else -np.inf) + self.lnomega(tau) - np.where(fin, lk, 0.0)), 0.0)
        return val, dlk * tau - k - tau

    def _root(self, t, lo, hi, x0, lam1, mu2, sign):
        """Vectorised safeguarded Newton for h = 0 on [lo, hi]. sign = +1: h(lo) ≥ 0 ≥ h(hi); −1: reversed."""
        x = np.where((x0 > lo) & (x0 < hi), x0, 0.5 * (lo + hi))
        for _ in range(200):
            v, dv = self._h(t, x, lam1, mu2)
            v, dv = sign * v, sign * dv
            pos = v > 0                      # the root lies above x
            lo, hi = np.where(pos, x, lo), np.where(pos, hi, x)
            with np.errstate(divide="ignore", invalid="ignore"):
                step = v / dv
            done = (np.abs(step) <= 1e-14 * (1.0 + np.abs(x))) | (hi - lo <= 1e-14 * (1.0 + np.abs(x)))
            xn = x - step
            xn = np.where(~np.isfinite(xn) | (xn <= lo) | (xn >= hi), 0.5 * (lo + hi), xn)
            x = np.where(done, x, xn)
            if np.all(done):
                break
        return x

    def _peak(self, tau0):
        """Peak of G on (max(τ₀, 0), ∞): the root of ψ, or the left end when ψ ≥ 0 there."""
        k, b = self.R.k, self.b
        if k == 0:
            return max(0.0, tau0 + math.log1p(b) / b)
        if tau0 <= 0:
            return 0.0

        def psi(s):                               # s = τ − τ₀ > 0, and E = e^(b·s)
            return (s + tau0 + k) * math.expm1(b * s) - b * (s + tau0), \
                (1.0 + b * (s + tau0 + k)) * math.exp(b * s) - 1.0 - b
        return tau0 + _solve_increasing(psi, 0.0, min(tau0, 1.0), ftol=1e-13 * (tau0 + 1.0))[0]

    def shifted(self, rt, lam1, mu2):
        """P_x₀(R): on the shifted shell t, the mass of {τ : G(τ) ≥ −k ln t − t}, τ = ‖x‖²/(2σ'²).

        G(τ) = ln K(τ) − k ln τ − τ is decreasing when μ₂ ≥ 0. It is unimodal when λ₁ > 0 > μ₂: the
        stationarity function ψ(τ) = (τ + k)(E − 1) − bτ, with E = λ₁/(|μ₂|ω) > 1, is increasing. So each
        shell holds one interval [τ_lo, τ_hi], and τ_lo = 0 when the peak is at the left end.
        """
        R, k = self.R, self.R.k
        if lam1 <= 0 and mu2 <= 0:
            return 0.0
        lo_d, hi_d = -80.0, 10.0             # beyond these, I(½ ± z) is saturated for every shell
        tau_pk, tau_left = 0.0, 0.0
        if lam1 > 0 > mu2:
            tau_left = max(self.zero(lam1, mu2), 0.0)
            tau_pk = self._peak(self.zero(lam1, mu2))
        if tau_pk > 0:
            g_pk = float(self.lnK(tau_pk, lam1, mu2)) - k * math.log(tau_pk) - tau_pk
        else:                                   # peak at τ = 0: +∞ for k > 0, ln K(0) for k = 0
            g_pk = math.inf if k > 0 else float(self.lnK(0.0, lam1, mu2))
        if g_pk == -math.inf:
            return 0.0

        def evaluate(t):
            nonempty = -k * np.log(t) - t <= g_pk
            d_pk = np.clip(np.log(tau_pk / t), lo_d, hi_d) if tau_pk > 0 else np.full_like(t, lo_d)
            # right end: h decreasing on [δ_pk, hi_d]; the constant-K gap at the shell is the first guess
            lk_t = self.lnK(t, lam1, mu2)
            with np.errstate(divide="ignore", invalid="ignore"):
                guess = np.log1p(_gap(t, np.where(np.isfinite(lk_t), lk_t, -_LEVEL_CLIP), k)[0] / t)
            guess = np.where(np.isfinite(guess), guess, d_pk)
            v_hi, _ = self._h(t, np.full_like(t, hi_d), lam1, mu2)
            d_hi = np.where(v_hi >= 0, hi_d, self._root(t, d_pk, np.full_like(t, hi_d), guess, lam1, mu2, 1.0))
            z_hi = _z(t, rt, t * np.expm1(d_hi))
            mass, zs = R.cdf(0.5 + z_hi), [z_hi]
            # left end, only where the region does not reach τ = 0
            v_lo, _ = self._h(t, np.full_like(t, lo_d), lam1, mu2)
            need_left = nonempty & (v_lo < 0) & (d_pk > lo_d)
            if np.any(need_left):
                d_l = np.clip(np.log(tau_left / t), lo_d, hi_d) if tau_left > 0 else np.full_like(t, lo_d)
                d_lo = self._root(t, d_l, d_pk, 0.5 * (d_l + d_pk), lam1, mu2, -1.0)
                z_lo = np.where(need_left, _z(t, rt, t * np.expm1(d_lo)), -np.inf)
                mass, zs = mass - R.cdf(0.5 + z_lo), zs + [np.where(need_left, z_lo, -1e3)]
            return np.where(nonempty, np.maximum(mass, 0.0), 0.0)[None], np.array(zs) * R.zscale

        cuts = []
        if math.isfinite(g_pk):                  # shells with −k ln t − t > G_peak hold nothing
            cuts.append(math.exp(_solve_increasing(lambda s: (math.exp(s) + k * s, math.exp(s) + k), -g_pk, 0.0)[0]))
        # boundaries that flatten out at the zero of K or at the peak make steps in t: segments around them
        wins = [R.step_window(ts, rt) for ts in (self.zero(lam1, mu2), tau_pk) if ts] + [self.knee(lam1, mu2)]
        return float(R.integrate(evaluate, cuts, wins, graded=(self.zero(lam1, mu2),))[0])


def _resc_margin(R, rt, iv, rs, st):
    """Bound − ½ − err at radius r̃ for the rescaled Q. On origin shells R = {ℓ ≤ ln(λ₁ + μ₂·ω(t))}."""
    pl, pu, ql, qu = iv
    st["L1"], _ = _fit_level(R, rt, pl, st["L1"])
    q_ideal = float(R.integrate(_origin_eval(R, rt, _const(st["L1"])), scale=rs.g2)[0])

    def p_ideal():           # Q-NP set {ℓ ≤ ln μ₂ + ln ω(t)} with Q-mass Q̲; st["Kq"] = (ln μ₂, its Q-mass)
        lmu, mq = _fit_level(R, rt, ql, st.get("Kq", (st["L1"], 0))[0], offset=rs.lnomega, scale=rs.g2)
        st["Kq"] = (lmu, mq)
        return float(R.integrate(_origin_eval(R, rt, lambda t: lmu + rs.lnomega(t)))[0])

    choice = _step1(pl, pu, ql, qu, q_ideal, p_ideal)
    if choice[0] == "np" or not 0.0 < choice[-1] < 1.0:          # q₁ = Q̄ = 1 only when the NP set fills Q
        return _np_margin(R, rt, pl, st["L1"])[0]
    if choice[0] == "qnp":
        lam1, mu2 = 0.0, math.exp(min(st["Kq"][0], 700.0))
    else:
        lam1, mu2 = _fit_two(rs, rt, choice[1], choice[2], st)
    vals, errs = _checked(lambda Rx: rs.on(Rx).masses(rt, lam1, mu2) + [rs.on(Rx).shifted(rt, lam1, mu2)], R)
    return _box_dual(iv, lam1, rs.lam2(mu2), vals, errs)


def _fit_two(rs, rt, p1, q1, st):
    """(λ₁, μ₂) with P(R) = p₁ and Q(R) = q₁, by damped Newton on the masses in units of e^L₁.

    L₁ is the NP level at P̲. The start is the previous radius's solution for the same corner, else the
    Q-NP set (λ₁ = 0) for corners at Q̲, else the NP set (μ₂ = 0). Returns the last accepted pair. Any
    pair gives a valid bound.
    """
    sc = math.exp(min(st["L1"], 700.0))
    key = (p1, q1)
    if st.get("two", (None,))[0] == key:
        x = st["two"][1] / sc
    elif "Kq" in st and q1 == st["iv"][2]:
        x = np.array([0.0, math.exp(min(st["Kq"][0], 700.0)) / sc])
    else:
        x = np.array([1.0, 0.0])
    target = np.array([p1, q1])

    def evaluate(v):
        m, jac = rs.masses(rt, v[0] * sc, v[1] * sc, deriv=True)
        return np.array(m) - target, jac * sc

    F, J = evaluate(x)
    for _ in range(60):
        nrm = float(np.max(np.abs(F)))
        if nrm <= 1e-14:
            break
        with np.errstate(all="ignore"):
            step = -np.linalg.solve(J, F) if abs(np.linalg.det(J)) > 0 else np.full(2, np.nan)
        if not np.all(np.isfinite(step)):
            step = -F / np.maximum(np.abs(np.diag(J)), 1e-12)
        frac = 1.0
        for _ in range(40):                      # backtrack until the residual decreases
            cand = x + frac * step
            Fc, Jc = evaluate(cand)
            if float(np.max(np.abs(Fc))) < nrm:
                break
            frac *= 0.5
        else:
            break
        x, F, J = cand, Fc, Jc
    st["two"] = (key, x * sc)
    return x[0] * sc, x[1] * sc


# ----------------------------------------------------------------------------------------------------------
# public DSRS entry points

def _check_interval(lo, hi, name):
    lo, hi = float(lo), float(hi)
    if not (0.0 <= lo <= hi <= 1.0):
        raise CertifyNetError(f"{name} interval must satisfy 0 <= lower <= upper <= 1, got [{lo}, {hi}]")
    return lo, hi


def dsrs_radius(p_lower, p_upper, q_lower, q_upper, sigma, d, k, q_mode, q_param):
    """DSRS certified radius: max(NP radius from P̲_A, largest r whose box bound exceeds ½).

    q_mode 'truncated': q_param = p_T ∈ (0, 1], Q = P restricted to ‖δ‖ ≤ T. q_mode 'rescaled':
    q_param = σ_Q ∈ (0, σ), Q from the same family and k. Step 1 picks the worst corner of the box
    [P̲, P̄] × [Q̲, Q̄] (dsrs.md), step 2 fits the multipliers, and the check is the dual bound of the
    module docstring. Radii are searched to 2e-5, and the certified (lower) end is returned.
    If no classifier can have P- and Q-masses in the box, the joint confidence event has failed, and the NP
    radius is returned. p_T = 1 means Q = P, which gives NP at max(P̲, Q̲).
    """
    d, k = _check_dk(d, k)
    sigma = float(sigma)
    pl, pu = _check_interval(p_lower, p_upper, "P")
    ql, qu = _check_interval(q_lower, q_upper, "Q")
    if not pl > 0.5:
        return 0.0
    r_np = generalized_np_radius(pl, sigma, d, k)
    R, sp = _radial(d, k), sigma_prime(sigma, d, k)
    iv = (pl, pu, ql, qu)
    st = {"L1": _gauss_level(r_np / sigma, pl), "Lin": 0.0, "Lout": 0.0, "iv": iv}
    if q_mode == "truncated":
        pT = float(q_param)
        beta = truncation_beta(pT, d, k)
        if pT >= 1.0:           # Q = P: both runs bound the same P_A, jointly at level α
            return generalized_np_radius(max(pl, ql), sigma, d, k) if ql <= pu and pl <= qu else r_np
        # inner P-mass is q·p_T and outer P-mass lies in [0, 1 − p_T]
        feasible = pu - ql * pT >= 0.0 and pl - qu * pT <= 1.0 - pT

        def h(r):
            return _trunc_margin(R, r / sp, iv, pT, beta, st)
    elif q_mode == "rescaled":
        sq = float(q_param)
        if not 0.0 < sq < sigma:
            raise CertifyNetError(f"rescaled Q needs 0 < sigma_Q < sigma, got sigma_Q={sq}, sigma={sigma}")
        rs = _Rescaled(R, sq / sigma)
        # Q-mass range of sets with P-mass p: balls {t ≤ F⁻¹(p)} give the most, shells {t ≥ F⁻¹(1 − p)} the least
        n, g2 = R.n, rs.g2
        feasible = gammainc(n, gammaincinv(n, pu) / g2) >= ql and gammaincc(n, gammainccinv(n, pl) / g2) <= qu

        def h(r):
            return _resc_margin(R, r / sp, iv, rs, st)
    else:
        raise CertifyNetError(f"q_mode must be 'truncated' or 'rescaled', got {q_mode!r}")
    if not feasible:            # no classifier has these masses: the confidence event failed, so use NP alone
        return r_np
    # start at the NP radius (at r = 0 the margin is P̲ − ½)
    h_lo = h(r_np) if r_np > 0 else pl - 0.5
    if h_lo <= 0:
        return r_np
    return max(r_np, _search_up(h, r_np, h_lo, 0.05 * sigma, 50.0 * sigma))


def dsrs_certify(count_p, n_p, count_q, n_q, sigma, d, k, q_mode, q_param, alpha=0.001):
    """Radius from raw counts of the true label. Intervals come from `dsrs_intervals` (α/2 per run).

    For q_mode 'truncated', q_param may be a number p_T, or 'x' / 'x+' to apply the heuristic to the P
    interval. Under 'x+', when P̄_A ≥ 1 − 1e-8 the second run must have sampled P again. Its counts are then
    pooled, count_p + count_q over n_p + n_q, and certified by plain NP with the one-sided bound at α.
    """
    pl, pu, ql, qu = dsrs_intervals(count_p, n_p, count_q, n_q, alpha)
    if q_mode == "truncated" and isinstance(q_param, str):
        if q_param == "x+" and pooled_np_fallback_needed(pu):
            pooled = float(cp_lower(count_p + count_q, n_p + n_q, alpha))
            return generalized_np_radius(pooled, sigma, d, k)
        q_param = truncation_percentile(pl, q_param)
    return dsrs_radius(pl, pu, ql, qu, sigma, d, k, q_mode, q_param)

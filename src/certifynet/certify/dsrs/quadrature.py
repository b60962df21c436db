"""Radial quadrature: expectations over the shells of P, and the shell geometry of a shifted ball.

Symbols as in `certifynet.certify.dsrs`: t = ‖δ‖²/(2σ'²) ~ Gamma(n), n = d/2 − k; the shift x₀ = r·e₁ and
r̃ = r/σ'; every squared norm is measured as τ = ‖·‖²/(2σ'²).

Shell geometry. On the shell ‖x‖² = 2σ'²t, the fraction of points with ‖x − x₀‖² ≥ 2σ'²u is I(½ − z).
On the shell ‖x − x₀‖² = 2σ'²t, the fraction with ‖x‖² ≤ 2σ'²u is I(½ + z). Here
z = (2(u − t) − r̃²)/(4·√(2t)·r̃), and I is the CDF of Beta((d−1)/2, (d−1)/2).
The log-likelihood ratio ℓ(x) = ln p(x − x₀) − ln p(x) is ≤ L on a shell exactly where u ≥ u_L, with
u_L + k·ln u_L = t + k·ln t − L. The closed form is the Lambert-W formula of the paper. Here it is solved by
Newton's method in ln(u/t), so that the small gap u − t keeps full relative precision even for ImageNet's k
(`_gap`).

Quadrature. Every mass is an expectation over the radial law of t, computed with fixed Gauss–Legendre
segments in ln t (`_Radial.integrate`), vectorised over shells. Segments are split at kinks and at log
singularities, around the sharp steps that small r̃ or large d produce, and wherever adjacent nodes are still
more than ½ standard deviation of I's argument apart. Fits use 48 nodes per segment. The masses that enter a
certificate are recomputed with 64 nodes, and twice their change from the 48-node values, at least 1e-12,
is taken as their error (e_P, e_Q, e_S; `_checked`). Against 192-node references the 64-node error stayed
below 0.7 of that estimate in every test for d ≥ 100, and below 1e-9 in absolute terms
(tests/test_dsrs_math.py). Smaller d, where I reaches 0 and 1 with power-law kinks, gets a 100× wider error.
Rounding matters in three places, and each is handled:
* betainc at Beta parameters up to 75 264 (absolute error < 1e-13, checked against mpmath; inside the floor);
* the gaps u − t (computed as t·expm1(y), never as a difference of two large numbers);
* overflow of q/p = γ^(−2n)·e^(−bt) for large n (kept in log space, `certifynet.certify.dsrs.rescaled`).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import betainc, betaln, gammainccinv, gammaincinv, roots_legendre

_NODES = 48          # Gauss–Legendre nodes per segment of a radial expectation (fits)
_NODES_FINE = 64     # nodes for the masses that enter a certificate; the 48-node values give their error
_REFINE = 5          # levels of refinement around unresolved transitions
_ZSTEP = 0.5         # largest move of a step argument between adjacent nodes, in standard deviations
_TAIL = 1e-15        # Gamma mass left out at each end of the range
_QUAD_FLOOR = 1e-12  # error floor of a certified mass: dropped tails (2e-15) plus betainc rounding (< 1e-13)
_LEVEL_CLIP = 1e6    # |log-level| beyond which a shell is saturated (I is exactly 0 or 1)


@functools.cache
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


def _checked(fn, R):
    """Masses fn(rule) from the fine rule, with errors max(floor, 2·|fine − coarse|) from the 48-node rule.

    Below d = 100, where I has power-law kinks at its ends, the factor is 200 and the floor is 1e-9.
    """
    fine, coarse = np.atleast_1d(fn(R.fine)), np.atleast_1d(fn(R))
    small = R.d < 100
    return fine, np.maximum(1e-9 if small else _QUAD_FLOOR, (200.0 if small else 2.0) * np.abs(fine - coarse))

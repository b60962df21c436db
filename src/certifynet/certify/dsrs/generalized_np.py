"""Neyman–Pearson for the generalized Gaussian P (k > 0): no closed form, so fit and bracket.

The worst-case set at P-mass P̲_A is R = {ℓ ≤ L}, ℓ(x) = ln p(x − x₀) − ln p(x): on each shell a ball in x
(`quadrature`). L is fitted so that P(R) = P̲_A, and r is certified when the dual bound
e^L·(P̲_A − P(R)) + P_x₀(R) − ½ exceeds the quadrature error (`duality._box_dual` with λ₂ = 0).
k = 0 is Cohen's σ·Φ⁻¹(P̲_A).
"""
from __future__ import annotations

import math

from scipy.stats import norm

from certifynet.certify.dsrs.duality import _box_dual
from certifynet.certify.dsrs.family import _check_dk, sigma_prime
from certifynet.certify.dsrs.quadrature import _ball_eval, _checked, _const, _origin_eval, _radial
from certifynet.certify.dsrs.solvers import _largest_certified, _search_up, _solve_increasing
from certifynet.certify.neyman_pearson import np_radius
from certifynet.errors import CertifyNetError, check_sigma


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
    p, sigma = float(p_lower), check_sigma(sigma)
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

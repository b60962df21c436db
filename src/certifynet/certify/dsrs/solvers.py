"""Scalar searches: a safeguarded Newton for increasing functions, and the search for the largest radius.

The largest certified r is found by bracketing a decreasing margin h(r) (bound − ½ − err), and the lower
end of the final bracket, where h > 0 was checked, is returned. This assumes, as the reference does, that
the check is monotone in r.
"""
from __future__ import annotations

import math

_RADIUS_XTOL = 2e-5  # final bracket width of every radius search (the spec asks for ≤ 1e-4)


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

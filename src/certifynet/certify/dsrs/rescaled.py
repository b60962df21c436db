"""DSRS with the rescaled Q: the same family and k with σ_Q = γσ, γ < 1 (`general-gaussian` in the reference).

Q's radial law, in P's units, is t = γ²·Gamma(n), and on a shell q/p = γ^(−2n)·e^(−b·t), b = γ⁻² − 1 > 0.
The worst-case set R = {ℓ ≤ ln(λ₁ + λ₂·q/p)} is fitted to both masses by Newton's method (`_fit_two`), and
the check is `duality._box_dual`. Everything that can overflow for large n is kept in log space.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import gammainc, gammaincc, gammainccinv, gammaincinv

from certifynet.certify.dsrs.duality import _box_dual, _step1
from certifynet.certify.dsrs.generalized_np import _fit_level, _np_margin
from certifynet.certify.dsrs.quadrature import _LEVEL_CLIP, _checked, _const, _gap, _origin_eval, _z
from certifynet.certify.dsrs.solvers import _solve_increasing


def _resc_feasible(rs, iv):
    """Whether some classifier has P-mass in [P̲, P̄] and Q-mass in [Q̲, Q̄].

    Among sets with P-mass p, balls {t ≤ F⁻¹(p)} have the most Q-mass and shells {t ≥ F⁻¹(1 − p)} the least.
    """
    pl, pu, ql, qu = iv
    n, g2 = rs.R.n, rs.g2
    return gammainc(n, gammaincinv(n, pu) / g2) >= ql and gammaincc(n, gammainccinv(n, pl) / g2) <= qu


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

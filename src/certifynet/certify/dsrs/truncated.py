"""DSRS with the truncated Q: P restricted to the ball t ≤ β, q = ν·p·1[t ≤ β], ν = 1/p_T.

Inside the ball the worst-case set is {ℓ ≤ Λ} with e^Λ = λ₁ + νλ₂; outside it is {ℓ ≤ ln λ₁}. So Λ is
fitted to the Q-mass alone, then λ₁ to the P-mass that remains, and the check is `duality._box_dual`.
"""
from __future__ import annotations

import math

import numpy as np

from certifynet.certify.dsrs.duality import _box_dual, _step1
from certifynet.certify.dsrs.generalized_np import _fit_level, _np_margin
from certifynet.certify.dsrs.quadrature import _checked, _const, _gap, _origin_eval, _z


def _trunc_feasible(iv, pT):
    """Whether some classifier has P-mass in [P̲, P̄] and Q-mass in [Q̲, Q̄].

    Its inner P-mass is q·p_T, and its outer P-mass lies in [0, 1 − p_T].
    """
    pl, pu, ql, qu = iv
    return pu - ql * pT >= 0.0 and pl - qu * pT <= 1.0 - pT


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

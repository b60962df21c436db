"""The DSRS certificate by weak duality: step 1's corner of the confidence box, and the dual bound.

For any multipliers λ = (λ₁, λ₂) and any f with P-mass p and Q-mass q,
    ∫f·p(·−x₀) ≥ λ₁p + λ₂q − Φ(λ),    Φ(λ) = ∫(λ₁p + λ₂q − p(·−x₀))₊ = λ₁P(R) + λ₂Q(R) − P_x₀(R),
with R = {p(x − x₀) ≤ λ₁p(x) + λ₂q(x)}. Equality holds for the worst-case f = 1_R when λ fits both masses.
The check takes the minimum of the right side over the confidence box [P̲, P̄] × [Q̲, Q̄], a corner picked
by the signs of λ. It certifies r when that minimum exceeds ½ by more than err = e_S + |λ₁|·e_P + |λ₂|·e_Q,
the quadrature error bound of the three masses. The multiplier fits, and step 1's choice of corner, only
affect tightness: a poor fit lowers the bound and can never certify more.
"""
from __future__ import annotations


def _step1(pl, pu, ql, qu, q_ideal, p_ideal_fn):
    """Step 1 of the DSRS dual (Li et al. 2022): choose (p₁, q₁) from both ends of both intervals.
    Returns one of
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

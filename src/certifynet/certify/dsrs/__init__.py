"""Double-sampling randomized smoothing (DSRS; Li, Zhang, Xie & Li, ICML 2022): certification math.

numpy/scipy only. The symbols follow the paper and the reference implementation:

* P is the generalized Gaussian p(δ) ∝ ‖δ‖^(−2k)·exp(−‖δ‖²/(2σ'²)) with σ' = σ·√(d/(d−2k)), 0 ≤ 2k < d
  (`check_k`). Its radial variable t = ‖δ‖²/(2σ'²) follows Gamma(n), n = d/2 − k, and its direction is
  uniform. k = 0 is N(0, σ²I).
* Q is either P truncated to the ball ‖δ‖ ≤ T (``'truncated'``: q = ν·p·1[t ≤ β], β = F⁻¹_Gamma(n)(p_T),
  ν = 1/p_T), or the same family with its own σ_Q < σ (``'rescaled'``).
* The shift is x₀ = r·e₁, and r̃ = r/σ'. Every squared norm is measured as τ = ‖·‖²/(2σ'²).

A radius r is certified when the weak-duality bound on P_x₀(f), minimised over the confidence box
[P̲, P̄] × [Q̲, Q̄], exceeds ½ by more than the quadrature error of the masses it uses. The modules, in the
order of the argument:

* `family`: σ', the valid k, the radial law, the truncation ball (β, T) and the heuristics x / x+ for p_T;
* `quadrature`: the shell geometry and the Gauss–Legendre expectations over t, with their error bounds;
* `solvers`: the monotone root and largest-radius searches;
* `duality`: step 1's corner of the box and the dual bound;
* `generalized_np`: the NP radius of P (no closed form for k > 0);
* `truncated`, `rescaled`: the two Q's.

Entry points: `dsrs_intervals` (counts → box), `dsrs_radius` (box → radius), `dsrs_certify` (both).
"""
from __future__ import annotations

from certifynet.certify.dsrs.family import (
    _check_dk,
    _check_percentile,
    check_k,
    pooled_np_alpha,
    pooled_np_fallback_needed,
    radial_quantile,
    sigma_prime,
    truncation_beta,
    truncation_percentile,
    truncation_radius,
)
from certifynet.certify.dsrs.generalized_np import _gauss_level, generalized_np_radius
from certifynet.certify.dsrs.quadrature import _radial
from certifynet.certify.dsrs.rescaled import _resc_feasible, _resc_margin, _Rescaled
from certifynet.certify.dsrs.solvers import _search_up
from certifynet.certify.dsrs.truncated import _trunc_feasible, _trunc_margin
from certifynet.certify.neyman_pearson import cp_interval, cp_lower
from certifynet.errors import CertifyNetError, check_sigma

__all__ = ["generalized_np_radius", "dsrs_radius", "dsrs_intervals", "dsrs_certify", "check_k", "sigma_prime",
           "truncation_percentile", "pooled_np_fallback_needed", "pooled_np_alpha", "radial_quantile",
           "truncation_beta", "truncation_radius"]


def dsrs_intervals(count_p, n_p, count_q, n_q, alpha):
    """Two-sided Clopper–Pearson intervals (P̲, P̄, Q̲, Q̄), each run at total level α/2 (tails α/4).

    The union bound gives a joint failure probability of α. This convention reproduces the reference vectors:
    α = 0.001, 0.0005 per run.
    """
    pl, pu = cp_interval(count_p, n_p, alpha / 2.0)
    ql, qu = cp_interval(count_q, n_q, alpha / 2.0)
    return float(pl), float(pu), float(ql), float(qu)


def _check_interval(lo, hi, name):
    lo, hi = float(lo), float(hi)
    if not (0.0 <= lo <= hi <= 1.0):
        raise CertifyNetError(f"{name} interval must satisfy 0 <= lower <= upper <= 1, got [{lo}, {hi}]")
    return lo, hi


def _check_q(q_mode, q_param, sigma):
    """q_param as a float: p_T ∈ (0, 1] for 'truncated', σ_Q ∈ (0, σ) for 'rescaled'."""
    if q_mode == "truncated":
        return _check_percentile(q_param)
    if q_mode == "rescaled":
        sq = float(q_param)
        if not 0.0 < sq < sigma:
            raise CertifyNetError(f"rescaled Q needs 0 < sigma_Q < sigma, got sigma_Q={sq}, sigma={sigma}")
        return sq
    raise CertifyNetError(f"q_mode must be 'truncated' or 'rescaled', got {q_mode!r}")


def dsrs_radius(p_lower, p_upper, q_lower, q_upper, sigma, d, k, q_mode, q_param):
    """DSRS certified radius: max(NP radius from P̲_A, largest r whose box bound exceeds ½).

    q_mode 'truncated': q_param = p_T ∈ (0, 1], Q = P restricted to ‖δ‖ ≤ T. q_mode 'rescaled':
    q_param = σ_Q ∈ (0, σ), Q from the same family and k. Step 1 picks the worst corner of the box
    [P̲, P̄] × [Q̲, Q̄] (`duality._step1`, after Li et al. 2022), step 2 fits the multipliers, and the
    check is the dual bound of `duality`. Radii are searched to 2e-5, and the certified (lower) end is returned.
    If no classifier can have P- and Q-masses in the box, the joint confidence event has failed, and the NP
    radius is returned. p_T = 1 means Q = P, which gives NP at max(P̲, Q̲).
    """
    d, k = _check_dk(d, k)
    sigma = check_sigma(sigma)
    pl, pu = _check_interval(p_lower, p_upper, "P")
    ql, qu = _check_interval(q_lower, q_upper, "Q")
    q_param = _check_q(q_mode, q_param, sigma)
    if not pl > 0.5:
        return 0.0
    r_np = generalized_np_radius(pl, sigma, d, k)
    iv = (pl, pu, ql, qu)
    if q_mode == "truncated" and q_param >= 1.0:     # Q = P: both runs bound the same P_A, jointly at level α
        return generalized_np_radius(max(pl, ql), sigma, d, k) if ql <= pu and pl <= qu else r_np
    R, sp = _radial(d, k), sigma_prime(sigma, d, k)
    st = {"L1": _gauss_level(r_np / sigma, pl), "Lin": 0.0, "Lout": 0.0, "iv": iv}
    if q_mode == "truncated":
        beta = truncation_beta(q_param, d, k)
        feasible = _trunc_feasible(iv, q_param)

        def h(r):
            return _trunc_margin(R, r / sp, iv, q_param, beta, st)
    else:
        rs = _Rescaled(R, q_param / sigma)
        feasible = _resc_feasible(rs, iv)

        def h(r):
            return _resc_margin(R, r / sp, iv, rs, st)
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
    pooled, count_p + count_q over n_p + n_q, and certified by plain NP with the one-sided bound at α/4
    (`pooled_np_alpha`: the branch is chosen from the same P counts, and α/4 keeps x+ at α overall).
    """
    pl, pu, ql, qu = dsrs_intervals(count_p, n_p, count_q, n_q, alpha)
    if q_mode == "truncated" and isinstance(q_param, str):
        if q_param == "x+" and pooled_np_fallback_needed(pu):
            pooled = float(cp_lower(count_p + count_q, n_p + n_q, pooled_np_alpha(alpha)))
            return generalized_np_radius(pooled, sigma, d, k)
        q_param = truncation_percentile(pl, q_param)
    return dsrs_radius(pl, pu, ql, qu, sigma, d, k, q_mode, q_param)

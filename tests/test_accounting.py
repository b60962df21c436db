"""The α accounting around the certificates (issue #25, part 1), each checked exactly or statistically with a
control that must fail:

* DSRS heuristic x+: the probability that the statement a reported certificate rests on is false, summed
  exactly over the binomial laws of the counts (worst-case p_A and q_A), is ≤ α with the pooled bound at α/4
  and above α with the reference's α (and with α/2).
* The audit's binomial test counts every audited row: a valid but selective certifier is flagged at most at
  the stated level, while counting only the certified rows flags it in most audits; a certifier that
  inflates its radii is still flagged.
* Floating point: `cp_lower` / `cp_upper` lie on the conservative side of the exact Clopper–Pearson bounds,
  and the confidence sequence's ends are truly outside it, checked against a 40–50-digit reference
  (mpmath, installed with torch's sympy); the error models behind their margins are measured on grids.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy.special import betainc, betaincc, betaln, gammaln
from scipy.stats import beta, binom, binomtest, norm

from certifynet.attack import AuditSummary, audited_rows
from certifynet.certify.dsrs import pooled_np_alpha, pooled_np_fallback_needed
from certifynet.certify.from_counts import certify_row
from certifynet.certify.neyman_pearson import cp_interval, cp_lower, cp_upper, tail_tolerance
from certifynet.certify.sequential import confidence_sequence, mixture_margin
from certifynet.errors import CertifyNetError

mp = pytest.importorskip("mpmath")
EPS = np.finfo(float).eps


# ---------------------------------------------------------------- DSRS heuristic x+
@functools.cache
def _dsrs_interval(n: int, alpha: float):
    """(P̲, P̄) of every count 0..n: the DSRS interval of one run, two-sided at α/2 (tails α/4)."""
    return cp_interval(np.arange(n + 1), n, alpha / 2)


@functools.cache
def _pooled_lower(n: int, a_pool: float):
    return cp_lower(np.arange(2 * n + 1), 2 * n, a_pool)


@functools.cache
def _pooled_branch(n: int, alpha: float) -> np.ndarray:
    """Counts c for which the sampler re-samples P (`sampling.inputs` `_choose_q`: P̄ of cp_interval(c, n, α/2))."""
    return np.array([pooled_np_fallback_needed(u) for u in _dsrs_interval(n, alpha)[1]])


def x_plus_failure(p: float, n: int, alpha: float, a_pool: float, q_miss: float) -> tuple[float, float, float]:
    """Exact probability, at p_A = p, of each way the statement behind an x+ certificate is false:
    (pooled branch and pooled p̲ > p, DSRS branch and p ∉ [P̲, P̄], DSRS branch and p ∈ [P̲, P̄] and
    q_A ∉ [Q̲, Q̄]), the last with P(q_A ∉ [Q̲, Q̄]) = q_miss (the Q draws are independent of the P count)."""
    c = np.arange(n + 1)
    pmf = binom.pmf(c, n, p)
    lo, hi = _dsrs_interval(n, alpha)
    pooled = _pooled_branch(n, alpha)
    first = int(np.searchsorted(_pooled_lower(n, a_pool), p, side="right"))  # first pooled count with p̲ > p
    g = binom.sf(first - c[pooled] - 1, n, p)  # second P run c' ~ Bin(n, p): c + c' ≥ first
    p_miss = (lo > p) | (hi < p)
    dsrs = ~pooled
    return (float(np.sum(pmf[pooled] * g)), float(np.sum(pmf[dsrs & p_miss])),
            float(np.sum(pmf[dsrs & ~p_miss])) * q_miss)


def q_interval_miss(n: int, alpha: float) -> tuple[float, float]:
    """(largest P(q ∉ [Q̲, Q̄]) over the q just outside each interval end, that q): the Q run's worst case."""
    lo, hi = _dsrs_interval(n, alpha)
    qs = np.concatenate([np.nextafter(lo[1:], 0.0), np.nextafter(hi[:-1], 1.0)])
    first_low = np.searchsorted(lo, qs, side="right")     # counts ≥ this have Q̲ > q
    last_high = np.searchsorted(hi, qs, side="left") - 1  # counts ≤ this have Q̄ < q
    miss = binom.sf(first_low - 1, n, qs) + np.where(last_high >= 0, binom.cdf(last_high, n, qs), 0.0)
    i = int(np.argmax(miss))
    return float(miss[i]), float(qs[i])


def _worst_p_candidates(n: int, alpha: float, a_pool: float) -> np.ndarray:
    """p_A just below each pooled bound near 2n hits and just outside each P interval end near n hits (where
    the three parts jump), and a log grid of 1 − p_A."""
    lo, hi = _dsrs_interval(n, alpha)
    top = _pooled_lower(n, a_pool)[-80:]
    return np.concatenate([np.nextafter(top, 0.0), np.nextafter(lo[-120:], 0.0), np.nextafter(hi[-120:], 1.0),
                           1.0 - np.geomspace(1e-7, 0.5, 300)])


def _worst_total(n, alpha, a_pool, q_miss):
    return max((sum(x_plus_failure(p, n, alpha, a_pool, q_miss)), p) for p in _worst_p_candidates(n, alpha, a_pool))


def test_x_plus_pools_at_the_level_the_exact_computation_uses():
    """What the sums below model is what the code does: a q_kind 'P' row is NP on (c + c')/(2n) at
    pooled_np_alpha(α) = α/4, and the sampler re-samples P exactly for the counts of `_pooled_branch`."""
    n, alpha = 5000, 0.001
    assert pooled_np_alpha(alpha) == alpha / 4
    meta = {"sigma": 0.5, "d": 784, "k": 0, "q_mode": "truncated", "q_param": None}
    row = {"idx": "0", "label": "1", "pred": "1", "n": str(n), "count": str(n), "n0": "0", "n_q": str(n),
           "count_q": str(n - 3), "q_kind": "P", "q_param": "nan"}
    out = certify_row(row, meta, "dsrs", alpha)
    assert out["pA_lower"] == cp_lower(2 * n - 3, 2 * n, alpha / 4) == _pooled_lower(n, alpha / 4)[2 * n - 3]
    assert out["radius"] == pytest.approx(0.5 * norm.ppf(out["pA_lower"]), rel=1e-11)
    assert np.flatnonzero(_pooled_branch(n, alpha)).tolist() == [n]  # at n = 5,000 only n hits re-sample P


def test_x_plus_is_sound_at_alpha_and_the_reference_rule_is_not():
    """n = n_Q = 5,000, α = 0.001. New rule (pooled at α/4): the worst case over p_A, with the Q interval's
    miss bounded by its level α/2, is ≤ α. Reference rule (pooled at α): a concrete p_A and q_A where the
    failure probability is > 1.5α (pooled branch ≈ 1.00α, P interval ≈ 0.07α, Q interval ≈ 0.48α); pooling
    at α/2 is not enough either (> 1.1α)."""
    n, alpha = 5000, 0.001
    worst, p = _worst_total(n, alpha, pooled_np_alpha(alpha), alpha / 2)
    assert worst <= alpha, (worst / alpha, p)
    assert worst > 0.9 * alpha  # the bound is nearly attained: the computation is not vacuous
    q_miss, q = q_interval_miss(n, alpha)
    assert 0.49 * alpha < q_miss <= alpha / 2, q_miss / alpha  # a concrete q_A close to the Q interval's level
    old, p_old = _worst_total(n, alpha, alpha, q_miss)
    parts = x_plus_failure(p_old, n, alpha, alpha, q_miss)
    print(f"x+ worst case / α: reference {old / alpha:.4f} at p_A = {p_old!r} (parts "
          f"{[round(x / alpha, 4) for x in parts]}, q_A = {q!r}); α/4: {worst / alpha:.4f} at p_A = {p!r}")
    assert old > 1.5 * alpha and parts[0] > 0.99 * alpha and parts[2] > 0.45 * alpha
    half, _ = _worst_total(n, alpha, alpha / 2, q_miss)
    assert half > 1.1 * alpha


def test_x_plus_sound_when_more_than_one_count_pools():
    """At n = 30,000 the pooled branch is {n − 1, n} (P̄(n − 1) ≥ 1 − 1e-8): the nested-sets argument of
    `pooled_np_alpha` still holds, and the exact worst case stays ≤ α."""
    n, alpha = 30_000, 0.001
    assert np.flatnonzero(_pooled_branch(n, alpha)).tolist() == [n - 1, n]
    worst, p = _worst_total(n, alpha, pooled_np_alpha(alpha), alpha / 2)
    assert 0.9 * alpha < worst <= alpha, (worst / alpha, p)


# ---------------------------------------------------------------- the audit's n
LEVEL, ALPHA_C, ALPHA_P = 0.01, 0.01, 0.001


def _simulated_audits(rng, p_true, draws: int, scale: float, audits: int):
    """Verdicts of `audits` simulated audits of a log with one row per entry of p_true, (old rule: n = certified
    rows, new rule: n = every row). The certifier is Cohen's: p̲ = CP_lower(count of `draws`, α_c), certified
    when p̲ > ½, radius scale·σΦ⁻¹(p̲) (scale 1: valid at α_c). The attack is perfect: a row is a violation when
    its certificate is false (scale·Φ⁻¹(p̲) > Φ⁻¹(p_A)) or else, as PREDICT may err, with probability α_p."""
    lower = cp_lower(np.arange(draws + 1), draws, ALPHA_C)[rng.binomial(draws, p_true, (audits, p_true.size))]
    certified = lower > 0.5
    false = scale * norm.ppf(np.maximum(lower, 0.5)) > norm.ppf(p_true)
    violation = certified & (false | (rng.random(certified.shape) < ALPHA_P))
    flags = {}
    for rule, n in (("old", certified.sum(axis=1)), ("new", np.full(audits, p_true.size))):
        flags[rule] = np.array([AuditSummary(int(a), int(v), ALPHA_C, ALPHA_P, LEVEL, rows=int(m)).flagged
                                for a, v, m in zip(certified.sum(axis=1), violation.sum(axis=1), n)])
    return flags


def test_audit_counts_every_row_so_a_valid_selective_certifier_passes():
    """490 inputs with p_A just below ½ (the certifier is valid: each certifies with probability ≤ α_c, but every
    certificate it issues there is false) and 10 easy ones. Counting only certified rows flags it in most
    audits; counting every row flags it at most at the level. Binomial tests over 2,000 simulated audits."""
    rng = np.random.default_rng(2025)
    p_true = np.concatenate([np.full(490, 0.5 * (1 - 1e-9)), np.full(10, 0.999)])
    flags = _simulated_audits(rng, p_true, draws=100, scale=1.0, audits=2000)
    old, new = int(flags["old"].sum()), int(flags["new"].sum())
    print(f"valid selective certifier flagged: n = certified rows {old}/2000, n = every row {new}/2000")
    assert binomtest(old, 2000, LEVEL, alternative="greater").pvalue < 1e-12 and old > 0.5 * 2000
    assert binomtest(new, 2000, LEVEL, alternative="greater").pvalue > 1e-3


def test_audit_counting_every_row_still_flags_inflated_radii():
    """Control: the same certifier with radii × 1.5 on inputs with p_A ∈ [0.7, 0.99] and 1,000 draws each. Many
    of its certificates are false, and the new rule flags it in (nearly) every audit."""
    rng = np.random.default_rng(7)
    p_true = rng.uniform(0.7, 0.99, 200)
    flags = _simulated_audits(rng, p_true, draws=1000, scale=1.5, audits=500)
    assert flags["new"].mean() > 0.99, flags["new"].mean()


def test_audit_summary_counts_rows_and_checks_them():
    s = AuditSummary(attacked=3, violations=2, alpha_cert=0.01, alpha_predict=0.001, level=0.01, rows=500)
    assert s.p_value == pytest.approx(binom.sf(1, 500, 0.011)) and not s.flagged and s.rate == 2 / 500
    assert s.as_dict()["rows"] == 500 and "500 rows" in s.report()
    assert AuditSummary(3, 2, 0.01, 0.001, 0.01, rows=3).flagged  # the old rule's n: flagged
    with pytest.raises(CertifyNetError, match="violations <= attacked <= rows"):
        AuditSummary(attacked=5, violations=1, alpha_cert=0.01, alpha_predict=0.001, level=0.01, rows=4)
    rows = [{"idx": str(i), "predict": "-1", "radius": "0"} for i in range(10)]
    assert audited_rows(rows) == 10 and audited_rows(rows, 2, 5) == 3


# ---------------------------------------------------------------- floating point: Clopper–Pearson
mp.mp.dps = 40


def _log_pmf(n: int, j: int, p):
    return mp.loggamma(n + 1) - mp.loggamma(j + 1) - mp.loggamma(n - j + 1) + j * mp.log(p) + (n - j) * mp.log1p(-p)


def tail_at_least(n: int, c: int, p: float):
    """P(Bin(n, p) ≥ c) = I_p(c, n−c+1) to ~35 digits: terms from c upward until they no longer matter."""
    p = mp.mpf(p)
    if c <= 0 or p == 1:
        return mp.mpf(1)
    if p == 0:
        return mp.mpf(0)
    term = mp.exp(_log_pmf(n, c, p))
    total, ratio = term, p / (1 - p)
    for j in range(c, n):
        term *= ratio * (n - j) / (j + 1)
        total += term
        if term < total * mp.mpf(10) ** -36 and ratio * (n - j - 1) / (j + 2) < 1:
            break
    return total


def tail_at_most(n: int, c: int, p: float):
    """P(Bin(n, p) ≤ c) = 1 − I_p(c+1, n−c) to ~35 digits."""
    return tail_at_least(n, n - c, 1 - mp.mpf(p)) if c < n else mp.mpf(1)


CP_GRID = [(n, c, a) for n in (10, 100, 1000, 10_000, 100_000)
           for c in sorted({1, 2, 5, n // 3, n // 2, n - n // 10, n - 3, n - 1, n}) if 1 <= c <= n
           for a in (0.4, 0.05, 1e-3, 1e-6, 1e-10)]
ISSUE_CASES = [(10, 5, 0.05), (10, 7, 0.05), (10, 3, 0.05), (100, 10, 1e-6), (1000, 3, 1e-6)]


def _old_cp(c, n, a):
    """The bounds before this change: Beta.ppf nudged 2 ulps outward, the upper one via ppf(1 − α)."""
    lo = np.nextafter(np.nextafter(beta.ppf(a, c, n - c + 1), 0.0), 0.0)
    hi = np.nextafter(np.nextafter(beta.ppf(1 - a, c + 1, n - c), 1.0), 1.0) if c < n else 1.0
    return float(lo), float(hi)


def test_old_clopper_pearson_bounds_were_on_the_wrong_side():
    """Control for the reference check below: the previous nudges left the bounds on the wrong side of the exact
    ones in the issue's cases (cp_lower(5, 10, 0.05) ~9 ulps high, cp_upper at α = 1e-6 thousands of ulps low)."""
    wrong = []
    for n, c, a in ISSUE_CASES:
        lo, hi = _old_cp(c, n, a)
        wrong += [tail_at_least(n, c, lo) > a, tail_at_most(n, c, hi) > a]
    assert wrong[0] and wrong[2] and wrong[5] and wrong[7] and wrong[9], wrong


@pytest.mark.parametrize("n, c, a", ISSUE_CASES + CP_GRID)
def test_clopper_pearson_bounds_are_on_the_conservative_side(n, c, a):
    """P(Bin(n, p̲) ≥ c) ≤ α and P(Bin(n, p̄) ≤ c) ≤ α in 40-digit arithmetic (so p̲ ≤ exact ≤ p̄), and neither
    bound is further from the exact one than a relative 8·τ(n) (the margin costs nothing visible)."""
    lo, hi = cp_lower(c, n, a), cp_upper(c, n, a)
    slack = 8 * float(tail_tolerance(n)) + 1e-12
    assert tail_at_least(n, c, lo) <= a
    assert tail_at_least(n, c, lo * (1 + slack)) > a
    if c < n:
        assert tail_at_most(n, c, hi) <= a
        assert tail_at_most(n, c, hi * (1 - slack)) > a


@pytest.mark.parametrize("n", [10, 100, 1000, 10_000, 100_000, 1_000_000])
def test_incomplete_beta_error_is_well_inside_the_margin(n):
    """The margin τ(n) of `cp_lower` / `cp_upper` assumes scipy's incomplete Beta is accurate to τ(n) relative;
    measured at the bounds of a grid of counts and levels it is ≥ 20× inside (about 100× in practice)."""
    worst = 0.0
    for c in sorted({1, 5, n // 2, n - n // 10, n - 1}):
        for a in (0.05, 1e-3, 1e-6, 1e-10):
            lo, hi = float(beta.ppf(a, c, n - c + 1)), float(beta.isf(a, c + 1, n - c))
            worst = max(worst, float(abs(mp.mpf(betainc(c, n - c + 1, lo)) / tail_at_least(n, c, lo) - 1)),
                        float(abs(mp.mpf(betaincc(c + 1, n - c, hi)) / tail_at_most(n, c, hi) - 1)))
    assert worst <= float(tail_tolerance(n)) / 20, (worst / EPS, float(tail_tolerance(n)) / EPS)


def test_clopper_pearson_vectorised_and_edge_values():
    c = np.arange(11)
    lo, hi = cp_lower(c, 10, 0.05), cp_upper(c, 10, 0.05)
    assert lo.shape == hi.shape == (11,) and lo[0] == 0.0 and hi[-1] == 1.0
    assert np.all(np.diff(lo) > 0) and np.all(np.diff(hi) > 0) and np.all(lo < hi)
    assert [cp_lower(int(k), 10, 0.05) for k in c] == lo.tolist()
    assert math.isnan(cp_lower(11, 10, 0.05)) and cp_upper(11, 10, 0.05) == 1.0  # as before: c ≥ n gives 1


# ---------------------------------------------------------------- floating point: the confidence sequence
A_PRIOR, B_PRIOR = 1.0, 0.1


def _exact_log_mixture(s: int, t: int):
    lb = lambda x, y: mp.loggamma(x) + mp.loggamma(y) - mp.loggamma(x + y)  # noqa: E731
    return lb(A_PRIOR + s, B_PRIOR + t - s) - lb(mp.mpf(A_PRIOR), mp.mpf(B_PRIOR))


CS_GRID = [(t, s) for t in (10**3, 10**5, 10**6, 10**7, 10**8)
           for s in sorted({t, t - 1, t - 3, t - 10, t - t // 1000, t // 2, t // 10, 1})]


def test_confidence_sequence_ends_are_truly_outside_it():
    """Each returned end p of C_t = {p : M_t(p) < 1/α} has M_t(p) ≥ 1/α in 50-digit arithmetic. Before the
    margin covered betaln's error (1e-12 fixed), 17 of these 258 ends were not (log M short by up to 3e-10)."""
    mp.mp.dps = 50
    short = []
    for t, s in CS_GRID:
        for alpha in (0.05, 1e-3, 1e-6):
            lo, up = confidence_sequence(s, t, alpha)
            for end in [lo] * (s > 0) + [up] * (s < t):
                p = mp.mpf(end)
                log_m = _exact_log_mixture(s, t) - s * mp.log(p) - (t - s) * mp.log1p(-p)
                if log_m < mp.log(1 / mp.mpf(alpha)):
                    short.append((t, s, alpha, end))
    mp.mp.dps = 40
    assert not short, short[:5]


def test_betaln_error_is_well_inside_the_sequence_margin():
    """`mixture_margin` assumes the error of betaln(a+S, b+t−S) − betaln(a, b) is O(ε·Λ); measured for t up to
    10⁹ it is ≥ 20× inside the margin (the fixed 1e-12 it replaces is below the error from t ≈ 10⁴ on)."""
    mp.mp.dps = 50
    worst, beyond_old = 0.0, 0
    for t in (10, 10**3, 10**5, 10**7, 10**9):
        for s in sorted({0, 1, t // 2, t - 1, t}):
            got = float(betaln(A_PRIOR + s, B_PRIOR + t - s) - betaln(A_PRIOR, B_PRIOR))
            err = abs(float(mp.mpf(got) - _exact_log_mixture(s, t)))
            worst = max(worst, err / float(mixture_margin(s, t)))
            beyond_old += err > 1e-12 * (1 + abs(got))
    mp.mp.dps = 40
    assert worst <= 1 / 20, worst
    assert beyond_old >= 3  # the control: the old margin did not cover it
    assert float(mixture_margin(10**7, 10**7)) < 1e-4  # and the new one costs nothing visible


def test_sequence_margin_scale():
    lam = abs(gammaln(1.0 + 10**5)) + abs(gammaln(0.1)) + abs(gammaln(1.1 + 10**5)) + abs(betaln(1.0, 0.1)) + 1
    mix = betaln(1.0 + 10**5, 0.1) - betaln(1.0, 0.1)
    assert mixture_margin(10**5, 10**5) == pytest.approx(1e-12 * (1 + abs(mix)) + 64 * EPS * lam, rel=1e-12)

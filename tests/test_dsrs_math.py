"""DSRS certification math: reference vectors, NP limits, quadrature error bounds, and statistical soundness."""
import math

import numpy as np
import pytest
from scipy.special import betaincinv, gammaincinv, lambertw
from scipy.stats import binom, norm

from certifynet.certify.dsrs import (
    check_k,
    dsrs_certify,
    dsrs_intervals,
    dsrs_radius,
    generalized_np_radius,
    pooled_np_fallback_needed,
    radial_quantile,
    sigma_prime,
    truncation_beta,
    truncation_percentile,
    truncation_radius,
)
from certifynet.certify.dsrs import quadrature as quad
from certifynet.certify.dsrs.generalized_np import _gauss_level
from certifynet.certify.dsrs.rescaled import _resc_margin, _Rescaled
from certifynet.certify.dsrs.truncated import _trunc_shifted
from certifynet.certify.neyman_pearson import cp_lower
from certifynet.errors import CertifyNetError

from helpers import reference_rows

SETTINGS = [(784, 380), (3072, 1530), (150528, 75260)]


def _rows():
    return reference_rows("dsrs_vectors.csv")


def _f(row, key):
    return float(row[key])


def _mode(row):
    """(q_mode, q_param) of a vector row; truncated rows recompute p_T from P̲ with heuristic x."""
    if row["q_mode"] == "th":
        return "truncated", truncation_percentile(_f(row, "pA_lower"))
    return "rescaled", _f(row, "q_param")


def _dsrs(row):
    mode, qp = _mode(row)
    return dsrs_radius(_f(row, "pA_lower"), _f(row, "pA_upper"), _f(row, "qA_lower"), _f(row, "qA_upper"),
                       _f(row, "sigma"), int(row["d"]), int(row["k"]), mode, qp)


@pytest.fixture(scope="module")
def dsrs_values():
    return {row["id"]: (row, _dsrs(row)) for row in _rows()}


# ------------------------------------------------------------------------------------------- reference vectors

def test_np_radius_vectors():
    for row in _rows():
        r = generalized_np_radius(_f(row, "pA_lower"), _f(row, "sigma"), int(row["d"]), int(row["k"]))
        assert abs(r - _f(row, "np_radius")) <= 1e-4, row["id"]
        assert r <= _f(row, "std_gauss_np_radius")


def test_heuristic_and_intervals_vectors():
    for row in _rows():
        d, k, sigma = int(row["d"]), int(row["k"]), _f(row, "sigma")
        if row["q_mode"] == "th":                      # the reference does not clamp (0.4538 < ½ occurs)
            pt = truncation_percentile(_f(row, "pA_lower"))
            assert pt == pytest.approx(_f(row, "T_percentile"), abs=1e-6)
            assert truncation_radius(pt, sigma, d, k) == pytest.approx(_f(row, "T_radius"), rel=1e-6)
        if row["nP"]:                                  # synthetic rows: α = 0.001 in all, 0.0005 per run
            got = dsrs_intervals(int(row["nP"]), 50000, int(row["nQ"]), 50000, 0.001)
            want = [_f(row, key) for key in ("pA_lower", "pA_upper", "qA_lower", "qA_upper")]
            assert np.allclose(got, want, rtol=0, atol=1e-9), row["id"]


def test_dsrs_radius_vectors(dsrs_values):
    for rid, (row, r) in dsrs_values.items():
        grid, fail = _f(row, "dsrs_radius_grid"), _f(row, "grid_first_fail")
        assert grid <= r < fail, rid                   # never below the grid; never what the reference refuted
        assert r >= generalized_np_radius(_f(row, "pA_lower"), _f(row, "sigma"), int(row["d"]), int(row["k"]))
        if row["dsrs_radius_refined"]:
            refined, unit = _f(row, "dsrs_radius_refined"), _f(row, "grid_unit")
            # The refinement is a 4-step bisection of a grid cell: its check boundary lies in [refined, refined +
            # unit/16). The truncated rows land inside it. On S3 (rescaled) we certify 2.8e-4 beyond it: that
            # check is verified independently below (test_s3_check_by_brute_force).
            tol = 0.003 if row["q_mode"] == "th" else unit / 16 + 5e-4
            assert refined - 1e-4 <= r <= refined + tol, (rid, r, refined)
        else:                                          # G1, G3: inside the grid cell above the grid value
            assert r - grid < _f(row, "grid_unit")


def test_s3_check_by_brute_force():
    """Where we certify beyond the reference (S3, r = 0.646875), verify the three masses on a (t, v₁) grid.

    The region {p(x − x₀) ≤ λ₁p(x) + λ₂q(x)} is tested pointwise from the densities, with no shell formula.
    """
    d, k, sigma, r = 3072, 1530, 0.5, 0.646875
    iv = (0.8952526387039557, 0.9046123932155232, 0.9568615625408672, 0.9629829777540189)
    R, sp = quad._radial(d, k), sigma_prime(sigma, d, k)
    rs = _Rescaled(R, 0.8)
    st = {"L1": _gauss_level(r / sigma, iv[0]), "Lin": 0.0, "Lout": 0.0, "iv": iv}
    margin = _resc_margin(R, r / sp, iv, rs, st)
    assert margin > 1e-4
    lam1, mu2 = st["two"][1]
    n, h, rt, m = d / 2 - k, (d - 1) / 2, r / sp, 1500
    t = gammaincinv(n, (np.arange(m) + 0.5) / m)[:, None]
    v = (2 * betaincinv(h, h, (np.arange(m) + 0.5) / m) - 1)[None, :]

    def inside(tx, ts):       # x at ‖x‖² = 2σ'²tx and ‖x − x₀‖² = 2σ'²ts
        lhs = -k * np.log(ts) - ts
        return lhs <= np.log(lam1 + mu2 * np.exp(rs.lnomega(tx))) - k * np.log(tx) - tx

    rho = np.sqrt(2 * t)
    p_mass = inside(t + 0 * v, (rho ** 2 + rt ** 2 - 2 * rho * rt * v) / 2).mean()
    tq, rq = 0.64 * t, np.sqrt(2 * 0.64 * t)
    q_mass = inside(tq + 0 * v, (rq ** 2 + rt ** 2 - 2 * rq * rt * v) / 2).mean()
    s_mass = inside((rho ** 2 + rt ** 2 + 2 * rho * rt * v) / 2, t + 0 * v).mean()
    bound = s_mass + lam1 * (iv[0] - p_mass) + rs.lam2(mu2) * (iv[2] - q_mass)
    assert abs(p_mass - iv[0]) < 2e-5 and abs(q_mass - iv[2]) < 2e-5
    assert bound > 0.5 + 1e-4


# ------------------------------------------------------------------------------------------- NP and limits

def test_k0_is_gaussian_formula():
    for p in (0.6, 0.9, 0.999, 1 - 1e-7):
        for d in (2, 784, 150528):
            assert generalized_np_radius(p, 0.5, d, 0) == pytest.approx(0.5 * norm.ppf(p), rel=1e-11)


def test_np_trivial_and_errors():
    assert generalized_np_radius(0.5, 0.5, 784, 380) == 0.0
    assert generalized_np_radius(0.3, 0.5, 784, 380) == 0.0
    assert dsrs_radius(0.5, 0.6, 0.9, 0.95, 0.5, 784, 380, "truncated", 0.6) == 0.0
    with pytest.raises(CertifyNetError):
        generalized_np_radius(0.9, 0.5, 784, 392)           # k ≥ d/2
    with pytest.raises(CertifyNetError):
        dsrs_radius(0.9, 0.95, 0.9, 0.95, 0.5, 784, 380, "gaussian", 0.4)
    with pytest.raises(CertifyNetError):
        dsrs_radius(0.9, 0.95, 0.9, 0.95, 0.5, 784, 380, "rescaled", 0.6)   # σ_Q ≥ σ
    with pytest.raises(CertifyNetError):
        dsrs_radius(0.95, 0.9, 0.9, 0.95, 0.5, 784, 380, "truncated", 0.6)  # empty interval


def test_generalized_np_matches_gaussian_in_the_limit_and_below_it():
    # small k changes little; the generalized NP radius never exceeds the Gaussian one at the same σ
    g = 0.5 * norm.ppf(0.99)
    assert generalized_np_radius(0.99, 0.5, 3072, 1) == pytest.approx(g, abs=2e-4)
    for d, k in SETTINGS:
        assert generalized_np_radius(0.99, 0.5, d, k) < g


@pytest.mark.parametrize("d,k", SETTINGS + [(784, 0), (150528, 0)])
def test_dsrs_never_below_np_and_never_nan(d, k):
    rng = np.random.default_rng(d + k)
    for _ in range(3):
        pl = rng.uniform(0.7, 0.999)
        pu = min(1.0, pl + rng.uniform(0.0, 0.01))
        qt = min(0.9999, 1 - (1 - pl) * rng.uniform(0.2, 0.8))
        r_np = generalized_np_radius(pl, 0.5, d, k)
        for mode, qp in (("truncated", truncation_percentile(pl)), ("rescaled", 0.4)):
            r = dsrs_radius(pl, pu, qt - 0.002, min(1.0, qt + 0.002), 0.5, d, k, mode, qp)
            assert math.isfinite(r) and r >= r_np


def test_edge_intervals():
    args = (0.5, 3072, 1530)
    r_np = generalized_np_radius(0.9, *args)
    # Q interval touching 1 or 0, P upper bound 1
    for mode, qp in (("truncated", 0.6), ("rescaled", 0.4)):
        assert dsrs_radius(0.9, 1.0, 0.995, 1.0, *args, mode, qp) >= r_np
        assert dsrs_radius(0.9, 0.95, 0.0, 1.0, *args, mode, qp) == pytest.approx(r_np)  # Q says nothing
    # jointly impossible intervals (inner P-mass ≤ 0.01·0.6, outer ≤ 0.4): back to NP
    assert dsrs_radius(0.9, 1.0, 0.0, 0.01, *args, "truncated", 0.6) == r_np
    assert dsrs_radius(0.9, 1.0, 0.0, 0.01, *args, "rescaled", 0.4) == r_np
    # p_T = 1: Q = P, so the certificate is NP at max(P̲, Q̲)
    assert dsrs_radius(0.9, 0.91, 0.905, 0.92, *args, "truncated", 1.0) == generalized_np_radius(0.905, *args)


# ------------------------------------------------------------------------------------------- helpers

def test_truncation_percentile_options():
    assert truncation_percentile(0.4) == 0.5
    p = 1 - math.exp(-5)                       # −ln(1 − p) = 5 → 0.6
    assert truncation_percentile(p) == pytest.approx(0.6)
    assert truncation_percentile(0.9) == pytest.approx(0.08 * (-math.log(0.1) - 5) + 0.6)
    assert truncation_percentile(0.9, clamp=True) == 0.5
    assert truncation_percentile(1 - 1e-12, clamp=True) == 0.99
    assert 0 < truncation_percentile(1 - 1e-12) < 1
    with pytest.raises(CertifyNetError):
        truncation_percentile(0.9, heuristic="y")


def test_pooled_fallback_threshold():
    assert pooled_np_fallback_needed(1.0) and pooled_np_fallback_needed(1 - 1e-8)
    assert not pooled_np_fallback_needed(1 - 2e-8)


def test_dsrs_certify_from_counts():
    d, k = 3072, 1530
    pl, pu, ql, qu = dsrs_intervals(45000, 50000, 49500, 50000, 0.001)
    pt = truncation_percentile(pl)
    want = dsrs_radius(pl, pu, ql, qu, 0.5, d, k, "truncated", pt)
    assert dsrs_certify(45000, 50000, 49500, 50000, 0.5, d, k, "truncated", "x") == want
    # x+: every P draw correct → the Q run sampled P; pool 2N draws at α/4 (tests/test_accounting.py: at α the
    # heuristic is not sound at α overall)
    pooled = dsrs_certify(50000, 50000, 49999, 50000, 0.5, d, k, "truncated", "x+")
    assert pooled == generalized_np_radius(cp_lower(99999, 100000, 0.001 / 4), 0.5, d, k)
    assert pooled < generalized_np_radius(cp_lower(99999, 100000, 0.001), 0.5, d, k)


def test_radial_helpers():
    d, k, sigma = 3072, 1530, 0.5
    assert sigma_prime(sigma, d, k) == pytest.approx(8.0)
    beta = truncation_beta(0.6, d, k)
    t = radial_quantile(np.random.default_rng(0).uniform(0, 0.6, 10000), d, k)
    assert t.max() <= beta and abs(np.mean(t <= radial_quantile(0.3, d, k)) - 0.5) < 0.02
    assert truncation_beta(1.0, d, k) == math.inf
    # E‖δ‖² = dσ² for every k
    n = d / 2 - k
    assert 2 * sigma_prime(sigma, d, k) ** 2 * n == pytest.approx(d * sigma ** 2)


@pytest.mark.parametrize("d, k_max", [(784, 391), (785, 392), (3072, 1535), (150528, 75263), (3, 1), (2, 0), (1, 0)])
def test_check_k_range_is_2k_below_d(d, k_max):
    """The density ∝ ‖δ‖^(−2k)·e^(−‖δ‖²/2σ'²) is normalisable iff d − 2k > 0: k ∈ [0, ⌈d/2⌉ − 1]."""
    assert check_k(d, 0) == 0 and check_k(d, k_max) == k_max and check_k(d, float(k_max)) == k_max
    assert math.isfinite(sigma_prime(0.5, d, k_max)) and sigma_prime(0.5, d, 0) == 0.5
    for bad in (k_max + 1, -1):
        with pytest.raises(CertifyNetError) as e:
            check_k(d, bad)
        assert str(e.value).startswith("k must be in [0, ") and f"got {bad}" in str(e.value)
        assert e.value.render(cli=True).startswith("--k must be in [0, ")
        with pytest.raises(CertifyNetError):
            sigma_prime(0.5, d, bad)
    with pytest.raises(CertifyNetError, match="integer"):
        check_k(d, 0.5)


def test_check_k_names_the_argument_and_the_bound():
    with pytest.raises(CertifyNetError) as e:
        check_k(784, 392)
    assert str(e.value) == ("k must be in [0, d/2 - 1] = [0, 391] for input dimension d=784 "
                            "(the density needs d - 2k > 0), got 392")
    with pytest.raises(CertifyNetError) as e:
        check_k(785, 393, name="q_k")
    assert e.value.render(cli=True).startswith("--q-k must be in [0, (d-1)/2] = [0, 392]")
    with pytest.raises(CertifyNetError):
        generalized_np_radius(0.9, 0.5, 1, 0)                 # DSRS's shell geometry needs d ≥ 2


def test_odd_d_largest_k_certifies():
    """d odd, k = (d−1)/2: the radial law is Gamma(½), still a valid P; its NP radius is finite and positive."""
    r = generalized_np_radius(0.99, 0.5, 101, 50)
    assert 0.0 < r < 10.0


def test_gap_matches_lambert_w():
    t = np.array([0.3, 4.0, 12.0, 300.0])
    for k in (1, 380, 75260):
        for c in (-30.0, -1.0, 0.0, 0.5, 20.0):
            gap, _ = quad._gap(t, c, k)
            u = k * np.real(lambertw(np.exp(t / k + np.log(t / k) + c / k)))
            assert np.allclose(gap, u - t, rtol=1e-9, atol=1e-12 * t)


# ------------------------------------------------------------------------------------------- quadrature error

@pytest.mark.parametrize("d,k", SETTINGS)
def test_quadrature_error_estimates_cover_reference(d, k):
    """Certified masses (64 nodes) vs a 192-node reference: the error is below the estimate 2|I64 − I48|."""
    rng = np.random.default_rng(7)
    coarse, fine, ref = quad._Radial(d, k, 48), quad._Radial(d, k, 64), quad._Radial(d, k, 192)
    sp = math.sqrt(d / (d - 2 * k))
    for _ in range(3):
        rr = math.exp(rng.uniform(math.log(0.02), math.log(5)))
        rt = rr / sp
        lev = _gauss_level(rr, rng.uniform(0.6, 0.9999)) + rng.normal()
        beta = truncation_beta(rng.uniform(0.3, 0.95), d, k)
        lam1, mu2 = math.exp(lev) * rng.uniform(0.5, 2), math.exp(lev) * rng.uniform(-0.9, 0.9)
        # the loop's values are bound as defaults: each lambda is used within its own iteration
        fns = [lambda R, rt=rt, lev=lev: R.integrate(quad._origin_eval(R, rt, quad._const(lev)))[0],
               lambda R, rt=rt, lev=lev: R.integrate(quad._ball_eval(R, rt, lev))[0],
               lambda R, rt=rt, lev=lev, beta=beta: R.integrate(quad._origin_eval(R, rt, quad._const(lev)),
                                                                bounds=(0, beta))[0],
               lambda R, rt=rt, lev=lev, beta=beta: _trunc_shifted(R, rt, beta, lev + 1.0, lev - 1.0),
               lambda R, rt=rt, lam1=lam1, mu2=mu2: _Rescaled(R, 0.8).masses(rt, lam1, mu2),
               lambda R, rt=rt, lam1=lam1, mu2=mu2: _Rescaled(R, 0.8).shifted(rt, lam1, mu2)]
        for fn in fns:
            a, b, c = (np.atleast_1d(fn(R)) for R in (coarse, fine, ref))
            est = np.maximum(quad._QUAD_FLOOR, 2 * np.abs(b - a))
            assert np.all(np.abs(b - c) <= est), (d, k, np.abs(b - c), est)


# ------------------------------------------------------------------------------------------- soundness

def _linear_trial(rng, delta, n, alpha, mode, d=784, k=380, sigma=0.5):
    """Certified radius for a linear classifier at distance δ from its boundary (true robust radius δ).

    f(x + e) is correct iff e₁ > −δ; e₁ = ‖e‖·u with u the first coordinate of a uniform direction,
    u = 2·Beta((d−1)/2, (d−1)/2) − 1, and ‖e‖ drawn from P or Q radially.
    """
    sp, shape, h = sigma_prime(sigma, d, k), d / 2 - k, (d - 1) / 2

    def hits(t, scale):
        u = 2.0 * rng.beta(h, h, size=n) - 1.0
        return int(np.count_nonzero(scale * sp * np.sqrt(2.0 * t) * u > -delta))

    count_p = hits(rng.gamma(shape, size=n), 1.0)
    if mode == "truncated":                   # p_T from the P run, then t ~ Gamma | t ≤ β by inverse CDF
        q_param = truncation_percentile(dsrs_intervals(count_p, n, 0, n, alpha)[0])
        count_q = hits(radial_quantile(rng.uniform(0.0, q_param, size=n), d, k), 1.0)
    else:
        q_param = 0.8 * sigma
        count_q = hits(rng.gamma(shape, size=n), 0.8)
    return dsrs_certify(count_p, n, count_q, n, sigma, d, k, mode, q_param, alpha)


def _soundness(trials, seed):
    """Fraction of certified radii above the true radius δ must be ≤ α up to a 1e-3 binomial test.

    δ = 0.5 (P_A ≈ 0.85) is where DSRS with exact masses certifies 0.498 (truncated) and 0.499 (rescaled),
    so an unsound certificate shows up: certifying from point estimates exceeds δ in ~45% of trials.
    """
    alpha, delta, n = 0.05, 0.5, 2000
    rng = np.random.default_rng(seed)
    for mode in ("truncated", "rescaled"):
        radii = np.array([_linear_trial(rng, delta, n, alpha, mode) for _ in range(trials)])
        violations = int(np.sum(radii > delta))
        assert violations <= binom.ppf(1 - 1e-3, trials, alpha), (mode, violations, trials)
        assert np.median(radii) > 0.85 * delta        # non-trivial radii, close to the truth


def test_soundness_linear_classifier():
    _soundness(100, seed=2024)


@pytest.mark.slow
def test_soundness_linear_classifier_long():
    _soundness(1000, seed=99)

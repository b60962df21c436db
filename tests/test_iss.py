"""ISS (input-specific sample sizes): n* vectors, planner conservativeness, soundness, efficiency, ISS-DSRS."""
import math

import numpy as np
import pytest
from scipy.stats import norm

from certifynet.certify import iss
from certifynet.certify.iss import IssPlanner, expected_radius, iss_certify, iss_dsrs_budget, iss_sample_size
from certifynet.certify.neyman_pearson import certify_from_counts, cp_interval, cp_lower, np_radius
from certifynet.errors import CertifyNetError

from helpers import cohen_cifar10_population, reference_rows


def _rows():
    return reference_rows("iss_nstar_vectors.csv")


def test_nstar_vectors_exact():
    rows = _rows()
    assert len(rows) >= 40
    for row in rows:
        kw = dict(sigma=float(row["sigma"]), alpha=float(row["alpha"]), decline=float(row["decline"]),
                  mode=row["loss_type"])
        p, n_max = float(row["pA_hat"]), int(row["N_max"])
        assert iss_sample_size(p, n_max, 1, **kw) == int(row["n_star_exact"]), row
        assert iss_sample_size(p, n_max, 200, **kw) == int(row["n_star_batch200"]), row


def test_expected_radius_basics_and_monotone():
    # p = 1: Beta(n, 1) quantile is α^{1/n}; R(N, 1) = σΦ⁻¹(α^{1/N}) = 3.81σ at N = 100k.
    assert expected_radius(100_000, 1.0, 0.5, 0.001) == pytest.approx(0.5 * norm.ppf(0.001 ** 1e-5), rel=1e-9)
    assert expected_radius(1000, 0.5, 1.0, 0.001) == 0.0
    # Monotone in n (bisection is exact) and in p (cell bounds are valid).
    n = np.concatenate([np.arange(1, 3000), np.arange(3000, 100_001, 97)])
    for p in np.concatenate([np.linspace(0.5, 1.0, 26), [0.999, 0.9999, 0.99999]]):
        r = expected_radius(n, p, 1.0, 0.001)
        assert np.all(np.diff(r) >= 0.0), p
    ps = np.linspace(0.5, 1.0, 2001)
    for nn in (1, 200, 5000, 100_000):
        assert np.all(np.diff(expected_radius(nn, ps, 1.0, 0.001)) >= 0.0)


def test_relative_rule_is_u_shaped():
    ps = np.linspace(0.6, 1.0, 161)
    ns = np.array([iss_sample_size(p, 100_000, 200, 0.5, 0.001, 0.05, "relative") for p in ps])
    i = int(np.argmin(ns))
    assert 0.9 <= ps[i] <= 0.97  # minimum near p ≈ 0.95
    assert np.all(np.diff(ns[:i + 1]) <= 0) and np.all(np.diff(ns[i:]) >= 0)
    assert ns[0] > 3 * ns[i] and ns[-1] > 3 * ns[i]  # genuinely not monotone
    # σ-invariance of the relative rule; the absolute rule depends on σ only via ε/σ.
    assert iss_sample_size(ps[80], 100_000, 200, 1.0, 0.001, 0.05, "relative") == ns[80]
    assert (iss_sample_size(0.9, 100_000, 200, 0.25, 0.001, 0.025, "absolute")
            == iss_sample_size(0.9, 100_000, 200, 1.0, 0.001, 0.1, "absolute"))


@pytest.mark.parametrize("mode,decline", [("relative", 0.05), ("absolute", 0.05), ("absolute", 0.01)])
def test_planner_max_over_interval_is_conservative_and_tight(mode, decline):
    n_max, b, sigma, alpha, n0 = 100_000, 200, 0.5, 0.001, 2000
    planner = IssPlanner(n_max, b, sigma, alpha, decline, mode, n0)
    for k0 in (0, 1000, 1030, 1100, 1400, 1700, 1900, 1960, 1990, 1998, 1999, 2000):
        p_l, p_u = planner.pilot_interval(k0)
        ps = np.concatenate([np.linspace(p_l, p_u, 300), [p_l, p_u]])
        exact = iss._smallest_size(ps, iss._target(expected_radius(n_max, ps, sigma, alpha), decline, mode),
                                   iss._size_grid(n_max, b), sigma, alpha)
        got = planner.sample_size(k0)
        assert got >= exact.max(), (k0, got, exact.max())
        assert got <= 1.05 * exact.max() + 2 * b, (k0, got, exact.max())  # overshoot ≈ one cell


def test_planner_interval_matches_statsmodels_and_table_is_cached():
    sm = pytest.importorskip("statsmodels.stats.proportion")
    planner = IssPlanner(100_000, 200, 0.5, 0.001, 0.05, "absolute", 500)
    k0 = np.arange(501)
    lo, hi = sm.proportion_confint(k0, 500, alpha=0.001, method="beta")
    assert np.allclose(planner.p_low, np.nan_to_num(lo, nan=0.0), atol=1e-12)
    assert np.allclose(planner.p_up, np.nan_to_num(hi, nan=1.0), atol=1e-12)
    # Same ε/σ → the same (cached) table, whatever n0; relative tables ignore σ.
    other = IssPlanner(100_000, 200, 1.0, 0.001, 0.1, "absolute", 2000)
    assert other.grid is planner.grid and other.cell_bound is planner.cell_bound
    rel = [IssPlanner(100_000, 200, s, 0.001, 0.05, "relative", 100) for s in (0.25, 1.0)]
    assert rel[0].grid is rel[1].grid


def test_no_nan_anywhere():
    for mode, decline in (("absolute", 0.05), ("relative", 0.05)):
        for n0 in (0, 1, 10, 100, 2000):
            planner = IssPlanner(100_000, 200, 0.5, 0.001, decline, mode, n0)
            sizes = np.array([planner.sample_size(k) for k in range(n0 + 1)])
            assert sizes.dtype.kind == "i" and np.all((sizes >= 0) & (sizes <= 100_000))
            assert np.all(np.isfinite(planner.p_low)) and np.all(np.isfinite(planner.p_up))
    # σ = 0.5, absolute ε = 0.05, n0 = 2000: n_ISS = 1400 < n0 (the reference's NaN case).
    planner = IssPlanner(100_000, 200, 0.5, 0.001, 0.05, "absolute", 2000)
    assert 0 < planner.sample_size(1300) < 2000
    for n_iss in (0, 1, 200, 1400):
        for count in range(0, n_iss + 1, max(1, n_iss // 50)):
            abstain, p_low, radius = iss_certify(count, n_iss, 0.5, 0.001)
            assert math.isfinite(p_low) and math.isfinite(radius) and radius >= 0.0
            assert (radius == 0.0) if abstain else radius > 0.0
    assert iss_certify(0, 0, 0.5, 0.001) == (True, 0.0, 0.0)
    assert iss_certify(1400, 1400, 0.5, 0.001) == certify_from_counts(1400, 1400, 0.5, 0.001)
    for bad in ((1401, 1400), (1, 0), (-1, 10)):
        with pytest.raises(CertifyNetError):
            iss_certify(*bad, 0.5, 0.001)
    with pytest.raises(CertifyNetError):
        IssPlanner(100_000, 200, 0.5, 0.001, 1.0, "relative", 10)
    with pytest.raises(CertifyNetError):
        iss_sample_size(0.9, 100_000, 200, 0.5, 0.001, 0.05, "bogus")


def _simulate_iss_np(delta, sigma, alpha, n0, n_max, batch, decline, mode, m, rng):
    """ISS-NP on a linear binary classifier f(x) = sign(w·x + c) at distance δ from its hyperplane.

    Under x + N(0, σ²I) (any d), w·noise ~ N(0, σ²‖w‖²), so each draw is correct with p_A = Φ(δ/σ),
    independently: counts are Binomial. The true robust radius of the smoothed classifier is δ.
    Pilot of n0 draws picks ĉ_A and n_ISS; the certificate uses n_ISS FRESH draws.
    Returns the fraction of false certificates (radius > δ for the true class, or any radius for
    the wrong class), the radii and the sample sizes.
    """
    p = norm.cdf(delta / sigma)
    planner = IssPlanner(n_max, batch, sigma, alpha, decline, mode, n0)
    k0 = rng.binomial(n0, p, m)
    top_is_true = 2 * k0 >= n0
    k_top = np.where(top_is_true, k0, n0 - k0)
    n_iss = np.array([planner.sample_size(k) for k in range(n0 + 1)])[k_top]
    count = rng.binomial(n_iss, np.where(top_is_true, p, 1.0 - p))
    radius = np.where(n_iss > 0, np_radius(cp_lower(count, np.maximum(n_iss, 1), alpha), sigma), 0.0)
    false = np.where(top_is_true, radius > delta, radius > 0.0)
    return false.mean(), radius, n_iss


def test_linear_classifier_counts_are_binomial():
    """The Binomial model above, checked on an actual linear classifier in d = 128."""
    rng = np.random.default_rng(3)
    d, sigma, delta, n = 128, 0.5, 0.3, 20_000
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    x = rng.normal(size=d)
    c = delta - w @ x  # w·x + c = δ with ‖w‖ = 1: x is at distance δ from the hyperplane
    hits = ((x + sigma * rng.normal(size=(n, d))) @ w + c > 0).mean()
    p = norm.cdf(delta / sigma)
    assert abs(hits - p) < 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("delta,n0,n_max,batch,decline,mode", [
    (0.30, 2000, 100_000, 200, 0.05, "absolute"),  # n_ISS = 600 < n0 for every input
    (0.64, 100, 10_000, 100, 0.05, "absolute"),
    (0.075, 2000, 10_000, 100, 0.20, "relative"),  # steep n*(p): pilot re-use would fail here
])
def test_iss_np_soundness_on_linear_classifier(delta, n0, n_max, batch, decline, mode):
    alpha, sigma, m = 0.05, 0.5, 100_000
    rng = np.random.default_rng(12345)
    rate, radius, n_iss = _simulate_iss_np(delta, sigma, alpha, n0, n_max, batch, decline, mode, m, rng)
    assert rate <= alpha + 3.0 * math.sqrt(alpha * (1 - alpha) / m), rate
    assert np.all(np.isfinite(radius)) and np.median(radius) > 0.7 * delta  # radii close to δ: the test has bite


def test_sample_efficiency_simulation():
    """σ=0.5, absolute ε=0.05, N=100k, n0=2000, b=200, α=0.001 (the published ISS script)."""
    sigma, alpha, n_max, n0, m = 0.5, 0.001, 100_000, 2000, 4000
    rng = np.random.default_rng(7)
    p_top, correct = cohen_cifar10_population(m, rng)

    planner = IssPlanner(n_max, 200, sigma, alpha, 0.05, "absolute", n0)
    n_iss = np.array([planner.sample_size(k) for k in range(n0 + 1)])[rng.binomial(n0, p_top)]
    count = rng.binomial(n_iss, p_top)
    r_iss = np.where(n_iss > 0, np_radius(cp_lower(count, np.maximum(n_iss, 1), alpha), sigma), 0.0)
    r_full = np_radius(cp_lower(rng.binomial(n_max, p_top), n_max, alpha), sigma)
    speedup = n_max / np.mean(n0 + n_iss)
    acr_loss = np.mean(r_full * correct) - np.mean(r_iss * correct)
    print(f"ISS speed-up {speedup:.2f}x, ACR loss {acr_loss:.4f}, mean cost {np.mean(n0 + n_iss):.0f}")
    assert speedup >= 3.0
    assert 0.0 <= acr_loss <= 0.05


def test_expected_sample_size_and_headroom():
    """E[n_ISS] matches a Monte-Carlo mean; the oracle n*(p) never costs more than the pilot rule."""
    planner = IssPlanner(100_000, 500, 0.5, 0.001, 0.05, "absolute", 1000)
    rng = np.random.default_rng(3)
    p = np.array([0.6, 0.95, 0.999, 1.0])
    exact = planner.expected_sample_size(p)
    sizes = np.array([planner.sample_size(k) for k in range(1001)])
    mc = np.array([sizes[rng.binomial(1000, v, 20_000)].mean() for v in p])
    assert np.allclose(exact, mc, rtol=0.02)
    assert exact[-1] == planner.sample_size(1000)  # p = 1: every pilot draw hits
    head = iss.iss_headroom(p, 100_000, 500, 0.5, 0.001, 0.05, "absolute", pilot_sizes=(200, 1000))
    assert head[1000][0] == pytest.approx(exact.mean())
    assert head[1000][1] == pytest.approx(exact.mean() + 1000)
    assert head["oracle"] <= head[1000][0] and head["oracle"] <= head[200][0]


# ------------------------------------------------------------------------------------------ ISS-DSRS

def _np_stand_in(sigma, alpha, calls):
    """Cheap radius_fn: Gaussian NP on the P counts only (ignores Q)."""
    def radius_fn(count_p, n_p, count_q, n_q):
        calls.append(n_p)
        return float(np_radius(cp_lower(count_p, n_p, alpha), sigma))
    return radius_fn


def test_iss_dsrs_budget_with_np_stand_in_reduces_to_iss_np():
    sigma, alpha, n0, n_max, b = 0.5, 0.001, 2000, 50_000, 200
    for kp in (1200, 1900, 1990, 2000):
        for plan_at, p_plan in (("point", kp / n0), ("upper", cp_interval(kp, n0, alpha)[1])):
            calls = []
            n_p, n_q = iss_dsrs_budget(kp, 1500, n0, n_max, b, alpha, 0.05, "absolute",
                                       _np_stand_in(sigma, alpha, calls), plan_at=plan_at)
            assert n_p == n_q == iss_sample_size(p_plan, n_max, b, sigma, alpha, 0.05, "absolute")
            assert len(calls) <= 1 + math.ceil(math.log2(n_max // b))
    for p in (0.7, 0.99, 0.9999, 1.0):  # the oracle plans at the true rate itself
        assert iss.iss_dsrs_oracle_size(p, 0.5, n_max, b, 0.05, "absolute", _np_stand_in(sigma, alpha, [])) \
            == iss_sample_size(p, n_max, b, sigma, alpha, 0.05, "absolute")
    calls = []
    assert iss_dsrs_budget(1000, 1000, n0, n_max, b, alpha, 0.05, "absolute",
                           _np_stand_in(sigma, alpha, calls)) == (0, 0)
    assert len(calls) == 1
    # Relative rule, 'both' ends: n* is U-shaped, so its max over the interval sits at an end.
    planner = IssPlanner(n_max, b, sigma, alpha, 0.05, "relative", n0)
    for kp in (1300, 1800, 1990):
        calls = []
        n_p, _ = iss_dsrs_budget(kp, kp, n0, n_max, b, alpha, 0.05, "relative",
                                 _np_stand_in(sigma, alpha, calls), plan_at="both")
        ends = [iss_sample_size(p, n_max, b, sigma, alpha, 0.05, "relative") for p in cp_interval(kp, n0, alpha)]
        assert n_p == max(ends) <= planner.sample_size(kp) <= 1.05 * n_p + 2 * b
        assert len(calls) <= 2 * (1 + math.ceil(math.log2(n_max // b)))


def test_iss_dsrs_budget_meets_target_even_if_not_monotone():
    def wiggly(count_p, n_p, count_q, n_q):  # non-monotone in n: dips at some sizes
        return 1.0 - 1.0 / math.sqrt(n_p) - (0.05 if (n_p // 200) % 7 == 3 else 0.0)
    n, _ = iss_dsrs_budget(1900, 1900, 2000, 50_000, 200, 0.001, 0.01, "absolute", wiggly)
    assert wiggly(0, n, 0, n) >= wiggly(0, 50_000, 0, 50_000) - 0.01
    with pytest.raises(CertifyNetError):
        iss_dsrs_budget(2001, 0, 2000, 50_000, 200, 0.001, 0.01, "absolute", wiggly)


def test_iss_dsrs_budget_real_radius_mnist():
    """Real DSRS radius at MNIST settings (d=784, k=380, σ=0.5, truncated Q with p_T from the pilot)."""
    dsrs = pytest.importorskip("certifynet.certify.dsrs")
    sigma, d, k, alpha, n0, n_max, b = 0.5, 784, 380, 0.001, 2000, 50_000, 200
    kp0, kq0 = 1990, 1995
    radius_fn = iss.dsrs_expected_radius_fn(sigma, d, k, "truncated",
                                            iss.pilot_truncation_percentile(kp0, n0, alpha), alpha)
    p_u, q_u = cp_interval(kp0, n0, alpha)[1], cp_interval(kq0, n0, alpha)[1]

    def expected(n):
        return radius_fn(n * p_u, n, n * q_u, n)

    # The expected radius is monotone in n (so bisection finds the smallest budget).
    e = [expected(n) for n in (200, 800, 3200, 12_800, 50_000)]
    assert np.all(np.diff(e) > 0), e
    calls = []
    n_p, n_q = iss_dsrs_budget(kp0, kq0, n0, n_max, b, alpha, 0.05, "absolute",
                               lambda *a: calls.append(a[1]) or radius_fn(*a))
    assert 0 < n_p == n_q < n_max and len(calls) <= 1 + math.ceil(math.log2(n_max // b))
    assert expected(n_p) >= e[-1] - 0.05 > expected(n_p - b)
    # Final certificate on fresh counts: max(NP on the P run, DSRS) is never below NP at the same budget.
    cp_, cq_ = round(n_p * 0.995), round(n_q * 0.997)
    p_low = dsrs.dsrs_intervals(cp_, n_p, cq_, n_q, alpha)[0]
    assert radius_fn(cp_, n_p, cq_, n_q) >= dsrs.generalized_np_radius(p_low, sigma, d, k) > 0.0
    assert radius_fn(0, 0, 0, 0) == 0.0


# ------------------------------------------------------------------ ISS never costs more than fixed N

@pytest.mark.parametrize("n_max,b,n0", [(1000, 500, 100), (2000, 500, 100), (50_000, 200, 2000), (400, 100, 1000)])
def test_iss_np_cost_never_exceeds_n0_plus_n(n_max, b, n0):
    for mode, decline in (("absolute", 0.05), ("relative", 0.05)):
        planner = IssPlanner(n_max, b, 0.25, 0.001, decline, mode, n0)
        assert max(n0 + planner.sample_size(k) for k in range(n0 + 1)) <= n0 + n_max


@pytest.mark.parametrize("n_max,b,n0", [(1000, 500, 100), (10_000, 200, 100), (50_000, 500, 2000), (300, 100, 500)])
def test_iss_dsrs_cost_never_exceeds_n0_plus_2n(n_max, b, n0):
    """Cost 2·n0 + 2n where the Q pilot is drawn, n0 + 2N where the fixed run is planned: never above n0 + 2N."""
    sigma, alpha = 0.25, 0.001
    fns = {"np": _np_stand_in(sigma, alpha, []),
           "slow-growing": lambda cp, n_p, cq, n_q: math.log(n_p) * (cq / max(n_q, 1))}
    planned = fixed = 0
    for kp in range(0, n0 + 1, max(1, n0 // 25)):
        cap = iss.iss_dsrs_q_pilot_cap(kp, n0, n_max, b, sigma, alpha, 0.05, "absolute")
        assert cap in (0, n_max - (n0 + 1) // 2)
        if not cap:
            fixed += 1
            continue
        for kq in range(0, n0 + 1, max(1, n0 // 10)):
            for fn in fns.values():
                n, n_q = iss_dsrs_budget(kp, kq, n0, n_max, b, alpha, 0.05, "absolute", fn, n_cap=cap)
                assert n == n_q <= cap and 2 * n0 + 2 * n <= n0 + 2 * n_max
                planned += 1
    assert fixed + planned > 0


def test_iss_dsrs_cap_keeps_the_target_where_reachable():
    calls = []
    radius_fn = _np_stand_in(0.5, 0.001, calls)
    full = iss_dsrs_budget(1900, 1900, 2000, 50_000, 200, 0.001, 0.05, "absolute", radius_fn)[0]
    capped = iss_dsrs_budget(1900, 1900, 2000, 50_000, 200, 0.001, 0.05, "absolute", radius_fn, n_cap=49_000)[0]
    assert full == capped < 49_000  # the cap changes nothing when the target is met below it
    p_u = cp_interval(2000, 2000, 0.001)[1]  # every pilot draw hit: the plan wants ≈ N, the cap binds
    assert iss_dsrs_budget(2000, 2000, 2000, 50_000, 200, 0.001, 0.001, "absolute", radius_fn,
                           n_cap=49_000)[0] == 49_000
    assert p_u == 1.0
    with pytest.raises(CertifyNetError):
        iss_dsrs_budget(1900, 1900, 2000, 50_000, 200, 0.001, 0.05, "absolute", radius_fn, n_cap=60_000)
    # quickstart setting (N = 1000 per distribution, b = 500, n0 = 100): an all-hits P pilot plans the fixed run
    assert iss.iss_dsrs_q_pilot_cap(100, 100, 1000, 500, 0.25, 0.001, 0.05, "absolute") == 0
    assert iss.iss_dsrs_q_pilot_cap(80, 100, 1000, 500, 0.25, 0.001, 0.05, "absolute") == 950


def test_iss_dsrs_rows_never_cost_more_than_fixed(tmp_path):
    """sample.py --iss --q-dist truncated end to end: every row's cost ≤ n0 + 2N (certify_row's `samples`)."""
    torch = pytest.importorskip("torch")
    from certifynet.certify.from_counts import certify_row
    from certifynet.cli import sample as sample_cli
    from certifynet.models import get_architecture, save_checkpoint
    from certifynet.records import read_meta, read_rows
    model = str(tmp_path / "lenet.pth")
    torch.manual_seed(0)
    save_checkpoint(model, get_architecture("lenet", "mnist5k"), arch="lenet", dataset="mnist5k", num_classes=10,
                    sigma=0.25)
    counts = str(tmp_path / "c.csv")
    n0, n_max = 100, 300
    assert sample_cli.main(["--model", model, "--sigma", "0.25", "--max", "4", "--batch", "100", "--N", str(n_max),
                            "--iss", "absolute", "--iss-n0", str(n0), "--q-dist", "truncated", "--q-percentile", "x",
                            "--out", counts]) == 0
    meta, rows = read_meta(counts), read_rows(counts)[1]
    assert len(rows) == 4
    for row in rows:
        cost = certify_row(row, meta, "iss-dsrs", 0.001)["samples"]
        assert cost <= n0 + 2 * n_max, row
        if int(row["pilot_n_q"]) == 0:  # no Q pilot: the fixed run
            assert int(row["n"]) == int(row["n_q"]) == n_max and cost == n0 + 2 * n_max
        else:
            assert int(row["pilot_n_q"]) == n0 and int(row["n"]) <= n_max - n0 // 2

"""The calibrated group-sequential rule: the exact crossing DP (against brute force and Monte Carlo, with a
control that must fail), the calibration, soundness on the linear classifier at the thresholds (with an
uncalibrated control that must fail), dominance over the confidence-sequence rule, codes and closure."""
import dataclasses
import itertools

import numpy as np
import pytest
from scipy.special import gammaln
from scipy.stats import binom

from certifynet.certify import crossing as crossing_mod
from certifynet.certify.crossing import crossing_probability, lower_crossing_probability
from certifynet.certify.group_sequential import GroupSequentialCertifier
from certifynet.certify.gs_boundaries import (
    calibrated_design,
    cp_lower_boundary,
    cp_upper_boundary,
    cs_boundaries,
    futility_boundary,
    verify_design,
)
from certifynet.certify.sequential import SequentialCertifier, batch_schedule, confidence_sequence, simulate
from certifynet.errors import CertifyNetError


def _mc_crossing(sizes, upper, p, paths, rng, lower=None):
    """Monte Carlo P(∃k: S_{n_k} ≥ upper_k) (or ≤ lower_k) over `paths` binomial random walks."""
    s = np.cumsum(rng.binomial(np.asarray(sizes)[None, :], p, size=(paths, len(sizes))), axis=1)
    hit = s >= np.asarray(upper)[None, :] if lower is None else s <= np.asarray(lower)[None, :]
    return float(np.mean(hit.any(axis=1)))


def _z(estimate, p, n):
    return (estimate - p) / np.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------------------------- the crossing DP

def test_dp_equals_brute_force_enumeration():
    """Every one of the 2^13 draw sequences, weighted by its probability, against the DP (direct and FFT)."""
    sizes, upper = np.array([3, 5, 4, 1]), np.array([3, 6, 8, 9])
    seqs = np.array(list(itertools.product([0, 1], repeat=int(sizes.sum()))))
    s = np.cumsum(seqs, axis=1)[:, np.cumsum(sizes) - 1]
    crosses = (s >= upper).any(axis=1)
    for p in (0.3, 0.5, 0.77, 0.999):
        weight = p ** seqs.sum(1) * (1 - p) ** (seqs.shape[1] - seqs.sum(1))
        exact = float(weight[crosses].sum())
        dp = crossing_probability(sizes, upper, p)
        assert abs(dp.probability - exact) <= 1e-14 + dp.error and dp.error < 1e-10
        lower = np.array([0, 2, 4, 6])
        exact_low = float(weight[(s <= lower).any(axis=1)].sum())
        assert lower_crossing_probability(sizes, lower, p).probability == pytest.approx(exact_low, abs=1e-14)


def test_fft_path_agrees_and_kernel_is_accurate(monkeypatch):
    sizes = batch_schedule(20_000, 500)
    ns = np.cumsum(sizes)
    upper = cp_upper_boundary(ns, 0.84, 5e-5)
    direct = crossing_probability(sizes, upper, 0.84)
    monkeypatch.setattr(crossing_mod, "DIRECT_MAX", 0)
    crossing_mod._kernel.cache_clear()
    fft = crossing_probability(sizes, upper, 0.84)
    assert abs(fft.probability - direct.probability) <= fft.error + direct.error and fft.error < 1e-9
    # PMF_REL: scipy's binomial pmf against an independent log-gamma evaluation (itself accurate to ~1e-13)
    for m, p in ((500, 0.84), (500, 0.99865), (32, 0.6915), (1000, 1e-3)):
        j = np.arange(m + 1)
        ref = np.exp(gammaln(m + 1) - gammaln(j + 1) - gammaln(m - j + 1) + j * np.log(p) + (m - j) * np.log1p(-p))
        big = ref > 1e-250
        assert np.max(np.abs(binom.pmf(j, m, p)[big] / ref[big] - 1)) < 1e-11


def test_dp_increases_in_p():
    """The monotonicity that extends the calibration at p = θ to every p ≤ θ (docs/sequential.md)."""
    sizes = batch_schedule(5000, 256)
    upper = calibrated_design(tuple(sizes.tolist()), 0.9, 0.01).upper
    probs = [crossing_probability(sizes, upper, p).probability for p in np.linspace(0.85, 0.93, 17)]
    assert np.all(np.diff(probs) > 0) and probs[8] <= 0.01 < probs[-1]


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_dp_against_monte_carlo_and_a_memoryless_control(alpha):
    """20,000 Monte Carlo paths per probability. Under an exact DP the count is Binomial(20,000, q): |z| ≤ 4
    fails with probability 6e-5. The control (Σ_k P(S_{n_k} ≥ b_k), forgetting that a path stops at its first
    crossing) must be rejected by the same test."""
    rng = np.random.default_rng(int(alpha * 100))
    sizes = batch_schedule(2000, 100)
    ns, theta, paths = np.cumsum(sizes), 0.8, 20_000
    design = calibrated_design(tuple(sizes.tolist()), theta, alpha, "cp")
    for p in (theta, theta - 0.01):
        dp = crossing_probability(sizes, design.upper, p).probability
        assert abs(_z(_mc_crossing(sizes, design.upper, p, paths, rng), dp, paths)) <= 4.0
    dp_low = lower_crossing_probability(sizes, design.lower, theta).probability
    assert abs(_z(_mc_crossing(sizes, None, theta, paths, rng, lower=design.lower), dp_low, paths)) <= 4.0
    assert design.crossing.bound <= alpha and dp_low <= alpha
    memoryless = float(binom.sf(design.upper - 1, ns, theta).sum())
    assert abs(_z(_mc_crossing(sizes, design.upper, theta, paths, rng), memoryless, paths)) > 4.0


# ------------------------------------------------------------------------------------------ calibration

def test_calibration_spends_alpha_and_boundaries():
    sizes = batch_schedule(10_000, 256)
    key, ns = tuple(sizes.tolist()), np.cumsum(sizes)
    for family in ("cp+cs", "cp", "mixture"):
        d = calibrated_design(key, 0.84, 0.001, family)
        assert d.crossing.bound <= 0.001 and d.refute_crossing.bound <= 0.001
        above = {"cp": cp_upper_boundary(ns, 0.84, d.level * 1.001)}.get(family)
        if above is not None:   # the level is the largest one: a step above it spends more than α
            assert np.any(above < d.upper) and crossing_probability(sizes, above, 0.84).probability > 0.001
        assert np.all(d.upper <= d.cs_upper) or family == "cp"
    d = calibrated_design(key, 0.84, 0.001)
    assert d.crossing.bound > 0.95 * 0.001  # α is spent (the CS boundary alone spends 3–6% of it)
    assert crossing_probability(sizes, d.cs_upper, 0.84).bound < 0.1 * 0.001
    assert verify_design(d, sizes, 0.001) and not verify_design(d, sizes, 0.9 * 0.001)
    assert not verify_design(dataclasses.replace(d, upper=d.upper - 1), sizes, 0.001)
    hits = calibrated_design.cache_info().hits
    assert calibrated_design(key, 0.84, 0.001) is d and calibrated_design.cache_info().hits == hits + 1
    # boundary definitions: CP p-values, and the confidence sequence read off as integers
    b, a = cp_upper_boundary(ns, 0.84, 1e-4), cp_lower_boundary(ns, 0.84, 1e-4)
    assert np.all(binom.sf(b - 1, ns, 0.84) <= 1e-4) and np.all(binom.sf(b - 2, ns, 0.84) > 1e-4)
    assert np.all(binom.cdf(a, ns, 0.84) <= 1e-4) and np.all(binom.cdf(a + 1, ns, 0.84) > 1e-4)
    b_cs, a_cs = cs_boundaries(ns, 0.84, 0.001)
    ok, n = (b_cs <= ns) & (a_cs >= 0), ns[(b_cs <= ns) & (a_cs >= 0)]
    assert ok[-1] and b_cs[0] == ns[0] + 1          # 32 draws cannot certify 0.84 at α = 0.001
    assert np.all(confidence_sequence(b_cs[ok], n, 0.001)[0] > 0.84)
    assert np.all(confidence_sequence(b_cs[ok] - 1, n, 0.001)[0] <= 0.84)
    assert np.all(confidence_sequence(a_cs[ok], n, 0.001)[1] < 0.84)
    assert np.all(confidence_sequence(a_cs[ok] + 1, n, 0.001)[1] >= 0.84)
    f = futility_boundary(ns, 0.84, 0.05)
    assert np.all(binom.cdf(f, ns, 0.84) < 0.05) and np.all(binom.cdf(f + 1, ns, 0.84) >= 0.05)


# ------------------------------------------------------------------- soundness on the linear classifier

RADII, SIGMA = (0.1, 0.2, 0.3, 0.5, 0.8), 0.5


class UncalibratedCP(GroupSequentialCertifier):
    """Deliberately INVALID: Clopper–Pearson at α′ = α re-checked at every check (no calibration)."""

    def _design(self, theta):
        d = super()._design(theta)
        return dataclasses.replace(d, upper=cp_upper_boundary(self.checks, theta, self.alpha))


def _false_certificates(cls, m=6000, alpha=0.05, seed=3, **kw):
    """Inputs of the linear classifier sitting exactly at a threshold of the grid (p_A = θ_r, the hardest
    case: a C at r claims p_A > θ_r), drawn in equal numbers per radius. Returns (false-C count, m)."""
    cert = cls(RADII, SIGMA, alpha, 10_000, 256, **kw)
    rng = np.random.default_rng(seed)
    p = cert.thresholds[rng.integers(0, len(RADII), m)]
    state = simulate(cert, p, rng)
    false = ((cert.decisions(state) == 2) & (cert.thresholds[None, :] >= p[:, None])).any(axis=1)
    return int(false.sum()), m


def test_soundness_at_the_thresholds_and_uncalibrated_control_fails():
    """One-sided binomial test of 'P(any false C) ≤ α' at level 1e-3, on inputs at the thresholds."""
    alpha = 0.05
    count, m = _false_certificates(GroupSequentialCertifier, alpha=alpha)
    assert binom.sf(count - 1, m, alpha) >= 1e-3, count
    # the CLI's default, futility "projected" at γ = 0.001, on the same draws (simulate draws for every input at
    # every check): a futility stop never certifies, so it can only remove false Cs
    default, _ = _false_certificates(GroupSequentialCertifier, alpha=alpha, futility=0.001, futility_rule="projected")
    assert binom.sf(default - 1, m, alpha) >= 1e-3 and default <= count, (default, count)
    bad, _ = _false_certificates(UncalibratedCP, alpha=alpha)
    print(f"false-C: calibrated {count}/{m}, uncalibrated {bad}/{m}, expected ≤ {alpha * m:.0f}")
    assert binom.sf(bad - 1, m, alpha) < 1e-3, bad  # the same test catches the uncalibrated rule


def test_linear_classifier_mixed_inputs_sound_and_decisive():
    """Linear classifier, true radius δ uniform in (0, 1): p = Φ(δ/σ); any C at r with θ_r ≥ p is false."""
    from scipy.stats import norm
    rng = np.random.default_rng(4)
    delta = rng.uniform(0.0, 1.0, 3000)
    p = norm.cdf(delta / SIGMA)
    cert = GroupSequentialCertifier(RADII, SIGMA, 0.05, 10_000, 256, futility=0.05)
    state = simulate(cert, p, rng)
    codes = cert.decisions(state)
    false = ((codes == 2) & (cert.thresholds[None, :] >= p[:, None])).any(axis=1)
    assert binom.sf(false.sum() - 1, p.size, 0.05) >= 1e-3
    easy = (p[:, None] > cert.thresholds[None, :] + 0.05)
    assert np.mean(codes[easy] == 2) > 0.99 and np.median(state.draws) < 2000


# ---------------------------------------------------------------------------- against the confidence-sequence rule

def _on_table(cert, table):
    """Run `cert` on a fixed table of hits per input and batch: both rules see the same draws."""
    col = iter(range(table.shape[1]))
    return cert.run(lambda size, active: table[:, next(col)], m=table.shape[0])


def test_never_more_draws_than_the_confidence_sequence():
    """All-hit inputs, inputs exactly at each threshold, inputs below every threshold, and a spread: on the same
    draws the default rule stops no later than the CS rule and certifies whatever it certifies. The control
    (pure Clopper–Pearson, calibrated too) falls into the trap: all-hit inputs at 3σ cost it more."""
    radii, sigma = (0.5, 0.75), 0.25            # 2σ and 3σ: where the mixture is strong on all-hit inputs
    cs_rule = SequentialCertifier(radii, sigma, 0.001, 100_000, 500)
    new = GroupSequentialCertifier(radii, sigma, 0.001, 100_000, 500)
    rng = np.random.default_rng(5)
    th = new.thresholds
    p = np.concatenate([np.ones(40), np.repeat(th, 60), rng.uniform(0.3, th[0], 80), rng.uniform(0.9, 1.0, 80)])
    table = rng.binomial(new.schedule[None, :], p[:, None])
    old, got = _on_table(cs_rule, table), _on_table(new, table)
    assert np.all(got.draws <= old.draws)
    assert np.all((cs_rule.decisions(old) == 2) <= (new.decisions(got) == 2))
    assert got.draws.sum() < old.draws.sum() and np.all(old.draws[:40] == 5980)
    trap = _on_table(GroupSequentialCertifier(radii, sigma, 0.001, 100_000, 500, boundary="cp"), table)
    assert np.all(trap.draws[:40] > old.draws[:40])


# ------------------------------------------------------------------------------- codes and interface

def test_codes_closure_and_interface():
    cert = GroupSequentialCertifier([1.0, 0.25, 0.5], 0.5, 0.001, 100_000, 1000)
    assert list(cert.radii) == [0.25, 0.5, 1.0]
    state = simulate(cert, [1.0, 0.0, 0.95, 0.5 + 1e-9], np.random.default_rng(0))
    codes = cert.decisions(state)
    assert cert.format_decisions(codes[0]) == "0.25:C,0.5:C,1:C" and state.draws[0] < 1000
    assert cert.format_decisions(codes[1]) == "0.25:N,0.5:N,1:N" and state.draws[1] <= 96
    assert cert.format_decisions(codes[2]) == "0.25:C,0.5:C,1:N"
    assert list(cert.certified_radius(state)[:3]) == [1.0, 0.0, 0.5]
    assert np.all(state.lower <= state.upper) and state.lower[0] > 0.5 > state.upper[1]
    # 4σ is out of reach within 100k draws at α = 0.001: U at once, no run to the cap
    hard = GroupSequentialCertifier([0.25, 1.0], 0.25, 0.001, 100_000, 1000)
    state = simulate(hard, [1.0], np.random.default_rng(0))
    assert hard.format_decisions(hard.decisions(state)[0]) == "0.25:C,1:U" and state.draws[0] < 1000
    # closure: a radius crossed while a smaller one is not is not certified; the cap leaves it U
    near = GroupSequentialCertifier([0.25, 0.5], 0.5, 0.1, 2000, 100)
    st = near.start(1)
    st.crossed[:] = [[False, True]]
    assert near.decisions(st)[0].tolist() == [0, 0]
    params = cert.params()
    assert params["sequential_rule"] == "group-sequential" and params["boundary"] == "cp+cs"
    assert len(params["levels"]) == 3 and all(0 < lv < 0.001 for lv in params["levels"])
    assert params["checks"] == cert.schedule.size and params["futility"] is None


def test_futility_gives_up_and_refusals():
    cert = GroupSequentialCertifier([0.25, 0.5], 0.5, 0.001, 100_000, 500, futility=0.05)
    plain = GroupSequentialCertifier([0.25, 0.5], 0.5, 0.001, 100_000, 500)
    p = np.full(200, cert.thresholds[0] - 0.01)      # just below the smaller threshold: slow to refute at α
    quick, slow = (simulate(c, p, np.random.default_rng(1)) for c in (cert, plain))
    assert quick.draws.mean() < 0.5 * slow.draws.mean()
    assert np.all(cert.decisions(quick) != 2) and cert.params()["futility"] == 0.05
    # just above θ but out of reach within the cap: "upper" runs on, "projected" gives up early
    kw = dict(radii=[0.25], sigma=0.5, alpha=0.001, n_max=20_000, batch=500, futility=0.01)
    upper, projected = (GroupSequentialCertifier(**kw, futility_rule=rule) for rule in ("upper", "projected"))
    p = np.full(100, upper.thresholds[0] + 0.005)
    runs = [simulate(c, p, np.random.default_rng(2)) for c in (upper, projected)]
    assert runs[1].draws.mean() < 0.5 * runs[0].draws.mean() and np.mean(projected.decisions(runs[1]) == 1) > 0.9
    assert np.all(projected.give_up_at >= upper.give_up_at) and projected.params()["futility_rule"] == "projected"
    for kwargs in ({"futility": 1.5}, {"futility": 0.0}, {"boundary": "pocock"}, {"futility_rule": "curtail"}):
        with pytest.raises(CertifyNetError):
            GroupSequentialCertifier([0.25], 0.5, 0.001, 1000, 100, **kwargs)
    state = plain.start(1)
    with pytest.raises(CertifyNetError, match="schedule"):
        plain.update(state, 10, 10)

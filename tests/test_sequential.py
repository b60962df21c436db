"""Sequential certification at fixed radii: the confidence sequence, its soundness on the linear classifier
(with a peeking control that must fail), the sampler driver, and the certify.py --sequential contract."""
import json
import math
import os

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import betaln
from scipy.stats import norm

from certifynet.certify.dsrs import generalized_np_radius
from certifynet.certify.neyman_pearson import cp_lower, cp_upper, np_radius
from certifynet.certify.sequential import (
    DEFAULT_PRIOR,
    SequentialCertifier,
    batch_schedule,
    confidence_sequence,
    log_mixture_ratio,
    radius_threshold,
    simulate,
)
from certifynet.cli import analyze as analyze_cli
from certifynet.cli import certify as certify_cli
from certifynet.errors import CertifyNetError
from certifynet.records import read_rows
from certifynet.sampling import InputSampler, SamplingConfig, certify_sequential, sequential_certifier

from helpers import LinearBinary, cohen_cifar10_population, untrained_lenet

# ----------------------------------------------------------------------------------- confidence sequence

def test_bounds_match_roots_of_the_mixture_and_round_outward():
    alpha, (a, b) = 0.001, DEFAULT_PRIOR
    for s, t in ((0, 10), (3, 10), (10, 10), (950, 1000), (999, 1000), (1000, 1000), (99_990, 100_000)):
        lo, up = confidence_sequence(s, t, alpha)

        def g(p, s=s, t=t):
            return float(log_mixture_ratio(s, t, p)) - math.log(1 / alpha)

        if s > 0:
            root = brentq(g, 1e-300, s / t, xtol=1e-300, rtol=1e-15)
            # within 1e-11: the margin on betaln's rounding (sequential.mixture_margin) moves the end by < 1e-11
            assert lo <= root and root - lo < 1e-11 * max(1.0, 1 - root) + 1e-15, (s, t, lo, root)
            assert g(lo) >= 0  # the reported end lies outside the confidence set
        else:
            assert lo == 0.0
        if s < t:
            root = brentq(g, s / t, 1 - 1e-16, xtol=1e-300, rtol=1e-15)
            assert up >= root and up - root < 1e-11, (s, t, up, root)
        else:
            assert up == 1.0
    # all hits: closed form L = exp((ln B(a+t, b) − ln B(a, b) + ln α)/t)
    t = np.array([50, 5000, 100_000])
    closed = np.exp((betaln(a + t, b) - betaln(a, b) + math.log(alpha)) / t)
    assert np.allclose(confidence_sequence(t, t, alpha)[0], closed, rtol=1e-12)
    assert confidence_sequence(0, 0, alpha) == (0.0, 1.0)
    with pytest.raises(CertifyNetError):
        confidence_sequence(5, 4, alpha)


def test_bounds_are_wider_than_fixed_n_clopper_pearson_and_monotone():
    """The price of anytime validity: never tighter than the fixed-n bound at the same (S, t) on this grid."""
    t = np.repeat([20, 200, 2000, 20_000], 41)
    s = np.round(np.tile(np.linspace(0, 1, 41), 4) * t)
    lo, up = confidence_sequence(s, t, 0.01)
    assert np.all(lo <= cp_lower(s, t, 0.01)) and np.all(up >= cp_upper(s, t, 0.01))
    assert np.all(lo <= s / t) and np.all(up >= s / t)
    lo_more = confidence_sequence(np.minimum(s + 1, t), t, 0.01)[0]
    assert np.all(lo_more >= lo)  # one more hit never lowers L


def test_time_uniform_coverage_by_simulation():
    """P(p ∉ [L_t, U_t] at SOME check) ≤ α + slack, checked after every batch up to 10,000 draws."""
    alpha, m = 0.05, 3000
    rng = np.random.default_rng(11)
    for p in (0.5, 0.9, 0.99):
        hits, miss = np.zeros(m), np.zeros(m, dtype=bool)
        draws = 0
        for size in batch_schedule(10_000, 250):
            hits += rng.binomial(size, p, m)
            draws += size
            lo, up = confidence_sequence(hits, draws, alpha)
            miss |= (lo > p) | (up < p)
        assert miss.mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / m), (p, miss.mean())


def test_thresholds_gaussian_and_generalized():
    for sigma in (0.25, 0.5, 1.0):
        for r in (0.1, 0.25, 0.5, 1.0, 2.0):
            th = radius_threshold(r, sigma)
            assert th >= norm.cdf(r / sigma) and th - norm.cdf(r / sigma) < 1e-11
            assert np_radius(th, sigma) >= r > np_radius(np.nextafter(th, 0) - 1e-12, sigma)
    assert radius_threshold(0.0, 0.5) == 0.5
    assert radius_threshold(10.0, 0.25) == 1.0  # 40σ: no p < 1 certifies it
    d, k, sigma, r = 784, 380, 0.5, 0.8
    th = radius_threshold(r, sigma, d, k)
    assert th > norm.cdf(r / sigma)  # the generalized Gaussian needs a higher p_A for the same radius
    assert generalized_np_radius(th, sigma, d, k) >= r > generalized_np_radius(th - 1e-6, sigma, d, k)
    with pytest.raises(CertifyNetError):
        radius_threshold(0.5, 0.5, None, 3)


def test_schedule_and_decisions():
    sizes = batch_schedule(10_000, 1000)
    assert sizes.sum() == 10_000 and list(sizes[:6]) == [32, 64, 128, 256, 512, 1000]
    assert list(batch_schedule(100, 1000)) == [32, 64, 4]
    cert = SequentialCertifier([1.0, 0.25, 0.5], 0.5, 0.001, 100_000, 1000)
    assert list(cert.radii) == [0.25, 0.5, 1.0]
    state = simulate(cert, [1.0, 0.0, 0.95, 0.5 + 1e-9], np.random.default_rng(0))
    codes = cert.decisions(state)
    assert cert.format_decisions(codes[0]) == "0.25:C,0.5:C,1:C" and state.draws[0] < 1000  # easy: stops early
    assert cert.format_decisions(codes[1]) == "0.25:N,0.5:N,1:N" and state.draws[1] <= 96
    assert cert.format_decisions(codes[2]) == "0.25:C,0.5:C,1:N"
    assert list(cert.certified_radius(state)[:3]) == [1.0, 0.0, 0.5]
    # σ = 0.25, r = 1 (4σ) cannot be certified within 100k draws at α = 0.001: U, and no run to the cap
    hard = SequentialCertifier([0.25, 1.0], 0.25, 0.001, 100_000, 1000)
    state = simulate(hard, [1.0], np.random.default_rng(0))
    assert hard.format_decisions(hard.decisions(state)[0]) == "0.25:C,1:U" and state.draws[0] < 1000
    for bad in ([], [0.5, 0.5], [-1.0], [float("nan")], [0.0]):
        with pytest.raises(CertifyNetError):
            SequentialCertifier(bad, 0.5, 0.001, 1000, 100)


# ------------------------------------------------------------------- soundness on the linear classifier

class PeekingClopperPearson(SequentialCertifier):
    """Deliberately INVALID: the fixed-n Clopper–Pearson bound re-checked after every batch (peeking)."""

    def bounds(self, hits, draws):
        return cp_lower(hits, draws, self.alpha), cp_upper(hits, draws, self.alpha)


RADII = (0.1, 0.2, 0.3, 0.5, 0.8)


def _boundary_deltas(m, rng):
    """True radii δ: a third right at a grid radius (p = θ_r to 1e-9), a third just inside (0.97·r), a third
    uniform in (0, 1]: where a certificate at r > δ is false and sequential methods are most tempted."""
    grid = np.array(RADII)
    at = grid[rng.integers(0, len(grid), m // 3)] - 1e-9
    inside = grid[rng.integers(0, len(grid), m // 3)] * 0.97
    return np.concatenate([at, inside, rng.uniform(0.0, 1.0, m - 2 * (m // 3))])


def _false_certificate_rate(cls, m=3000, alpha=0.05, sigma=0.5, n0=100, seed=5):
    """Fraction of inputs certified at some radius r > δ (or for the wrong class at all). Linear binary
    classifier: each draw is correct with p = Φ(δ/σ), independently (tests/test_iss.py checks this in d = 128);
    ĉ_A from n0 selection draws."""
    rng = np.random.default_rng(seed)
    delta = _boundary_deltas(m, rng)
    p = norm.cdf(delta / sigma)
    top_is_true = 2 * rng.binomial(n0, p) >= n0
    cert = cls(RADII, sigma, alpha, 10_000, 256)
    state = simulate(cert, np.where(top_is_true, p, 1.0 - p), rng)
    radius = cert.certified_radius(state)
    false = np.where(top_is_true, radius > delta, radius > 0.0)
    return false.mean(), radius, delta, top_is_true, state


def test_sequential_soundness_on_linear_classifier_and_peeking_fails():
    alpha, m = 0.05, 3000
    limit = alpha + 3.0 * math.sqrt(alpha * (1 - alpha) / m)
    rate, radius, delta, top, state = _false_certificate_rate(SequentialCertifier, m, alpha)
    assert rate <= limit, rate
    # the test has bite: inputs away from the boundary are certified close to δ, long before the cap
    easy = top & (delta > 0.35) & (np.arange(m) >= 2 * (m // 3))
    assert np.mean(radius[easy] >= 0.6 * delta[easy]) > 0.9 and np.median(state.draws[easy]) < 2000
    peek_rate = _false_certificate_rate(PeekingClopperPearson, m, alpha)[0]
    print(f"false-certificate rate: confidence sequence {rate:.4f}, peeking CP {peek_rate:.4f}, limit {limit:.4f}")
    assert peek_rate > limit, peek_rate  # the same test catches the invalid variant


# ---------------------------------------------------------------------------------- the real sampler

def _linear_sampler(d=64, n_max=1000, batch=128, alpha=0.1, seed=0):
    config = SamplingConfig(sigma=0.5, N0=20, N=n_max, batch=batch, alpha=alpha, seed=seed, optimize=False,
                            channels_last=False)
    model = LinearBinary(d, seed=3)
    sampler = InputSampler(model, 2, d, config, torch.device("cpu"))
    return model, sampler, sequential_certifier(sampler, (0.2, 0.4))


def test_real_sampler_driver_sound_and_deterministic():
    model, sampler, cert = _linear_sampler()
    rng = np.random.default_rng(2)
    m, false, draws = 150, 0, []
    for idx in range(m):
        delta = float(rng.choice([0.2, 0.4]) - 1e-9 if idx % 2 else rng.uniform(0.0, 0.8))
        row = certify_sequential(sampler, cert, idx, model.point_at(delta, (64,)), 1)
        radius = row["radius"] if row["predict"] == 1 else (row["radius"] and math.inf)
        false += radius > delta
        draws.append(row["n"])
        assert row["samples"] == 20 + row["n"] and row["hits"] <= row["n"] <= 1000
        assert (row["predict"] == -1) == (row["pA_lower"] <= 0.5)
    assert false / m <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / m)
    assert min(draws) < 300 < max(draws)  # easy inputs stop early, boundary ones run on
    x = model.point_at(0.3, (64,))
    a = certify_sequential(sampler, cert, 7, x, 1)
    b = certify_sequential(sampler, cert, 7, x, 1)
    assert {k: v for k, v in a.items() if k != "time"} == {k: v for k, v in b.items() if k != "time"}


# ---------------------------------------------------------------------------------- certify.py --sequential

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return untrained_lenet(tmp_path_factory.mktemp("m") / "lenet.pth")


SMALL = ["--sigma", "0.25", "--N0", "10", "--N", "300", "--batch", "64", "--max", "3", "--alpha", "0.01"]


@pytest.mark.parametrize("extra, fragment", [
    (["--radii", "0.25"], "--radii needs --sequential"),
    (["--sequential"], "--sequential needs --radii"),
    (["--sequential", "--radii", "0.25", "--iss", "absolute"], "drop --iss"),
    (["--sequential", "--radii", "0.25", "--q-dist", "truncated"], "drop --q-dist"),
    (["--sequential", "--radii", "0.25", "--method", "dsrs"], "drop --method"),
    (["--sequential", "--radii", "0.25", "0.25"], "distinct"),
    (["--sequential", "--radii", "-1"], "--radii"),
])
def test_sequential_flags_refused_before_any_file(ckpt, tmp_path, capsys, extra, fragment):
    out = tmp_path / "o.tsv"
    assert certify_cli.main(["--model", ckpt, *SMALL, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and fragment in err[-1] and len(err) == 1, err
    assert not os.listdir(tmp_path)


def test_sequential_refuses_counts(tmp_path, capsys):
    counts = tmp_path / "c.csv"
    counts.write_text("idx\n")
    assert certify_cli.main(["--counts", str(counts), "--sequential", "--radii", "0.25",
                             "--out", str(tmp_path / "o.tsv")]) == 2
    assert "not --counts" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["c.csv"]


def test_sequential_log_resume_and_analyze(ckpt, tmp_path, capsys):
    out = str(tmp_path / "seq.tsv")
    argv = ["--model", ckpt, *SMALL, "--sequential", "--radii", "0.5", "0.25", "--out", out, "--label", "seq"]
    assert certify_cli.main(argv) == 0
    header, rows = read_rows(out)
    assert header[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert {"pA_lower", "pA_upper", "n", "samples", "decisions", "method"} <= set(header) and len(rows) == 3
    meta = json.load(open(out + ".meta.json"))
    assert meta["method"] == "sequential" and meta["radii"] == [0.25, 0.5] and meta["N"] == 300
    assert "beta-binomial" in meta["confidence_sequence"] and len(meta["thresholds"]) == 2
    for r in rows:
        codes = dict(item.split(":") for item in r["decisions"].split(","))
        certified = [float(k) for k, v in codes.items() if v == "C"]
        assert float(r["radius"]) == max(certified, default=0.0) and r["method"] == "sequential"
        assert int(r["samples"]) == 10 + int(r["n"]) <= 310
    # resume: the same command again samples nothing and keeps the rows
    assert certify_cli.main(argv) == 0
    assert read_rows(out)[1] == rows and "resuming: 3 of 3" in capsys.readouterr().err
    # analyze.py: certified accuracy at the requested radii straight from the log
    capsys.readouterr()
    assert analyze_cli.main([out, "--radii", "0.25", "0.5"]) == 0
    table = capsys.readouterr().out
    acc = {r: np.mean([int(x["correct"]) and float(x["radius"]) >= r for x in rows]) for r in (0.25, 0.5)}
    line = next(ln for ln in table.splitlines() if ln.startswith("| seq"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    head = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert float(cells[head.index("r=0.25")]) == pytest.approx(acc[0.25], abs=1e-3)
    assert float(cells[head.index("r=0.5")]) == pytest.approx(acc[0.5], abs=1e-3)
    samples = np.mean([int(x["samples"]) for x in rows])
    assert float(cells[head.index("samples/input")]) == pytest.approx(samples, abs=0.5)


def test_efficiency_on_cohen_cifar10_distribution():
    """Cohen's CIFAR-10 σ=0.5 p_A (as tests/test_iss.py): ≥ 10× fewer passes than N = 100k at every radius asked
    alone, the same certified accuracy within 0.01; all four radii at once still ≥ 5×."""
    rng = np.random.default_rng(7)
    p_top, correct = cohen_cifar10_population(1500, rng)
    radii, fixed = (0.25, 0.5, 0.75, 1.0), 100_100
    r_full = np_radius(cp_lower(rng.binomial(100_000, p_top), 100_000, 0.001), 0.5)
    for rs in [radii] + [(r,) for r in radii]:
        cert = SequentialCertifier(rs, 0.5, 0.001, 100_000, 1000)
        state = simulate(cert, p_top, rng)
        ratio = fixed / (100 + state.draws.mean())
        radius = cert.certified_radius(state)
        for r in rs:
            assert abs(np.mean(correct & (radius >= r)) - np.mean(correct & (r_full >= r))) <= 0.01, (rs, r)
        assert ratio >= (10.0 if len(rs) == 1 else 5.0), (rs, ratio)


# ------------------------------------------------------------------ the rules behind certify.py --sequential

def test_default_rule_is_calibrated_and_sidecar_refuses_another_rule_on_resume(ckpt, tmp_path, capsys):
    """The default is the calibrated group-sequential rule with futility 'projected' at γ = 0.001; its sidecar
    records the rule, levels, futility and schedule, and a resume with another rule or futility is refused."""
    out = str(tmp_path / "gs.tsv")
    argv = ["--model", ckpt, *SMALL, "--sequential", "--radii", "0.25", "0.5", "--out", out]
    assert certify_cli.main(argv) == 0
    meta = json.load(open(out + ".meta.json"))
    assert meta["sequential_rule"] == "group-sequential" and meta["futility"] == 0.001
    assert meta["futility_rule"] == "projected" and len(meta["levels"]) == 2 and len(meta["refute_levels"]) == 2
    assert all(0 < lv <= 0.01 for lv in meta["levels"]) and max(meta["crossing_at_threshold"]) <= 0.01
    assert meta["schedule"] == [[32, 1], [64, 4], [12, 1]] and meta["checks"] == 6  # N = 300, batch 64
    for extra, asked in ((["--sequential-rule", "cs"], "the confidence sequence (--sequential-rule cs)"),
                         (["--futility", "none"], "the calibrated rule without futility"),
                         (["--futility", "upper"], "the calibrated rule, futility upper γ=0.001"),
                         (["--futility-level", "0.01"], "the calibrated rule, futility projected γ=0.01")):
        capsys.readouterr()
        assert certify_cli.main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error:") and "made with the calibrated rule, futility projected γ=0.001" in err, err
        assert f"this run asks for {asked}" in err, err
    # the confidence sequence's sidecar is the one it always had (no rule key: old logs stay resumable)
    cs = str(tmp_path / "cs.tsv")
    assert certify_cli.main([*argv[:-1], cs, "--sequential-rule", "cs"]) == 0
    meta_cs = json.load(open(cs + ".meta.json"))
    assert "sequential_rule" not in meta_cs and "levels" not in meta_cs and meta_cs["cs_prior"] == [1.0, 0.1]


def test_calibrated_rule_never_draws_more_than_the_cs_rule_through_the_cli(ckpt, tmp_path):
    """The same digits, the same draws ((seed, idx, stream) streams, one schedule): every input costs the calibrated
    rule (with and without futility) at most what it costs the CS rule, and no certificate of the CS rule is lost
    without futility."""
    base = ["--model", ckpt, "--sigma", "0.25", "--N0", "20", "--N", "3000", "--batch", "256", "--max", "12",
            "--alpha", "0.01", "--sequential", "--radii", "0.1", "0.25", "0.5", "--no-progress"]
    rows = {}
    for name, extra in (("cs", ["--sequential-rule", "cs"]), ("gs", ["--futility", "none"]), ("default", [])):
        out = str(tmp_path / f"{name}.tsv")
        assert certify_cli.main([*base, *extra, "--out", out]) == 0
        rows[name] = read_rows(out)[1]
    cs = np.array([int(r["n"]) for r in rows["cs"]])
    for name in ("gs", "default"):
        n = np.array([int(r["n"]) for r in rows[name]])
        assert np.all(n <= cs), (name, n, cs)
        assert [r["predict"] for r in rows[name]] == [r["predict"] for r in rows["cs"]]
    assert cs.sum() > np.array([int(r["n"]) for r in rows["default"]]).sum()  # the test has bite: it saves draws
    assert all(float(g["radius"]) >= float(c["radius"]) for g, c in zip(rows["gs"], rows["cs"]))


def test_row_withholds_a_certificate_when_the_prediction_abstains():
    """A radius with θ_r close to ½ can be crossed by the calibrated boundary while the confidence sequence's L ≤ ½:
    the row then abstains and the C is withheld (U), so that every claim of a row needs L > ½ (docs/sequential.md)."""
    from certifynet.certify.group_sequential import GroupSequentialCertifier
    from certifynet.sampling.sequential import row_decisions
    cert = GroupSequentialCertifier([0.01, 0.5], 1.0, 0.001, 10_000, 256)
    b = int(cert.certify_at[0, 0])                      # the certifying boundary at the first check (32 draws)
    state = cert.update(cert.start(1), np.array([b]), 32)
    assert cert.decisions(state)[0, 0] == 2 and state.lower[0] <= 0.5
    codes, radius, predicts = row_decisions(cert, state, float(state.lower[0]))
    assert not predicts and radius == 0.0 and codes[0] == 0
    state = cert.update(cert.start(1), np.array([32]), 32)   # all hits: L > ½, the C stands
    codes, radius, predicts = row_decisions(cert, state, float(state.lower[0]))
    assert predicts and codes[0] == 2 and radius == float(cert.radii[codes == 2].max())

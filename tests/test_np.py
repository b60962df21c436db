"""Neyman–Pearson (Cohen) certification: reference vectors, soundness and tightness on a linear classifier."""

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from certifynet.certify import (
    ABSTAIN,
    certify_from_counts,
    cp_interval,
    cp_lower,
    np_radius,
    predict_from_counts,
    predict_pvalue,
    top_two,
)
from certifynet.errors import CertifyNetError
from certifynet.noise import GaussianNoise
from certifynet.sampling import Sampler, Smooth, input_generator

from helpers import LinearBinary, reference_rows


def test_cohen_certify_vectors():
    for row in reference_rows("cohen_certify_vectors.csv"):
        c, n, a = int(row["count"]), int(row["n"]), float(row["alpha"])
        p = cp_lower(c, n, a)
        assert abs(p - float(row["pA_lower"])) < 1e-9 and p <= float(row["pA_lower"])
        for s in ("0.12", "0.25", "0.5", "1.0"):
            ref = row[f"radius_sigma_{s}"]
            abstain, _, r = certify_from_counts(c, n, float(s), a)
            if ref == "ABSTAIN":
                assert abstain and r == 0.0
            else:
                assert not abstain and abs(r - float(ref)) < 1e-9 and r <= float(ref)


def test_cohen_predict_vectors():
    for row in reference_rows("cohen_predict_vectors.csv"):
        pv = predict_pvalue(int(row["count1"]), int(row["count2"]))
        assert abs(pv - float(row["pvalue"])) < 1e-12
        assert (pv > 0.001) == (row["predict_alpha_0.001"] == "ABSTAIN")


def test_predict_from_counts_vectors():
    """The one PREDICT on class-count vectors built from the reference (n1, n2) pairs, in either order."""
    for row in reference_rows("cohen_predict_vectors.csv"):
        n1, n2 = int(row["count1"]), int(row["count2"])
        for counts, top in (([n2, 0, n1, 0], 2), ([n1, n2], 0), ([0, n2, 0, n1], 3)):
            pred = predict_from_counts(np.array(counts), 0.001)
            want = ABSTAIN if row["predict_alpha_0.001"] == "ABSTAIN" else top
            assert pred == (want, n1, n2, pytest.approx(float(row["pvalue"]), abs=1e-12)), (counts, pred)
            assert pred.label == want and pred.n1 == n1 and pred.n2 == n2


def test_predict_top_two_tie_rule_and_one_class():
    assert top_two([5, 9, 9, 2]) == (1, 9, 9)          # ties: the smallest class index first
    assert top_two([7, 7]) == (0, 7, 7)
    assert top_two(np.array([3, 9, 1, 9], dtype=np.uint64)) == (1, 9, 9)
    assert predict_from_counts([5, 9, 9, 2], 0.5).label == ABSTAIN      # a tie for first: p-value 1
    assert predict_pvalue(9, 9) == 1.0
    assert top_two([12]) == (0, 12, 0)                 # one class: the runner-up count is 0
    assert predict_from_counts([12], 0.001) == (0, 12, 0, pytest.approx(2 ** -11))
    assert predict_from_counts([0], 0.001).label == ABSTAIN
    for bad in ([], [[1, 2], [3, 4]]):
        with pytest.raises(CertifyNetError, match="1-D"):
            predict_from_counts(bad, 0.001)
    with pytest.raises(CertifyNetError, match="alpha"):
        predict_from_counts([3, 1], 1.5)


def test_np_radius_edges():
    assert np_radius(0.5, 1.0) == 0.0 and np_radius(0.3, 1.0) == 0.0
    assert np_radius(norm.cdf(1.0), 0.5) == pytest.approx(0.5, abs=1e-9)
    lo, hi = cp_interval(45000, 50000, 0.001)
    assert lo < 0.9 < hi
    assert cp_lower(0, 10, 0.01) == 0.0


def test_max_radius_matches_closed_form():
    # σ·Φ⁻¹(α^{1/n}): 3.81σ at n=100k, as in np.md
    r = certify_from_counts(100_000, 100_000, 1.0, 0.001)[2]
    assert r == pytest.approx(norm.ppf(0.001 ** (1 / 100_000)), abs=1e-9)
    assert 3.80 < r < 3.82


def _certify_linear(trials, n, alpha, sigma, d, seed):
    """Certify inputs at random distances δ from the hyperplane with the real sampler; return (δ, R) pairs."""
    f = LinearBinary(d, seed)
    sampler = Sampler(f, 2, batch=n, channels_last=False)
    noise = GaussianNoise(sigma)
    rng = np.random.default_rng(seed)
    deltas = rng.uniform(0.2, 2.0, trials) * sigma
    radii = np.empty(trials)
    for i, delta in enumerate(deltas):
        x = f.point_at(float(delta), (d,))
        c_hat = int(sampler.counts(x, noise, 20, input_generator(seed, i, 0, "cpu")).argmax())
        count = int(sampler.counts(x, noise, n, input_generator(seed, i, 1, "cpu"))[c_hat])
        abstain, _, r = certify_from_counts(count, n, sigma, alpha)
        radii[i] = 0.0 if abstain or c_hat != 1 else r
    return deltas, radii


def test_np_soundness_linear_classifier():
    """Over 2,000 certifications the fraction of radii above the true radius δ stays within α + slack."""
    alpha, trials = 0.05, 2000
    deltas, radii = _certify_linear(trials, n=500, alpha=alpha, sigma=0.5, d=100, seed=1)
    violations = int((radii > deltas).sum())
    assert violations <= binom.ppf(0.999, trials, alpha), violations


def test_np_tightness_linear_classifier():
    """At N=10,000 the certified radius is close to the true one: median R/δ ≥ 0.8."""
    deltas, radii = _certify_linear(200, n=10_000, alpha=0.001, sigma=0.5, d=100, seed=2)
    assert np.median(radii / deltas) >= 0.8
    assert (radii <= deltas).mean() >= 0.99


def test_sampler_counts_are_reproducible_and_flat_in_memory():
    f = LinearBinary(64)
    s = Sampler(f, 2, batch=100, channels_last=False)
    x = f.point_at(0.3, (64,))
    a = s.counts(x, GaussianNoise(0.5), 1000, input_generator(0, 5, 1, "cpu"))
    buf = s._buf
    b = s.counts(x, GaussianNoise(0.5), 5000, input_generator(0, 5, 1, "cpu"))
    assert s._buf is buf and buf.shape[0] == 100  # one reused buffer whatever N
    assert int(a.sum()) == 1000 and int(b.sum()) == 5000
    c = s.counts(x, GaussianNoise(0.5), 1000, input_generator(0, 5, 1, "cpu"))
    assert torch.equal(a, c)


def test_smooth_api():
    f = LinearBinary(50)
    sm = Smooth(f, 2, 0.25)
    pred, r = sm.certify(f.point_at(0.5, (50,)), n0=50, n=2000, alpha=0.001, batch=500)
    assert pred == 1 and 0.3 < r <= 0.5
    assert sm.predict(f.point_at(0.5, (50,)), n=500, alpha=0.001, batch=500) == 1
    assert sm.certify(f.point_at(0.0, (50,)), n0=50, n=2000, alpha=0.001, batch=500) == (-1, 0.0)

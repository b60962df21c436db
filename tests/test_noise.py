"""Noise distributions match their laws: moments, KS tests of the radial law, truncation, determinism."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import certifynet.noise as noise_mod
from certifynet.certify import dsrs
from certifynet.certify.dsrs import truncation_beta
from certifynet.errors import CertifyNetError
from certifynet.noise import GaussianNoise, GeneralizedGaussianNoise, make_noise, sigma_prime


def _draw(noise, n, shape, seed=0):
    return noise.sample_(torch.empty(n, *shape), torch.Generator().manual_seed(seed)).flatten(1).double()


def test_gaussian_moments():
    z = _draw(GaussianNoise(0.5), 2000, (1, 10, 10))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 0.5) < 0.01


@pytest.mark.parametrize("d, k, shape", [(784, 380, (1, 28, 28)), (3072, 1530, (3, 32, 32)), (784, 0, (1, 28, 28))])
def test_generalized_gaussian_radial_law(d, k, shape):
    """‖δ‖²/(2σ'²) ~ Gamma(d/2 − k) (KS test) and E‖δ‖² = dσ²."""
    sigma, n = 0.5, 3000
    delta = _draw(GeneralizedGaussianNoise(sigma, k, d), n, shape)
    r2 = delta.square().sum(1).numpy()
    t = r2 / (2 * sigma_prime(sigma, d, k) ** 2)
    assert stats.kstest(t, stats.gamma(d / 2 - k).cdf).pvalue > 1e-3
    se = r2.std() / math.sqrt(n)
    assert abs(r2.mean() - d * sigma ** 2) < 4 * se


def test_direction_is_uniform():
    """The first coordinate of δ/‖δ‖ has the law of a uniform direction: 2·Beta((d−1)/2, (d−1)/2) − 1."""
    d = 784
    delta = _draw(GeneralizedGaussianNoise(0.25, 380, d), 3000, (1, 28, 28))
    u1 = (delta[:, 0] / delta.norm(dim=1)).numpy()
    assert stats.kstest((u1 + 1) / 2, stats.beta((d - 1) / 2, (d - 1) / 2).cdf).pvalue > 1e-3


@pytest.mark.parametrize("k", [380, 0])
def test_truncated_q_law(k):
    """Q = P restricted to ‖δ‖ ≤ T: every draw inside the ball, t ~ Gamma(d/2−k) conditioned on t ≤ β."""
    d, sigma, p_t = 784, 0.5, 0.6
    beta = truncation_beta(p_t, d, k)
    q = make_noise("truncated", sigma, d, k, percentile=p_t, beta=beta)
    t = (_draw(q, 3000, (1, 28, 28)).square().sum(1) / (2 * sigma_prime(sigma, d, k) ** 2)).numpy()
    assert t.max() <= beta * (1 + 1e-6)
    g = stats.gamma(d / 2 - k)
    assert stats.kstest(t, lambda x: np.minimum(g.cdf(x) / p_t, 1.0)).pvalue > 1e-3


def test_same_generator_same_noise_and_k_bounds():
    noise = GeneralizedGaussianNoise(0.25, 380, 784)
    assert torch.equal(_draw(noise, 10, (1, 28, 28), seed=3), _draw(noise, 10, (1, 28, 28), seed=3))
    assert not torch.equal(_draw(noise, 10, (1, 28, 28), seed=3), _draw(noise, 10, (1, 28, 28), seed=4))
    with pytest.raises(CertifyNetError) as e:
        GeneralizedGaussianNoise(0.25, 392, 784)
    assert str(e.value).startswith("k must be in [0, d/2 - 1] = [0, 391]")
    assert e.value.render(cli=True).startswith("--k must be in [0, d/2 - 1] = [0, 391]")
    with pytest.raises(CertifyNetError) as e:
        make_noise("gaussian", 0.25, 784, k=3)
    assert e.value.render(cli=True) == "--k > 0 needs --dist general_gaussian"
    assert str(e.value) == "k > 0 needs dist general_gaussian"


def test_noise_uses_the_certify_definitions():
    """One σ' and one range of k: the sampler's are certify's."""
    assert noise_mod.sigma_prime is dsrs.sigma_prime and noise_mod.check_k is dsrs.check_k
    assert not hasattr(noise_mod, "gamma_cdf")


def test_largest_k_for_odd_d_samples_its_law():
    """d = 3, k = 1 (2k = d − 1, the largest k): t = ‖δ‖²/(2σ'²) ~ Gamma(½), drawn from one coordinate."""
    d, k, sigma = 3, 1, 0.5
    t = (_draw(GeneralizedGaussianNoise(sigma, k, d), 3000, (3,)).square().sum(1)
         / (2 * sigma_prime(sigma, d, k) ** 2)).numpy()
    assert stats.kstest(t, stats.gamma(0.5).cdf).pvalue > 1e-3
    assert stats.kstest(t, stats.gamma(1.5).cdf).pvalue < 1e-6      # control: the Gaussian's law is rejected

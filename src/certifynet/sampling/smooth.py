"""`Smooth`: Cohen et al.'s smoothed classifier g(x) = argmax_c P(f(x + δ) = c) as a Python object, with the
paper's two procedures, CERTIFY and PREDICT, step by step.

The noise has one source. `Smooth(model, K, sigma=σ)` smooths with N(0, σ²I); `Smooth(model, K,
noise=GeneralizedGaussianNoise(σ, k, d))` with the generalized Gaussian (σ is then the noise's; a `sigma`
that disagrees with it is refused). The radius is the Neyman–Pearson radius of the noise the draws came
from: σΦ⁻¹(p̲_A) for the Gaussian, `certify.dsrs.generalized_np_radius` for k > 0, the numbers
`certify.py` derives from the same counts.
"""
from __future__ import annotations

import numbers

import torch

from certifynet.bounds import check_batch_memory
from certifynet.certify import cp_lower, np_radius, predict_from_counts
from certifynet.certify.dsrs import generalized_np_radius
from certifynet.certify.outcome import ABSTAIN
from certifynet.errors import CertifyNetError, check_alpha, check_sample_sizes
from certifynet.noise import GaussianNoise, GeneralizedGaussianNoise, Noise
from certifynet.sampling.engine import Sampler, check_finite_input
from certifynet.sampling.streams import STREAM_P, STREAM_SELECT, input_generator

SMOOTHING_NOISES = (GaussianNoise, GeneralizedGaussianNoise)  # P with a known NP radius (exact types)


def smoothing_noise(sigma: float | None, noise: Noise | None) -> Noise:
    """The noise P that `Smooth` samples and certifies with: N(0, σ²I) from σ, or `noise` itself, whose σ a
    given `sigma` must equal (a radius certified at another σ than the draws' would be wrong)."""
    if noise is None:
        if sigma is None:
            raise CertifyNetError("{sigma} is required (or pass {noise})", "sigma", "noise")
        return GaussianNoise(sigma)
    if type(noise) not in SMOOTHING_NOISES:
        raise CertifyNetError(f"{{noise}} must be a GaussianNoise or GeneralizedGaussianNoise (the noises with a "
                              f"Neyman–Pearson radius), got {type(noise).__name__}", "noise")
    if sigma is not None and float(sigma) != noise.sigma:
        raise CertifyNetError(f"{{sigma}}={sigma} disagrees with the σ={noise.sigma} of {{noise}}: the radius must be "
                              f"that of the noise the draws come from; give one of them", "sigma", "noise")
    return noise


def noise_radius(p_lower: float, noise: Noise) -> float:
    """The NP radius at p̲_A ≥ ½ under P = `noise`: σΦ⁻¹(p̲_A) for the Gaussian, the generalized-Gaussian
    radius for k > 0 (the same function `certify.from_counts.certify_row` uses)."""
    if isinstance(noise, GeneralizedGaussianNoise):
        return float(generalized_np_radius(p_lower, noise.sigma, noise.d, noise.k))
    return float(np_radius(p_lower, noise.sigma))


def check_noise_dim(x: torch.Tensor, noise: Noise) -> None:
    """A generalized-Gaussian P draws ‖δ‖ from its own d and certifies with d's radius: d must be x's
    dimension, or both the draws and the radius belong to another space."""
    d = getattr(noise, "d", None)
    if d is not None and d != x.numel():
        raise CertifyNetError(f"{{noise}} has input dimension d={d}, but x has {x.numel()} values "
                              f"(shape {tuple(x.shape)}): the radius holds only for noise of x's dimension", "noise")


def check_whole(**values) -> None:
    """Sample sizes are whole numbers (n = 1000.7 entered Clopper–Pearson as 1000.7 trials of 1000 draws)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer():
            raise CertifyNetError(f"{{{name}}} must be a whole number, got {v!r}", name)


def check_call(x: torch.Tensor, noise: Noise, batch) -> None:
    """x finite, of the noise's dimension, and `batch` noisy copies of it that fit in memory (before sampling)."""
    check_finite_input(x)
    check_noise_dim(x, noise)
    if isinstance(batch, int) and batch >= 1:  # the Sampler names a batch < 1 itself
        check_batch_memory(batch, x.numel())


class Smooth:
    """Cohen et al.'s smoothed classifier g(x) = argmax_c P(f(x+δ) = c), δ ~ P (module doc for P).

    Returns −1 (ABSTAIN) where Cohen's code does. `model` is left as it was (see `Sampler`).
    """
    ABSTAIN = ABSTAIN

    def __init__(self, model, num_classes: int, sigma: float | None = None, noise: Noise | None = None, device=None,
                 amp=False, channels_last=True, seed: int = 0, optimize: bool = True, cuda_graph: bool = False):
        self.noise = smoothing_noise(sigma, noise)
        self.sigma = self.noise.sigma
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise CertifyNetError(f"{{num_classes}} must be >= 1, got {num_classes}", "num_classes")
        self._model, self._device, self._amp, self._cl, self._opt = model, device, amp, channels_last, optimize
        self._graph = cuda_graph
        self._sampler = None
        self._calls = 0
        self.seed = seed

    def _sampler_for(self, batch):
        if self._sampler is None or self._sampler.batch != batch:
            self._sampler = Sampler(self._model, self.num_classes, batch, self._device, self._amp, self._cl, self._opt,
                                    self._graph)
        return self._sampler

    def _gen(self, stream):
        self._calls += 1
        return input_generator(self.seed, self._calls, stream, self._sampler.device)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch: int = 1000):
        """CERTIFY: ĉ_A from n0 selection draws, p̲_A = CP_lower(count; n, α) from n fresh draws; with
        probability ≥ 1 − α, (ĉ_A, R) with g constant on the ball of radius R, or (−1, 0.0) when p̲_A < ½."""
        check_alpha(alpha)
        check_whole(n0=n0, n=n, batch=batch)
        check_sample_sizes(n0, n, names=("n0", "n"))
        if n0 < 1:
            raise CertifyNetError(f"{{n0}} must be >= 1: ĉ_A is the top class of the n0 selection draws, got {n0}",
                                  "n0")
        check_call(x, self.noise, batch)
        s = self._sampler_for(batch)
        c_hat = int(s.counts(x, self.noise, n0, self._gen(STREAM_SELECT)).argmax())
        count = int(s.counts(x, self.noise, n, self._gen(STREAM_P))[c_hat])
        p_lower = cp_lower(count, n, alpha)
        if p_lower < 0.5:
            return self.ABSTAIN, 0.0
        return c_hat, noise_radius(p_lower, self.noise)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch: int = 1000) -> int:
        """PREDICT: the top class of n draws unless the binomial test of its count vs the runner-up's has p > α
        (then −1); returns a class other than g(x) with probability ≤ α."""
        check_alpha(alpha)
        check_whole(n=n, batch=batch)
        check_sample_sizes(0, n, names=("n0", "n"))
        check_call(x, self.noise, batch)
        counts = self._sampler_for(batch).counts_np(x, self.noise, n, self._gen(STREAM_P))
        return predict_from_counts(counts, alpha)[0]

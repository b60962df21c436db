"""The hot loop: batched noisy forward passes → class counts, and the `Smooth` Python API.

`Sampler.counts(x, noise, n, generator)` draws n noisy copies x + δ in batches of `batch`, reusing one
preallocated buffer, under `torch.inference_mode`, and accumulates argmax counts on the device with
`bincount`, so there is no host round-trip until the final counts. Memory is O(batch), flat in n.
On CUDA, `amp=True` runs the model in bf16 autocast. `channels_last=True` (the default) keeps image
batches in NHWC memory on any device: oneDNN and cuDNN convolutions run faster on it (1.3–1.5× for
LeNet/ResNet-20 on a 2-core CPU), and the arithmetic is the same fp32 up to summation order.
On the CPU, `optimize=True` (the default) runs full batches through a frozen TorchScript trace
(`torch.jit.optimize_for_inference`: BN folded into convs, oneDNN layouts; about 2× for LeNet and 1.4× for
ResNet-20 on 2 cores), checked against the eager model on a probe batch and dropped if they disagree.
In every case the smoothed classifier is that of the function actually evaluated (bf16, traced or eager):
certificates stay valid because the base classifier f is whatever deterministic function is sampled.

Noise streams: input `idx` draws from generators seeded by (seed, idx, stream) only, so results do not
depend on sharding, ordering or resumption.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from certifynet.certify import certify_from_counts, predict_abstains
from certifynet.errors import CertifyNetError, check_alpha, check_sample_sizes
from certifynet.noise import GaussianNoise, Noise

STREAM_SELECT, STREAM_P, STREAM_Q, STREAM_Q_PILOT = 0, 1, 2, 3
STREAM_ATTACK, STREAM_ATTACK_PREDICT = 4, 5  # certifynet.attack: PGD draws; PREDICT at the attacked point


def input_generator(seed: int, idx: int, stream: int, device) -> torch.Generator:
    """A torch.Generator on `device` seeded from (seed, idx, stream) through numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed), int(idx), int(stream)]).generate_state(2, np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g


def resolve_device(device: str | None = None) -> torch.device:
    """'auto'/None → CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise CertifyNetError(f"--device {device} requested but CUDA is not available")
    return torch.device(device)


def check_finite_input(x: torch.Tensor, idx=None) -> None:
    """Refuse NaN/Inf pixels with a one-line error (they would silently turn into one class)."""
    if not torch.isfinite(x).all():
        where = f" input {idx}" if idx is not None else " the input"
        raise CertifyNetError(f"NaN or Inf pixel values in{where}")


class Sampler:
    """Counts argmax_c f(x + δ) over n draws of δ, in batches of `batch`."""

    def __init__(self, model: torch.nn.Module, num_classes: int, batch: int = 1000, device=None,
                 amp: bool = False, channels_last: bool = True, optimize: bool = True):
        if batch < 1:
            raise CertifyNetError(f"--batch must be >= 1, got {batch}")
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.cuda = self.device.type == "cuda"
        self.channels_last = bool(channels_last)
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.num_classes, self.batch = int(num_classes), int(batch)
        self.amp = bool(amp and self.cuda)
        self.optimize = bool(optimize and not self.cuda)
        self._buf = None
        self._traced = {}

    def _traced_model(self, shape):
        """The frozen TorchScript trace for full batches of `shape` (CPU), or None when unavailable."""
        if not self.optimize:
            return None
        if shape not in self._traced:
            import warnings
            probe = torch.rand((self.batch, *shape), generator=torch.Generator().manual_seed(0))
            traced = None
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    traced = torch.jit.optimize_for_inference(torch.jit.trace(self.model, probe, check_trace=False))
                    if not torch.equal(traced(probe).argmax(1), self.model(probe).argmax(1)):
                        traced = None
            except Exception:  # untraceable model: use it eagerly
                traced = None
            self._traced[shape] = traced
        return self._traced[shape]

    def _buffer(self, shape):
        if self._buf is None or self._buf.shape[1:] != shape:
            fmt = (torch.channels_last if (self.channels_last and len(shape) == 3 and not self.optimize)
                   else torch.contiguous_format)
            self._buf = torch.empty((self.batch, *shape), device=self.device).contiguous(memory_format=fmt)
        return self._buf

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    @torch.inference_mode()
    def counts(self, x: torch.Tensor, noise: Noise, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class counts (LongTensor [K], on the device) of f(x + δ_j), j = 1..n, δ_j ~ noise."""
        x = x.to(self.device, non_blocking=True)
        shape = tuple(x.shape)
        traced = self._traced_model(shape) if n >= self.batch else None
        buf = self._buffer(shape)
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=self.device)
        remaining = int(n)
        with self._autocast():
            while remaining > 0:
                b = min(self.batch, remaining)
                view = buf[:b]
                noise.sample_(view, generator).add_(x)
                pred = (traced if (traced is not None and b == self.batch) else self.model)(view).argmax(1)
                counts += torch.bincount(pred, minlength=self.num_classes)[: self.num_classes]
                remaining -= b
        return counts

    def counts_np(self, x, noise, n, generator=None) -> np.ndarray:
        return self.counts(x, noise, n, generator).cpu().numpy()


class Smooth:
    """Cohen et al.'s smoothed classifier g(x) = argmax_c P(f(x+δ) = c) with δ from `noise` (default N(0,σ²I)).

    Returns −1 (ABSTAIN) where Cohen's code does.
    """
    ABSTAIN = -1

    def __init__(self, model, num_classes: int, sigma: float, noise: Noise | None = None, device=None,
                 amp=False, channels_last=True, seed: int = 0, optimize: bool = True):
        self.sigma = float(sigma)
        self.noise = noise or GaussianNoise(sigma)
        self.num_classes = int(num_classes)
        self._model, self._device, self._amp, self._cl, self._opt = model, device, amp, channels_last, optimize
        self._sampler = None
        self._calls = 0
        self.seed = seed

    def _sampler_for(self, batch):
        if self._sampler is None or self._sampler.batch != batch:
            self._sampler = Sampler(self._model, self.num_classes, batch, self._device, self._amp, self._cl, self._opt)
        return self._sampler

    def _gen(self, stream):
        self._calls += 1
        return input_generator(self.seed, self._calls, stream, self._sampler.device)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch: int = 1000):
        """CERTIFY: ĉ_A from n0 selection draws, p̲_A from n fresh draws; (ĉ_A, σΦ⁻¹(p̲_A)) or (−1, 0.0)."""
        check_alpha(alpha)
        check_sample_sizes(n0, n)
        check_finite_input(x)
        s = self._sampler_for(batch)
        c_hat = int(s.counts(x, self.noise, max(n0, 1), self._gen(STREAM_SELECT)).argmax())
        count = int(s.counts(x, self.noise, n, self._gen(STREAM_P))[c_hat])
        abstain, _, radius = certify_from_counts(count, n, self.sigma, alpha)
        return (self.ABSTAIN, 0.0) if abstain else (c_hat, radius)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch: int = 1000) -> int:
        """PREDICT: top class unless the binomial test of its count vs the runner-up's has p > α."""
        check_alpha(alpha)
        check_sample_sizes(0, n)
        check_finite_input(x)
        counts = self._sampler_for(batch).counts_np(x, self.noise, n, self._gen(STREAM_P))
        top2 = np.argsort(counts)[::-1][:2]
        return self.ABSTAIN if predict_abstains(counts[top2[0]], counts[top2[1]], alpha) else int(top2[0])

"""Attacks on the smoothed classifier: SmoothAdv's L2 PGD, the certificate audit, empirical robust accuracy.

**The attack** (Salman et al., NeurIPS 2019) runs on the smoothed soft classifier, estimated with m draws,
p̂(x) = (1/m) Σ_i softmax f(x + δ_i).  For input x and class c (the certified class, or the label):

    x^0 = x (first restart) or a uniform point of the ε-ball (further restarts),
    x^{t+1} = clip_[0,1](Π_ε(x^t + s·g/‖g‖₂)),   g = ∇_x −log p̂(x^t)_c,   s = 2ε/T,   t = 0 … T−1,

which is ``training.losses.smoothed_pgd_path`` (SmoothAdv training uses the same code): the same m draws at
every step of a restart, and the m·B noisy copies of a batch of B inputs in one forward/backward pass.  Of
the restarts it keeps the end point with the smallest p̂_c on m further draws (not those it descended on).
It works for any base model (a denoiser in front included) and any `certifynet.noise` distribution.

**Seeds.**  Input idx draws its attack noise from ``input_generator(seed, idx, STREAM_ATTACK)`` and the
PREDICT draws at the attacked point from ``STREAM_ATTACK_PREDICT``: independent of every sampling stream (so
of the certificate's draws) and of how inputs are batched, so runs reproduce.  A K-step diffusion denoiser in
the model draws its noise ξ from the same input's stream (`diffusion_noise_stream`): PREDICT's from input idx's,
the attack's from the first input of its batch (the attack is not a certificate: only its reproducibility
depends on the batching).

**Audit.**  A certificate (c, R) claims g(x') = c for ‖x' − x‖ < R, with probability ≥ 1 − α_c over its own
draws.  PREDICT with n fresh draws at any x' returns a class other than g(x') with probability ≤ α_p (Cohen
et al. 2019, Thm. 2).  So whatever the attack does, each certified input has P(violation) ≤ α_c + α_p, where
a violation is PREDICT(x + δ) ∉ {c, abstain} with ‖δ‖ ≤ R; over n independent inputs the number of
violations v is stochastically below Binomial(n, α_c + α_p).  The audit reports v/n with its one-sided
Clopper–Pearson upper bound, and flags the certificates when the binomial test of H0: rate ≤ α_c + α_p
rejects at `level`, i.e. p = P[Bin(n, α_c + α_p) ≥ v] < level.

**Empirical robust accuracy** at ε is the fraction of inputs where PREDICT at the attacked point x + δ_ε
(attacking the label) returns the label; an abstain counts as wrong.  Certified accuracy at r = ε is, up to
α, a lower bound on it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy.stats import binom

from certifynet.certify import cp_upper, predict_from_counts
from certifynet.denoise.diffusion.denoiser import diffusion_noise_stream
from certifynet.errors import CertifyNetError
from certifynet.noise import Noise
from certifynet.sampling.engine import Sampler
from certifynet.sampling.streams import STREAM_ATTACK, STREAM_ATTACK_PREDICT, input_generator
from certifynet.training.losses import smoothed_pgd_path, smoothed_soft_nll


@dataclass
class AttackResult:
    """Per input of a batch: the attacked point, p̂_c there on held-out draws, and argmax f (no noise) there."""
    x_adv: torch.Tensor
    soft_p: torch.Tensor
    base_pred: torch.Tensor


class SmoothedPGD:
    """L2 PGD on the smoothed soft classifier (module doc), for batches of inputs with per-input ε."""

    def __init__(self, model: torch.nn.Module, noise: Noise, m: int = 32, steps: int = 20, restarts: int = 1,
                 seed: int = 0, device=None):
        for name, v in (("--m", m), ("--steps", steps), ("--restarts", restarts)):
            if int(v) < 1:
                raise CertifyNetError(f"{name} must be >= 1, got {v}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.noise, self.m, self.steps, self.restarts, self.seed = noise, int(m), int(steps), int(restarts), seed

    def _draw(self, gens, x: torch.Tensor) -> torch.Tensor:
        """m draws per input from its own generator, shaped (m, B, *x.shape[1:])."""
        buf = torch.empty((x.shape[0], self.m, *x.shape[1:]), device=x.device, dtype=x.dtype)
        for b, g in enumerate(gens):
            self.noise.sample_(buf[b], g)
        return buf.transpose(0, 1)

    @staticmethod
    def _random_start(gens, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x + a uniform point of each input's ε-ball (direction u/‖u‖, u ~ N(0, I); norm ε·U^(1/d))."""
        d = x[0].numel()
        out = torch.empty_like(x)
        for b, g in enumerate(gens):
            u = torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
            r = eps[b] * torch.rand((), generator=g, device=x.device, dtype=x.dtype) ** (1.0 / d)
            out[b] = x[b] + u * (r / u.norm().clamp_min(1e-12))
        return out

    @torch.no_grad()
    def _soft_p(self, gens, x, target):
        return torch.exp(-smoothed_soft_nll(self.model, x, target, self._draw(gens, x)))

    def attack(self, x: torch.Tensor, target: torch.Tensor, eps, idxs: Sequence[int]) -> AttackResult:
        """Attack a batch x (B, C, H, W) away from classes `target` (B,) within radii `eps` (B,) or a float."""
        with diffusion_noise_stream(self.model, self.seed, int(idxs[0]), STREAM_ATTACK):
            return self._attack(x, target, eps, idxs)

    def _attack(self, x: torch.Tensor, target: torch.Tensor, eps, idxs: Sequence[int]) -> AttackResult:
        x = x.to(self.device, torch.float32)
        target = torch.as_tensor(target, device=self.device, dtype=torch.long)
        eps = torch.as_tensor(eps, device=self.device, dtype=x.dtype).expand(x.shape[0]).contiguous()
        if not torch.isfinite(eps).all() or (eps < 0).any():
            raise CertifyNetError(f"attack radii must be finite and >= 0, got {eps.tolist()}")
        gens = [input_generator(self.seed, int(i), STREAM_ATTACK, self.device) for i in idxs]
        best_x, best_p = x.clone(), torch.full((x.shape[0],), math.inf, device=self.device)
        runs = self.restarts if float(eps.max()) > 0 else 0
        for r in range(runs):
            start = None if r == 0 else self._random_start(gens, x, eps)
            _, x_r = smoothed_pgd_path(self.model, x, target, self._draw(gens, x), self.steps,
                                       2.0 * eps / self.steps, maxnorm=eps, start=start)
            p = self._soft_p(gens, x_r, target)
            better = p < best_p
            best_x[better], best_p = x_r[better], torch.where(better, p, best_p)
        if runs == 0:
            best_p = self._soft_p(gens, x, target)
        with torch.no_grad():
            base_pred = self.model(best_x).argmax(1)
        return AttackResult(best_x, best_p, base_pred)


def predict_at(sampler: Sampler, noise: Noise, x: torch.Tensor, n: int, alpha: float, seed: int, idx: int) -> dict:
    """Cohen's PREDICT at x with n draws from input idx's STREAM_ATTACK_PREDICT: predict (−1 = abstain), the
    top two counts, the p-value, and the class counts."""
    with diffusion_noise_stream(sampler._source, seed, idx, STREAM_ATTACK_PREDICT):
        counts = sampler.counts_np(x, noise, n, input_generator(seed, idx, STREAM_ATTACK_PREDICT, sampler.device))
    pred, n1, n2, pvalue = predict_from_counts(counts, alpha)
    return {"predict": pred, "count1": n1, "count2": n2, "pvalue": pvalue, "counts": counts}


def attack_and_predict(attacker: SmoothedPGD, sampler: Sampler, noise: Noise, x: torch.Tensor, target, eps,
                       idxs: Sequence[int], n: int, alpha: float) -> list:
    """Attack a batch, then PREDICT at each attacked point with fresh draws.  One dict per input: eps, adv_norm
    (‖δ‖₂), base_flip (argmax f(x+δ) ≠ target), soft_p, predict, p_hat (fraction of the n draws on target),
    count1, count2, pvalue, time (seconds: the batch's attack shared equally, plus its own PREDICT)."""
    t0 = time.time()
    res = attacker.attack(x, target, eps, idxs)
    norms = (res.x_adv - x.to(res.x_adv.device)).flatten(1).norm(dim=1).tolist()
    eps_list = torch.as_tensor(eps, dtype=torch.float64).expand(len(idxs)).tolist()
    share = (time.time() - t0) / len(idxs)
    rows = []
    for b, idx in enumerate(idxs):
        t1 = time.time()
        c = int(target[b])
        pr = predict_at(sampler, noise, res.x_adv[b], n, alpha, attacker.seed, int(idx))
        rows.append({"eps": float(eps_list[b]), "adv_norm": float(norms[b]), "base_flip": int(int(res.base_pred[b]) != c),
                     "soft_p": float(res.soft_p[b]), "predict": pr["predict"], "p_hat": float(pr["counts"][c]) / n,
                     "count1": pr["count1"], "count2": pr["count2"], "pvalue": pr["pvalue"],
                     "time": round(share + time.time() - t1, 4)})
    return rows


@dataclass
class AuditSummary:
    """Counts and the binomial verdict of an audit (module doc)."""
    attacked: int
    violations: int
    alpha_cert: float
    alpha_predict: float
    level: float

    @property
    def allowed(self) -> float:
        """α_c + α_p: the largest violation rate sound certificates allow."""
        return self.alpha_cert + self.alpha_predict

    @property
    def rate(self) -> float:
        return self.violations / self.attacked if self.attacked else math.nan

    @property
    def upper(self) -> float:
        """One-sided (1 − level) Clopper–Pearson upper bound on the violation rate."""
        return cp_upper(self.violations, self.attacked, self.level) if self.attacked else math.nan

    @property
    def p_value(self) -> float:
        """P[Bin(n, α_c + α_p) ≥ v]."""
        return float(binom.sf(self.violations - 1, self.attacked, self.allowed)) if self.attacked else 1.0

    @property
    def flagged(self) -> bool:
        return self.p_value < self.level

    def as_dict(self) -> dict:
        return {"attacked": self.attacked, "violations": self.violations, "rate": self.rate, "upper": self.upper,
                "alpha_cert": self.alpha_cert, "alpha_predict": self.alpha_predict, "allowed": self.allowed,
                "p_value": self.p_value, "level": self.level, "flagged": self.flagged}

    def report(self) -> str:
        if not self.attacked:
            return "audit: no certified input (R > 0) to attack"
        verdict = (f"CERTIFICATES VIOLATED: {self.violations} violations are too many for α_c + α_p "
                   f"(p = {self.p_value:.3g} < {self.level:g})" if self.flagged else
                   f"consistent with α: {self.violations} violations are within α_c + α_p "
                   f"(p = {self.p_value:.3g} ≥ {self.level:g})")
        return (f"audit: {self.attacked} certified inputs attacked, {self.violations} violations, rate "
                f"{self.rate:.4f} (Clopper–Pearson {1 - self.level:.0%} upper bound {self.upper:.4f}); allowed "
                f"α_c + α_p = {self.alpha_cert:g} + {self.alpha_predict:g} = {self.allowed:g}\nverdict: {verdict}")


def certified_targets(rows, eps_scale: float = 1.0) -> list:
    """(idx, label, certified class c, radius R, ε = R·eps_scale) for the rows of a certify log with c ≥ 0, R > 0."""
    if not (math.isfinite(eps_scale) and eps_scale > 0):
        raise CertifyNetError(f"--eps-scale must be a finite number > 0, got {eps_scale}")
    out = []
    for r in rows:
        c, radius = int(float(r["predict"])), float(r["radius"])
        if c >= 0 and radius > 0 and math.isfinite(radius):
            out.append((int(float(r["idx"])), int(float(r["label"])), c, radius, radius * eps_scale))
    return sorted(out)


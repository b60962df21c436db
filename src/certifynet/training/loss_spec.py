"""Which loss of ``certifynet.training.losses`` a step computes, and on which chunk of the batch.

- **Batching (as the references).** Each loader batch of B images is cut into m = ``num_noise_vec`` chunks of
  B//m images (a remainder is dropped, like the reference ``get_minibatches``): `split_batch`. Each chunk is
  one optimizer step on its m noisy copies.
- **Dispatch** (`LossSpec`): ``gaussian`` = CE(f(x+δ), y) (the mean over the m copies when m > 1);
  ``consistency`` = CE + λ·KL(p̂‖p_i) + η·H (η = λ and H(softmax p̂) without ``eta``, the DSRS variant);
  ``smoothmix`` = CE + η·w·mixup-KL with w = min(1, (t+1)/warmup); ``smoothadv`` = mean CE(f(x'+δ_i), y) on
  the SmoothAdv PGD point x' with radius ε_t = ε·min(1, (t+1)/warmup).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from certifynet.training.config import TrainConfig, resolve_entropy, resolve_method
from certifynet.training.losses import NoiseFn, Stats, consistency_loss, gaussian_loss, smoothadv_loss, smoothmix_loss
from certifynet.training.schedule import smoothmix_warmup_weight


@dataclass(frozen=True)
class LossSpec:
    """Which loss a step computes: ``spec(model, x, y, noise_fn, epoch, generator) -> (loss, stats)``."""
    method: str = "gaussian"
    m: int = 1
    lbd: float = 0.0
    eta: float | None = None
    num_steps: int = 8
    alpha: float = 1.0
    mix_step: int = 0
    maxnorm_s: float | None = None
    maxnorm: float | None = None
    warmup: int = 10
    num_classes: int | None = None
    dsrs_entropy: bool = False
    eps: float = 0.25
    attack_steps: int = 10

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int) -> LossSpec:
        return cls(method=resolve_method(cfg), m=cfg.num_noise_vec, lbd=cfg.lbd, eta=cfg.eta,
                   num_steps=cfg.num_steps, alpha=cfg.alpha, mix_step=cfg.mix_step, maxnorm_s=cfg.maxnorm_s,
                   maxnorm=cfg.maxnorm, warmup=cfg.warmup, num_classes=num_classes,
                   dsrs_entropy=resolve_entropy(cfg) == "dsrs", eps=cfg.eps, attack_steps=cfg.attack_steps)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise_fn: NoiseFn, epoch: int = 0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Stats]:
        if self.method == "smoothadv":
            return smoothadv_loss(model, x, y, noise_fn, self.m, eps=self.eps, num_steps=self.attack_steps,
                                  warmup_weight=smoothmix_warmup_weight(epoch, self.warmup))
        if self.method == "smoothmix":
            return smoothmix_loss(model, x, y, noise_fn, self.m, num_steps=self.num_steps, step_alpha=self.alpha,
                                  eta=1.0 if self.eta is None else self.eta,
                                  warmup_weight=smoothmix_warmup_weight(epoch, self.warmup),
                                  num_classes=self.num_classes, mix_step=self.mix_step, maxnorm=self.maxnorm,
                                  maxnorm_s=self.maxnorm_s, generator=generator)
        if self.method == "consistency":
            return consistency_loss(model, x, y, noise_fn, self.m, self.lbd, self.eta, dsrs_entropy=self.dsrs_entropy)
        if self.m == 1:
            return gaussian_loss(model, x, y, noise_fn)
        return consistency_loss(model, x, y, noise_fn, self.m, 0.0, 0.0)  # mean CE over the m copies


def split_batch(x: torch.Tensor, y: torch.Tensor, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The reference batching: m chunks of len(x)//m images (remainder dropped); [] when len(x) < m."""
    size = x.shape[0] // m
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(m)] if size else []

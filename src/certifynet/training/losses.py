"""Training losses for base classifiers of randomized smoothing.

Notation (training.md): f = logit network incl. its normalisation, x ∈ [0,1]^d, δ_i = noise_fn(x) (added in
pixel space, no clipping), p_i = softmax f(x+δ_i), p̂ = (1/m) Σ_i p_i.

Return convention, for every loss: ``(loss, stats)`` where ``loss`` is the differentiable scalar and ``stats`` a
dict of detached 0-dim tensors for logging (call ``.item()`` only when logging, to avoid a device sync per step).

The m noisy copies of a batch are stacked into one forward pass of m·B inputs.  To keep the compute of the
published recipes, the training loop should feed B/m images per call (the references split each loader batch
into m chunks).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NoiseFn = Callable[[Tensor], Tensor]
Stats = dict[str, Tensor]

PROB_FLOOR = 1e-20  # probabilities are clamped here before a log


def _draw_noises(noise_fn: NoiseFn, x: Tensor, m: int) -> Tensor:
    """m independent draws δ_i = noise_fn(x), stacked to shape (m, *x.shape)."""
    if m < 1:
        raise ValueError(f"m (number of noise draws) must be >= 1, got {m}")
    return torch.stack([noise_fn(x) for _ in range(m)])


def _noisy_logits(model: nn.Module, x: Tensor, noises: Tensor) -> Tensor:
    """f(x+δ_i) for all i in one forward pass; returns logits of shape (m, B, K)."""
    m, b = noises.shape[0], x.shape[0]
    return model((x.unsqueeze(0) + noises).reshape(m * b, *x.shape[1:])).reshape(m, b, -1)


def _kl(p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ_c p_c (log p_c − log q_c) over the last dim, p clamped at PROB_FLOOR inside the log."""
    return (p * (p.clamp_min(PROB_FLOOR).log() - log_q)).sum(-1)


def _entropy(p: Tensor) -> Tensor:
    """H(p) = −Σ_c p_c log p_c over the last dim, p clamped at PROB_FLOOR inside the log."""
    return -(p * p.clamp_min(PROB_FLOOR).log()).sum(-1)


def _ce_and_p_hat(model: nn.Module, x: Tensor, y: Tensor, noises: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (mean_{i,b} CE(f(x+δ_i), y), log p_i of shape (m,B,K), p̂ of shape (B,K))."""
    logits = _noisy_logits(model, x, noises)
    ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(noises.shape[0]))
    log_p = F.log_softmax(logits, dim=-1)
    return ce, log_p, log_p.exp().mean(0)


def gaussian_loss(model: nn.Module, x: Tensor, y: Tensor, noise_fn: NoiseFn) -> tuple[Tensor, Stats]:
    """Gaussian augmentation (Cohen et al. 2019): L = CE(f(x+δ), y), batch mean.  Stats: ce."""
    ce = F.cross_entropy(model(x + noise_fn(x)), y)
    return ce, {"ce": ce.detach()}


def consistency_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noise_fn: NoiseFn,
    m: int,
    lbd: float,
    eta: float | None = None,
    *,
    detach_target: bool = False,
    dsrs_entropy: bool = False,
) -> tuple[Tensor, Stats]:
    """Consistency regularisation (Jeong & Shin 2020), batch mean of

        L = (1/m) Σ_i CE(f(x+δ_i), y) + λ·(1/m) Σ_i KL(p̂ ‖ p_i) + η·H(p̂).

    eta: None → η = λ, i.e. the DSRS variant L = CE + λ·(KL + H) that the seed commands (``--lbd`` only)
        select.  Jeong & Shin's own recipes pass η explicitly (their CLI default is 0.5).
    detach_target: default False = the reference: gradients flow through p̂ in KL(p̂ ‖ p_i), which is what the
        published numbers were trained with.  True treats p̂ as a constant soft target in the KL term only
        (H(p̂) always keeps its gradient, otherwise the η term would do nothing).
    dsrs_entropy: the DSRS code's entropy term is actually H(softmax(p̂)) (its helper re-applies softmax to the
        probabilities), a nearly constant, weak term.  True reproduces that exactly; False (default) uses the
        documented H(p̂).
    Stats: ce, kl, ent (ent is whichever entropy term enters the loss).
    """
    if eta is None:
        eta = lbd
    ce, log_p, p_hat = _ce_and_p_hat(model, x, y, _draw_noises(noise_fn, x, m))
    target = p_hat.detach() if detach_target else p_hat
    kl = _kl(target, log_p).mean()  # mean over i and b
    if dsrs_entropy:
        ent = -(F.softmax(p_hat, -1) * F.log_softmax(p_hat, -1)).sum(-1).mean()
    else:
        ent = _entropy(p_hat).mean()
    loss = ce + lbd * kl + eta * ent
    return loss, {"ce": ce.detach(), "kl": kl.detach(), "ent": ent.detach()}


def _per_sample(v: float | Tensor, x: Tensor) -> float | Tensor:
    """A float as is; a per-sample tensor (B,) viewed as (B, 1, ..., 1) to broadcast against x."""
    return v.view(-1, *([1] * (x.dim() - 1))) if isinstance(v, Tensor) else v


def _project(x_t: Tensor, x: Tensor, radius: float | Tensor | None) -> Tensor:
    """clip_[0,1](Π(x_t)): Π scales x_t − x per sample onto the L2 ball of the given radius (None: no ball;
    a tensor (B,): one radius per sample). Clipping only shrinks |x_t − x|, so the result stays in the ball."""
    if radius is not None:
        diff = x_t - x
        norm = diff.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (radius / norm).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
        x_t = x + diff * scale
    return x_t.clamp(0.0, 1.0)


def smoothed_soft_nll(model: nn.Module, x: Tensor, y: Tensor, noises: Tensor) -> Tensor:
    """Per-sample −log p̂(x)_y, p̂(x) = (1/m) Σ_i softmax f(x + δ_i) (one forward of m·B inputs, p̂ clamped at
    PROB_FLOOR before the log): the loss of the smoothed soft classifier that SmoothMix and SmoothAdv ascend."""
    p_hat = F.softmax(_noisy_logits(model, x, noises), dim=-1).mean(0)
    return -p_hat.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(PROB_FLOOR).log()


def smoothed_pgd_path(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noises: Tensor | Sequence[Tensor],
    num_steps: int,
    step_size: float | Tensor,
    maxnorm: float | Tensor | None = None,
    *,
    start: Tensor | None = None,
    keep_step: int = 0,
) -> tuple[Tensor, Tensor]:
    """Normalised-gradient L2 ascent on the smoothed soft classifier's loss (SmoothMix, SmoothAdv):

        x^0 = start (default x),  x^{t+1} = clip_[0,1](Π_maxnorm(x^t + s·g/‖g‖₂)),  g = ∇_x Σ_b −log p̂(x^t)_y,

    with ``smoothed_soft_nll``'s p̂, the same δ_i at every step, ‖g‖₂ per sample and Π the projection onto the
    L2 ball of radius maxnorm around x (None: unbounded).  step_size s and maxnorm are floats or per-sample
    tensors (B,).  Returns (x^keep_step, x^T), both detached.

    noises: tensor (m, *x.shape) or a sequence of m tensors shaped like x.  The model runs in eval mode and its
    previous mode is restored; parameter .grad is never touched (the gradient is taken w.r.t. x only).
    """
    if not 0 <= keep_step <= num_steps:
        raise ValueError(f"keep_step must be in [0, num_steps={num_steps}], got {keep_step}")
    noises = noises if isinstance(noises, Tensor) else torch.stack(list(noises))
    noises = noises.detach()
    x = x.detach()
    step = _per_sample(step_size, x)

    was_training = model.training
    model.eval()
    try:
        x_t = x if start is None else _project(start.detach(), x, maxnorm)
        x_kept = x_t
        with torch.enable_grad():
            for t in range(num_steps):
                x_t = x_t.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(smoothed_soft_nll(model, x_t, y, noises).sum(), [x_t])
                g_norm = _per_sample(g.flatten(1).norm(dim=1).clamp_min(1e-12), x)
                x_t = _project(x_t.detach() + step * g / g_norm, x, maxnorm)
                if t + 1 == keep_step:
                    x_kept = x_t
    finally:
        model.train(was_training)
    return x_kept.detach(), x_t.detach()


def smoothmix_adversarial_path(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noises: Tensor | Sequence[Tensor],
    num_steps: int,
    step_alpha: float,
    maxnorm: float | None = None,
    mix_step: int = 0,
    maxnorm_s: float | None = None,
) -> tuple[Tensor, Tensor]:
    """SmoothMix adversarial path on the smoothed soft classifier (Jeong et al. 2021).

        x^0 = x,  x^{t+1} = clip_[0,1](Π_maxnorm(x^t + α·g/‖g‖₂)),  g = ∇_x Σ_b −log p̂(x^t)_y,

    (``smoothed_pgd_path`` with step α), with p̂(x^t) = (1/m) Σ_i softmax f(x^t + δ_i) (p̂ clamped at 1e-20 before
    the log), the same δ_i at every step, and ‖g‖₂ taken per sample.  Returns (x_init, x_adv), both detached:
    x_adv = x^T and x_init = clip_[0,1](Π_{maxnorm_s}(x^{mix_step})).

    noises: tensor (m, *x.shape) or a sequence of m tensors shaped like x.
    maxnorm_s: None → α·mix_step.  The caller multiplies in the warm-up weight w (``smoothmix_loss`` does).
    mix_step must lie in [0, num_steps]; mix_step = num_steps gives x^T (the reference code silently returns x
    there).  The model runs in eval mode and its previous mode is restored; parameter .grad is never touched.
    """
    if not 0 <= mix_step <= num_steps:
        raise ValueError(f"mix_step must be in [0, num_steps={num_steps}], got {mix_step}")
    if maxnorm_s is None:
        maxnorm_s = step_alpha * mix_step
    x_mix_step, x_adv = smoothed_pgd_path(model, x, y, noises, num_steps, step_alpha, maxnorm, keep_step=mix_step)
    return _project(x_mix_step, x.detach(), maxnorm_s).detach(), x_adv


def smoothmix_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noise_fn: NoiseFn,
    m: int,
    *,
    num_steps: int,
    step_alpha: float,
    eta: float,
    warmup_weight: float,
    num_classes: int | None = None,
    mix_step: int = 0,
    maxnorm: float | None = None,
    maxnorm_s: float | None = None,
    detach_target: bool = False,
    clean_at_init: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Stats]:
    """SmoothMix (Jeong et al. 2021), with x̃ the clean point (see clean_at_init):

        L = mean_{i,b} CE(f(x̃+δ_i), y) + η·w·mean_{i,b}[𝟙(argmax p̂(x̃) = y)·KL(ŷ_mix ‖ softmax f(x_mix+δ_i))],
        x_mix = (1−λ)·x_init + λ·x_adv,  ŷ_mix = (1−λ)·p̂(x̃) + λ·(1/K)𝟙,  λ ~ U[0, ½] per sample,

    (x_init, x_adv) from ``smoothmix_adversarial_path`` with radius maxnorm_s·w (maxnorm_s None → α·mix_step),
    and the same m draws δ_i for the path and both loss terms.  w = warmup_weight (see
    ``schedule.smoothmix_warmup_weight``).  λ is drawn from ``generator`` (global RNG if None).

    clean_at_init: default True = the reference code, whose attack returns x_init in place of x, so the CE term
        and p̂ use x̃ = x_init.  With mix_step = 0 (the CLI default) x_init = x and both choices coincide; False
        uses x̃ = x as training.md's formula reads.
    detach_target: default False = the reference: gradients flow through p̂(x̃) inside ŷ_mix.  True makes ŷ_mix
        a constant soft label.
    num_classes: K; None → taken from the logits (if given it must match them).
    Stats: ce, mix (the masked KL mean), acc_p_hat (fraction of samples with argmax p̂ = y).
    """
    noises = _draw_noises(noise_fn, x, m)
    radius = warmup_weight * (step_alpha * mix_step if maxnorm_s is None else maxnorm_s)
    x_init, x_adv = smoothmix_adversarial_path(
        model, x, y, noises, num_steps, step_alpha, maxnorm=maxnorm, mix_step=mix_step, maxnorm_s=radius
    )

    ce, _, p_hat = _ce_and_p_hat(model, x_init if clean_at_init else x, y, noises)
    k = p_hat.shape[-1]
    if num_classes is not None and num_classes != k:
        raise ValueError(f"num_classes={num_classes} but the model outputs {k} logits")
    correct = (p_hat.detach().argmax(-1) == y).to(p_hat.dtype)

    dev = generator.device if generator is not None else x.device
    lam = (torch.rand(x.shape[0], generator=generator, device=dev) / 2).to(device=x.device, dtype=x.dtype)
    lam_x = lam.view(-1, *([1] * (x.dim() - 1)))
    x_mix = (1 - lam_x) * x_init + lam_x * x_adv
    target = p_hat.detach() if detach_target else p_hat
    lam_p = lam.view(-1, 1).to(p_hat.dtype)
    y_mix = (1 - lam_p) * target + lam_p / k

    log_q = F.log_softmax(_noisy_logits(model, x_mix, noises), dim=-1)  # (m, B, K)
    mix = (correct * _kl(y_mix, log_q)).mean()  # mean over i and b, incorrect samples count as 0
    loss = ce + eta * warmup_weight * mix
    return loss, {"ce": ce.detach(), "mix": mix.detach(), "acc_p_hat": correct.mean()}


def smoothadv_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noise_fn: NoiseFn,
    m: int,
    *,
    eps: float,
    num_steps: int,
    warmup_weight: float = 1.0,
) -> tuple[Tensor, Stats]:
    """SmoothAdv (Salman et al., NeurIPS 2019), trained on PGD points of the smoothed soft classifier:

        L = mean_{i,b} CE(f(x' + δ_i), y),   x' = x^T of ``smoothed_pgd_path`` from x^0 = x with
        T = num_steps steps of size 2ε_t/T, radius ε_t = w·ε, and the same m draws δ_i for the attack and the loss,

    where w = warmup_weight (ε warm-up: ``schedule.smoothmix_warmup_weight(epoch, warmup)`` = min(1, (t+1)/warmup),
    i.e. ε_t = min(ε, (t+1)·ε/warmup) as in the reference).  ε_t = 0 or T = 0 is Gaussian augmentation on the m
    copies.  All m noisy copies enter the loss (the reference's ``--train-multi-noise``).
    Stats: ce, adv_norm (mean ‖x' − x‖₂).
    """
    noises = _draw_noises(noise_fn, x, m)
    eps_t = float(eps) * float(warmup_weight)
    x_adv = x.detach()
    if eps_t > 0 and num_steps > 0:
        _, x_adv = smoothed_pgd_path(model, x, y, noises, num_steps, 2.0 * eps_t / num_steps, maxnorm=eps_t)
    ce, _, _ = _ce_and_p_hat(model, x_adv, y, noises)
    adv_norm = (x_adv - x.detach()).flatten(1).norm(dim=1).mean()
    return ce, {"ce": ce.detach(), "adv_norm": adv_norm.detach()}

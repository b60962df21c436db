"""Training losses and schedules: tiny hand-computed examples (expected values via explicit numpy math)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from certifynet.training import (
    consistency_loss,
    gaussian_loss,
    k_at,
    smoothadv_loss,
    smoothed_pgd_path,
    smoothmix_adversarial_path,
    smoothmix_loss,
    smoothmix_warmup_weight,
)

W = np.array([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]])  # K=3 classes, d=2 inputs
B_ = np.array([0.1, 0.0, -0.1])


def linear_model():
    lin = nn.Linear(2, 3).double()  # float64 everywhere: tight comparisons with numpy
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
        lin.bias.copy_(torch.tensor(B_))
    return lin


def queued_noise(*deltas):
    """Deterministic noise_fn: returns the given arrays in order, one per call."""
    queue = [torch.tensor(np.asarray(d, dtype=float)) for d in deltas]

    def noise_fn(x):
        d = queue.pop(0)
        assert d.shape == x.shape
        return d

    return noise_fn


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ce(z, y):  # per-sample CE from logits
    return np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]


def jac_softmax(p):  # ∂softmax/∂z = diag(p) − p pᵀ
    return np.diag(p) - np.outer(p, p)


X = np.array([[0.2, 0.7], [0.9, 0.1]])
Y = np.array([1, 0])
D1 = np.array([[0.1, -0.2], [0.0, 0.3]])
D2 = np.array([[-0.3, 0.25], [0.2, -0.1]])


def t(a):
    return torch.tensor(a)


# ------------------------------------------------------------------ Gaussian


def test_gaussian_loss_hand_value():
    loss, stats = gaussian_loss(linear_model(), t(X), t(Y), queued_noise(D1))
    z = (X + D1) @ W.T + B_
    expected = ce(z, Y).mean()
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["ce"].item() == pytest.approx(expected, abs=1e-12)
    assert not stats["ce"].requires_grad


# ------------------------------------------------------------------ consistency


def _consistency_np(deltas, lbd, eta, dsrs_entropy=False):
    z = np.stack([(X + d) @ W.T + B_ for d in deltas])  # (m, B, K)
    p = softmax(z)
    p_hat = p.mean(0)
    ce_ = np.mean([ce(zi, Y) for zi in z])
    kl = np.mean((p_hat * (np.log(p_hat) - np.log(p))).sum(-1))
    if dsrs_entropy:
        q = softmax(p_hat)
        ent = np.mean(-(q * np.log(q)).sum(-1))
    else:
        ent = np.mean(-(p_hat * np.log(p_hat)).sum(-1))
    return ce_ + lbd * kl + eta * ent, ce_, kl, ent


@pytest.mark.parametrize("dsrs_entropy", [False, True])
def test_consistency_hand_value(dsrs_entropy):
    loss, stats = consistency_loss(
        linear_model(), t(X), t(Y), queued_noise(D1, D2), m=2, lbd=2.0, eta=0.3, dsrs_entropy=dsrs_entropy
    )
    exp_loss, exp_ce, exp_kl, exp_ent = _consistency_np([D1, D2], 2.0, 0.3, dsrs_entropy)
    assert exp_kl > 1e-3  # the example is not degenerate
    assert loss.item() == pytest.approx(exp_loss, abs=1e-12)
    assert stats["ce"].item() == pytest.approx(exp_ce, abs=1e-12)
    assert stats["kl"].item() == pytest.approx(exp_kl, abs=1e-12)
    assert stats["ent"].item() == pytest.approx(exp_ent, abs=1e-12)


def test_consistency_eta_none_is_dsrs_variant():
    loss, _ = consistency_loss(linear_model(), t(X), t(Y), queued_noise(D1, D2), m=2, lbd=2.0)
    exp_loss, exp_ce, exp_kl, exp_ent = _consistency_np([D1, D2], 2.0, 2.0)
    assert loss.item() == pytest.approx(exp_ce + 2.0 * (exp_kl + exp_ent), abs=1e-12)


def test_consistency_m1_no_reg_equals_gaussian():
    model = linear_model()
    g, _ = gaussian_loss(model, t(X), t(Y), queued_noise(D1))
    c, stats = consistency_loss(model, t(X), t(Y), queued_noise(D1), m=1, lbd=0.0, eta=0.0)
    assert c.item() == pytest.approx(g.item(), abs=1e-14)
    assert stats["kl"].item() == pytest.approx(0.0, abs=1e-14)  # p̂ = p_1


def test_consistency_kl_zero_for_identical_copies():
    loss, stats = consistency_loss(linear_model(), t(X), t(Y), queued_noise(D1, D1, D1), m=3, lbd=5.0, eta=0.5)
    assert stats["kl"].item() == pytest.approx(0.0, abs=1e-14)
    p = softmax((X + D1) @ W.T + B_)
    ent = np.mean(-(p * np.log(p)).sum(-1))
    assert loss.item() == pytest.approx(ce((X + D1) @ W.T + B_, Y).mean() + 0.5 * ent, abs=1e-12)


@pytest.mark.parametrize("detach", [True, False])
def test_consistency_detach_gradients(detach):
    # Identity "model": logits z_i = x + δ_i (K=3).  With η=0, batch mean over B:
    #   ∂CE/∂x = (p̂ − e_y)/B,   ∂[λ·KL]/∂x = 0 if p̂ detached (Σ_i (p_i − p̂) = 0),
    #   else λ/B · J̄ (log p̂ − mean_i log p_i),  J̄ = (1/m) Σ_i (diag p_i − p_i p_iᵀ).
    x0 = np.array([[0.3, 0.9, 0.1], [0.8, 0.2, 0.5]])
    y = np.array([2, 0])
    d1 = np.array([[0.5, -0.4, 0.2], [0.0, 0.7, -0.3]])
    d2 = np.array([[-0.6, 0.3, 0.1], [0.4, -0.2, 0.9]])
    lbd, b = 3.0, 2
    x = t(x0).requires_grad_(True)
    loss, _ = consistency_loss(
        nn.Identity(), x, t(y), queued_noise(d1, d2), m=2, lbd=lbd, eta=0.0, detach_target=detach
    )
    loss.backward()

    p = softmax(np.stack([x0 + d1, x0 + d2]))
    p_hat = p.mean(0)
    expected = (p_hat - np.eye(3)[y]) / b
    if not detach:
        for j in range(b):
            j_bar = (jac_softmax(p[0, j]) + jac_softmax(p[1, j])) / 2
            expected[j] += lbd / b * j_bar @ (np.log(p_hat[j]) - np.log(p[:, j]).mean(0))
        assert np.abs(expected - (p_hat - np.eye(3)[y]) / b).max() > 1e-3  # the detach choice matters here
    np.testing.assert_allclose(x.grad.numpy(), expected, atol=1e-12)


# ------------------------------------------------------------------ SmoothMix path


def path_np(x, y, deltas, steps, alpha, maxnorm=None):
    """Reference path for the identity model (logits = x + δ_i): g = Σ_i p_i,y (p_i − e_y) / (m p̂_y)."""
    xs = [x.copy()]
    e_y = np.eye(x.shape[1])[y]
    for _ in range(steps):
        p = softmax(np.stack([xs[-1] + d for d in deltas]))
        p_y = p[:, np.arange(len(y)), y]  # (m, B)
        g = (p_y[..., None] * (p - e_y)).sum(0) / (len(deltas) * p_y.mean(0)[:, None])
        nxt = xs[-1] + alpha * g / np.linalg.norm(g, axis=1, keepdims=True)
        xs.append(np.clip(project_np(nxt, x, maxnorm), 0, 1))
    return xs


def project_np(v, x, r):
    if r is None:
        return v
    n = np.linalg.norm(v - x, axis=1, keepdims=True)
    return x + (v - x) * np.minimum(1.0, r / n)


XP = np.array([[0.5, 0.4, 0.6], [0.3, 0.7, 0.2]])
YP = np.array([2, 0])  # p̂(x) gets sample 1 right and sample 2 wrong
E1 = np.array([[0.2, -0.1, 0.3], [-0.2, 0.1, 0.0]])
E2 = np.array([[-0.3, 0.4, 0.1], [0.1, 0.5, -0.4]])
NOISES = torch.tensor(np.stack([E1, E2]))


def test_path_first_step_along_normalised_gradient():
    _, x_adv = smoothmix_adversarial_path(nn.Identity(), t(XP), t(YP), NOISES, num_steps=1, step_alpha=0.1)
    x1 = path_np(XP, YP, [E1, E2], 1, 0.1)[1]
    assert 0 < x1.min() and x1.max() < 1  # interior, so this is the pure step
    np.testing.assert_allclose(x_adv.numpy(), x1, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(x_adv.numpy() - XP, axis=1), 0.1, atol=1e-12)


def test_path_clipped_to_unit_box():
    x0 = np.array([[0.95, 0.02, 0.5], [0.0, 1.0, 0.99]])
    x_init, x_adv = smoothmix_adversarial_path(
        nn.Identity(), t(x0), t(YP), [t(E1), t(E2)], num_steps=4, step_alpha=1.0, mix_step=2
    )
    xs = path_np(x0, YP, [E1, E2], 4, 1.0)
    np.testing.assert_allclose(x_adv.numpy(), xs[4], atol=1e-12)
    assert (xs[4] == 0).any() or (xs[4] == 1).any()  # clipping was active
    for v in (x_init, x_adv):
        assert v.min() >= 0 and v.max() <= 1


def test_path_projection_and_x_init():
    x_init, x_adv = smoothmix_adversarial_path(
        nn.Identity(), t(XP), t(YP), NOISES, num_steps=5, step_alpha=0.1, maxnorm=0.15, mix_step=2, maxnorm_s=0.12
    )
    xs = path_np(XP, YP, [E1, E2], 5, 0.1, maxnorm=0.15)
    np.testing.assert_allclose(x_adv.numpy(), xs[5], atol=1e-12)
    assert np.linalg.norm(x_adv.numpy() - XP, axis=1).max() <= 0.15 + 1e-12
    np.testing.assert_allclose(x_init.numpy(), np.clip(project_np(xs[2], XP, 0.12), 0, 1), atol=1e-12)
    assert np.linalg.norm(x_init.numpy() - XP, axis=1).max() <= 0.12 + 1e-12
    # default maxnorm_s = α·mix_step; mix_step = 0 gives x_init = x
    x_init0, _ = smoothmix_adversarial_path(nn.Identity(), t(XP), t(YP), NOISES, num_steps=3, step_alpha=0.1)
    np.testing.assert_array_equal(x_init0.numpy(), XP)
    with pytest.raises(ValueError):
        smoothmix_adversarial_path(nn.Identity(), t(XP), t(YP), NOISES, num_steps=2, step_alpha=0.1, mix_step=3)


class ModeRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3).double()
        self.modes = []

    def forward(self, z):
        self.modes.append(self.training)
        return self.lin(z)


@pytest.mark.parametrize("train_before", [True, False])
def test_path_eval_mode_restored_and_no_param_grads(train_before):
    model = ModeRecorder().train(train_before)
    smoothmix_adversarial_path(model, t(XP), t(YP), NOISES, num_steps=2, step_alpha=0.1)
    assert model.modes == [False, False]  # one batched forward per step, in eval mode
    assert model.training is train_before
    assert all(p.grad is None for p in model.parameters())


def test_pgd_path_per_sample_radius_and_start():
    """Per-sample step sizes and radii (the attack's ε = R_i), and a start point projected into the ball."""
    eps = torch.tensor([0.05, 0.2], dtype=torch.float64)
    _, x_adv = smoothed_pgd_path(nn.Identity(), t(XP), t(YP), NOISES, 4, 2 * eps / 4, maxnorm=eps)
    for b in range(2):
        xs = path_np(XP[b:b + 1], YP[b:b + 1], [E1[b:b + 1], E2[b:b + 1]], 4, 2 * float(eps[b]) / 4, float(eps[b]))
        np.testing.assert_allclose(x_adv[b].numpy(), xs[4][0], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(x_adv.numpy() - XP, axis=1), eps.numpy(), atol=1e-12)
    far = t(XP + 0.3)  # outside both balls: projected first, then the path runs from there
    first, _ = smoothed_pgd_path(nn.Identity(), t(XP), t(YP), NOISES, 1, 0.0, maxnorm=eps, start=far)
    np.testing.assert_allclose(first.numpy(), np.clip(project_np(XP + 0.3, XP, eps.numpy()[:, None]), 0, 1),
                               atol=1e-12)


# ------------------------------------------------------------------ SmoothAdv loss


def test_smoothadv_loss_hand_value():
    """L = mean_{i,b} CE(x' + δ_i, y) for the identity model, x' = T steps of size 2ε_t/T within ε_t = w·ε."""
    eps, steps, w = 0.3, 3, 0.5
    loss, stats = smoothadv_loss(nn.Identity(), t(XP), t(YP), queued_noise(E1, E2), 2, eps=eps, num_steps=steps,
                                 warmup_weight=w)
    x_adv = path_np(XP, YP, [E1, E2], steps, 2 * eps * w / steps, maxnorm=eps * w)[steps]
    expected = np.mean([ce(x_adv + d, YP) for d in (E1, E2)])
    assert expected > np.mean([ce(XP + d, YP) for d in (E1, E2)]) + 1e-3  # the attack raised the loss
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["adv_norm"].item() == pytest.approx(np.linalg.norm(x_adv - XP, axis=1).mean(), abs=1e-12)
    # hand check of the first step: for the identity model g ∝ Σ_i p_i,y (p_i − e_y), so x¹ = x + s·g/‖g‖
    p = softmax(np.stack([XP + E1, XP + E2]))
    p_y = p[:, [0, 1], YP]
    g = (p_y[..., None] * (p - np.eye(3)[YP])).sum(0)
    x1 = XP + (2 * eps * w / steps) * g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(path_np(XP, YP, [E1, E2], 1, 2 * eps * w / steps)[1], x1, atol=1e-12)


def test_smoothadv_without_radius_is_gaussian_on_the_copies():
    loss, stats = smoothadv_loss(nn.Identity(), t(XP), t(YP), queued_noise(E1, E2), 2, eps=0.5, num_steps=4,
                                 warmup_weight=0.0)
    assert loss.item() == pytest.approx(np.mean([ce(XP + d, YP) for d in (E1, E2)]), abs=1e-12)
    assert stats["adv_norm"].item() == 0.0


# ------------------------------------------------------------------ SmoothMix loss


def _smoothmix_np(x, y, deltas, steps, alpha, eta, w, lam, clean):
    x_adv = path_np(x, y, deltas, steps, alpha)[steps]
    x_init = x  # mix_step = 0
    p = softmax(np.stack([clean + d for d in deltas]))
    p_hat = p.mean(0)
    ce_ = np.mean([ce(clean + d, y) for d in deltas])
    x_mix = (1 - lam[:, None]) * x_init + lam[:, None] * x_adv
    y_mix = (1 - lam[:, None]) * p_hat + lam[:, None] / x.shape[1]
    ind = (p_hat.argmax(1) == y).astype(float)
    kl = np.stack([(y_mix * (np.log(y_mix) - np.log(softmax(x_mix + d)))).sum(1) for d in deltas])
    mix = (ind * kl).mean()
    return ce_ + eta * w * mix, ce_, mix, ind.mean()


def test_smoothmix_loss_hand_value():
    y = YP  # sample 2 is misclassified by p̂ → masked out of the mixup term
    lam = (torch.rand(2, generator=torch.Generator().manual_seed(7)) / 2).double().numpy()
    loss, stats = smoothmix_loss(
        nn.Identity(), t(XP), t(y), queued_noise(E1, E2), 2, num_steps=2, step_alpha=0.2, eta=2.0,
        warmup_weight=0.5, num_classes=3, generator=torch.Generator().manual_seed(7),
    )
    exp_loss, exp_ce, exp_mix, exp_acc = _smoothmix_np(XP, y, [E1, E2], 2, 0.2, 2.0, 0.5, lam, XP)
    assert exp_acc == 0.5 and exp_mix > 1e-4
    assert loss.item() == pytest.approx(exp_loss, abs=1e-12)
    assert stats["ce"].item() == pytest.approx(exp_ce, abs=1e-12)
    assert stats["mix"].item() == pytest.approx(exp_mix, abs=1e-12)
    assert stats["acc_p_hat"].item() == exp_acc


@pytest.mark.parametrize("clean_at_init", [True, False])
def test_smoothmix_clean_point(clean_at_init):
    # mix_step=1, w=0.5: x_init = x¹ projected to radius w·α·1; the CE term uses x_init (reference) or x.
    alpha, w = 0.2, 0.5
    _, stats = smoothmix_loss(
        nn.Identity(), t(XP), t(YP), queued_noise(E1, E2), 2, num_steps=2, step_alpha=alpha, eta=1.0,
        warmup_weight=w, mix_step=1, clean_at_init=clean_at_init,
    )
    x1 = path_np(XP, YP, [E1, E2], 1, alpha)[1]
    x_init = np.clip(project_np(x1, XP, w * alpha), 0, 1)
    clean = x_init if clean_at_init else XP
    assert stats["ce"].item() == pytest.approx(np.mean([ce(clean + d, YP) for d in (E1, E2)]), abs=1e-12)


class Scale(nn.Module):
    """f(z) = s·z with one scalar parameter s."""

    def __init__(self, s):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(s, dtype=torch.float64))

    def forward(self, z):
        return self.s * z


def test_smoothmix_detach_target_gradient():
    # Not detaching ŷ_mix adds η·w·mean_{i,b}[𝟙_b (1−λ_b) (∂p̂_b/∂s)ᵀ(log ŷ_b − log q_{i,b})],
    # with ∂p̂_b/∂s = (1/m) Σ_i J(p_{i,b}) (x_b+δ_i)   (the "+1" of ∂KL/∂ŷ vanishes: 1ᵀJ = 0).
    s, eta, w, steps, alpha = 1.7, 3.0, 0.8, 1, 0.2
    grads = {}
    for detach in (True, False):
        model = Scale(s)
        loss, _ = smoothmix_loss(
            model, t(XP), t(YP), queued_noise(E1, E2), 2, num_steps=steps, step_alpha=alpha, eta=eta,
            warmup_weight=w, detach_target=detach, generator=torch.Generator().manual_seed(3),
        )
        loss.backward()
        grads[detach] = model.s.grad.item()
        if detach:
            model_eval = model
    lam = (torch.rand(2, generator=torch.Generator().manual_seed(3)) / 2).double().numpy()

    # path for f = s·z: −log p̂_y gradient wrt x is s·(same as identity evaluated at s(x+δ)); compute it directly
    xs = [XP.copy()]
    for _ in range(steps):
        p = softmax(np.stack([s * (xs[-1] + d) for d in (E1, E2)]))
        p_y = p[:, np.arange(2), YP]
        g = s * (p_y[..., None] * (p - np.eye(3)[YP])).sum(0) / (2 * p_y.mean(0)[:, None])
        xs.append(np.clip(xs[-1] + alpha * g / np.linalg.norm(g, axis=1, keepdims=True), 0, 1))
    x_adv = xs[-1]
    inputs = [XP + d for d in (E1, E2)]
    p = softmax(np.stack([s * u for u in inputs]))
    p_hat = p.mean(0)
    ind = (p_hat.argmax(1) == YP).astype(float)
    assert ind.sum() > 0
    x_mix = (1 - lam[:, None]) * XP + lam[:, None] * x_adv
    y_mix = (1 - lam[:, None]) * p_hat + lam[:, None] / 3
    extra = 0.0
    for b in range(2):
        dp_hat = sum(jac_softmax(p[i, b]) @ inputs[i][b] for i in range(2)) / 2
        for d in (E1, E2):
            log_q = np.log(softmax(s * (x_mix[b] + d[b])))
            extra += ind[b] * (1 - lam[b]) * dp_hat @ (np.log(y_mix[b]) - log_q)
    extra *= eta * w / 4  # mean over m·B = 4
    assert abs(extra) > 1e-4
    assert grads[False] - grads[True] == pytest.approx(extra, abs=1e-10)
    assert model_eval.training  # the loss leaves the model in train mode


# ------------------------------------------------------------------ schedules


def test_k_schedule_values():
    k, kw = 380, 100
    assert k_at(0, k, kw) == 0
    for step in (1, 10, 37, 50, 99):
        assert k_at(step, k, kw) == math.ceil(k * (1 - k ** (-step / kw)))
    assert k_at(1, k, kw) == 22  # 380·(1 − 380^(−0.01)) = 21.9…
    assert k_at(50, k, kw) == 361  # 380·(1 − 1/√380) = 360.5…
    assert k_at(kw, k, kw) == k - 1  # the formula at t = k_warmup: k·(1 − 1/k)
    assert k_at(kw + 1, k, kw) == k and k_at(10 * kw, k, kw) == k
    seq = [k_at(step, k, kw) for step in range(0, 2 * kw)]
    assert all(a <= b for a, b in zip(seq, seq[1:]))


def test_k_schedule_edge_cases():
    assert [k_at(step, 1530, 0) for step in (0, 1, 50)] == [1530] * 3  # no warm-up
    assert [k_at(step, 0, 100) for step in (0, 50, 200)] == [0, 0, 0]
    with pytest.raises(ValueError):
        k_at(-1, 380, 100)


def test_smoothmix_warmup_weight():
    assert [smoothmix_warmup_weight(e, 10) for e in (0, 4, 9, 10, 50)] == pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0])
    assert smoothmix_warmup_weight(0, 0) == 1.0

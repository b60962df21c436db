"""Certificates through a diffusion denoiser: soundness on a linear classifier behind an identity-like denoiser
(one shot and K steps), the K-step noise stream (per input, reproducible, never traced), an end-to-end
certification and an attack audit through a real diffusers folder, and classifiers by name."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import binom, norm

from certifynet.certify import certify_from_counts
from certifynet.denoise import DenoisedClassifier
from certifynet.denoise.diffusion import (
    ClassifierSpec,
    DiffusionDenoiser,
    build_classifier,
    describe_chain,
    diffusion_noise_stream,
    linear_schedule,
    load_diffusion_denoiser,
)
from certifynet.errors import CertifyNetError
from certifynet.noise import GaussianNoise
from certifynet.sampling import Sampler, input_generator

from helpers import LinearBinary

SHAPE, D = (1, 8, 8), 64


class ZeroUNet(nn.Module):
    """ε̂ = 0: x̂₀ = x_t*/√ᾱ = a(x + δ) + b, so D(x + δ) = x + δ exactly (without clipping): identity-like."""

    def forward(self, sample, timestep, return_dict=False):
        return (torch.zeros_like(sample),)


def _composed(steps=1, seed=0):
    f = LinearBinary(D, seed)
    den = DiffusionDenoiser(ZeroUNet(), linear_schedule(), 0.5, clip=False, steps=steps)
    return f, DenoisedClassifier(den, f, 0.5).eval()


def _certify(model, f, trials, n, alpha, seed, point_estimate=False, optimize=True):
    """Certify points at random distances δ from f's hyperplane with the real Sampler; K-step noise ξ comes from
    each input's own (seed, idx, stream) generator. Returns (δ, R)."""
    sampler = Sampler(model, 2, batch=n, channels_last=False, optimize=optimize)
    noise = GaussianNoise(0.5)
    deltas = np.random.default_rng(seed).uniform(0.2, 2.0, trials) * 0.5
    radii = np.empty(trials)
    for i, delta in enumerate(deltas):
        x = f.point_at(float(delta), SHAPE)
        with diffusion_noise_stream(model, seed, i, 0):
            c_hat = int(sampler.counts(x, noise, 20, input_generator(seed, i, 0, "cpu")).argmax())
        with diffusion_noise_stream(model, seed, i, 1):
            count = int(sampler.counts(x, noise, n, input_generator(seed, i, 1, "cpu"))[c_hat])
        if point_estimate:   # the control: no confidence bound
            p = count / n
            radii[i] = 0.5 * norm.ppf(min(p, 1 - 1e-9)) if c_hat == 1 and p > 0.5 else 0.0
        else:
            abstain, _, r = certify_from_counts(count, n, 0.5, alpha)
            radii[i] = 0.0 if abstain or c_hat != 1 else r
    return deltas, radii


def test_one_shot_identity_denoiser_is_sound_and_the_control_is_not():
    f, model = _composed()
    x = f.point_at(0.3, SHAPE)[None]
    torch.testing.assert_close(model.denoiser(x), x, rtol=0, atol=1e-6)   # identity-like indeed
    alpha, trials = 0.05, 1500
    deltas, radii = _certify(model, f, trials, 500, alpha, seed=1)
    violations = int((radii > deltas).sum())
    assert violations <= binom.ppf(0.999, trials, alpha), violations
    deltas, radii = _certify(model, f, 300, 500, alpha, seed=2, point_estimate=True)
    assert (radii > deltas).sum() > binom.ppf(0.999, 300, alpha)   # point estimates over-claim


def test_k_step_randomised_denoiser_is_sound():
    """K = 4: f(z, ξ) = 1[w·(z + η(ξ)) > 0] with extra Gaussian η, ξ independent of δ: P_{δ,ξ} = E_δ h(x + δ) and the
    certificate for σ holds (it is conservative here: the smoothing noise is larger than σ)."""
    f, model = _composed(steps=4)
    x = f.point_at(0.3, SHAPE)[None].repeat(4, 1, 1, 1)
    out = model.denoiser(x)
    assert not torch.allclose(out, x, atol=1e-3)   # randomised: extra noise
    alpha, trials = 0.05, 800
    deltas, radii = _certify(model, f, trials, 500, alpha, seed=3)
    assert int((radii > deltas).sum()) <= binom.ppf(0.999, trials, alpha)
    assert np.median(radii[radii > 0] / deltas[radii > 0]) < 0.95   # conservative, as the algebra says


def test_k_step_noise_is_per_input_reproducible_and_not_traced():
    f, model = _composed(steps=3)
    noise = GaussianNoise(0.5)
    x = f.point_at(0.2, SHAPE)

    def counts(idx, stream=1, optimize=True, before=None):
        s = Sampler(model, 2, batch=200, channels_last=False, optimize=optimize)
        if before is not None:   # another input sampled first must not change this input's counts
            with diffusion_noise_stream(model, 0, before, 1):
                s.counts(x, noise, 600, input_generator(0, before, 1, "cpu"))
        with diffusion_noise_stream(model, 0, idx, stream):
            return s.counts(x, noise, 1000, input_generator(0, idx, 1, "cpu"))

    a = counts(5)
    assert torch.equal(a, counts(5)) and torch.equal(a, counts(5, before=9))
    assert torch.equal(a, counts(5, optimize=False))          # the trace is refused: eager, same draws
    assert not torch.equal(a, counts(5, stream=2))            # ξ has its own stream, apart from δ's
    den = model.denoiser
    assert den.noise.key == (0, 0, 100)                        # the binding is undone after each input
    with pytest.raises(RuntimeError, match="cannot be traced"), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit.trace's deprecation notice
        torch.jit.trace(model, x[None].repeat(2, 1, 1, 1), check_trace=False)


# ------------------------------------------------------------------ through a real diffusers folder
def _folder(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    unet.save_pretrained(tmp_path)
    DDPMScheduler().save_pretrained(tmp_path)
    return str(tmp_path)


def test_end_to_end_certification_through_the_loader(tmp_path):
    """Folder → D → registry LeNet → Sampler counts → NP certificates; reproducible (trace or eager)."""
    den, meta = load_diffusion_denoiser(_folder(tmp_path), 0.5)
    clf, cmeta = build_classifier(ClassifierSpec("lenet", dataset="mnist5k"))
    model = DenoisedClassifier(den, clf, 0.5).eval()
    x = torch.rand(SHAPE[0], 28, 28, generator=torch.Generator().manual_seed(0))
    rows = []
    for optimize in (True, False):
        s = Sampler(model, 10, batch=100, optimize=optimize)
        c = s.counts(x, GaussianNoise(0.5), 300, input_generator(0, 0, 1, "cpu"))
        rows.append(c)
        assert int(c.sum()) == 300
    assert torch.equal(rows[0], rows[1])
    abstain, p_lower, radius = certify_from_counts(int(rows[0].max()), 300, 0.5, 0.001)
    assert 0 <= p_lower <= 1 and radius >= 0
    chain = describe_chain(den, cmeta)
    assert chain[-1] == "classifier lenet" and chain[0].startswith("noise")


def test_attack_audit_runs_with_a_diffusion_denoiser(tmp_path):
    """SmoothAdv PGD differentiates through the UNet; PREDICT at the attacked points (tiny sizes)."""
    from certifynet.attack import SmoothedPGD, attack_and_predict
    den, _ = load_diffusion_denoiser(_folder(tmp_path), 0.25)
    f = LinearBinary(784, seed=2)
    model = DenoisedClassifier(den, f, 0.25).eval()
    xs = torch.stack([(0.5 + 0.3 * f.w * s).reshape(1, 28, 28).clamp(0, 1) for s in (1.0, -1.0, 0.5)])
    eps = torch.full((3,), 0.2)
    attacker = SmoothedPGD(model, GaussianNoise(0.25), m=4, steps=3, seed=0, device="cpu")
    res = attacker.attack(xs, torch.ones(3, dtype=torch.long), eps, [0, 1, 2])
    assert (res.x_adv - xs).flatten(1).norm(dim=1).le(0.2 * (1 + 1e-5)).all()
    assert not torch.equal(res.x_adv, xs)
    rows = attack_and_predict(attacker, Sampler(model, 2, batch=50), GaussianNoise(0.25), xs,
                              torch.ones(3, dtype=torch.long), eps, [0, 1, 2], 100, 0.01)
    assert len(rows) == 3 and all(r["predict"] in (-1, 0, 1) for r in rows)


# ------------------------------------------------------------------ classifiers by name
def test_classifiers_by_name_with_local_weights(tmp_path):
    import timm
    net = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    path = tmp_path / "clf.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    model, meta = build_classifier(ClassifierSpec("timm:resnet10t", weights=str(path), num_classes=10, input_size=64))
    assert meta["classifier_source"] == "timm" and meta["classifier_input_size"] == 64 and meta["classifier_sha256"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = net.eval()(torch.nn.functional.interpolate(x, size=(64, 64), mode=meta["classifier_resize"],
                                                          antialias=True, align_corners=False).sub(
            torch.tensor(meta["classifier_normalization"]["mean"]).view(1, 3, 1, 1)).div(
            torch.tensor(meta["classifier_normalization"]["std"]).view(1, 3, 1, 1)))
        torch.testing.assert_close(model(x), want)
    tv, tmeta = build_classifier(ClassifierSpec("torchvision:resnet18", num_classes=10, input_size=32))
    assert tmeta["classifier_input_size"] == 32 and tv(torch.rand(1, 3, 16, 16)).shape == (1, 10)
    torch.save({"fc.weight": torch.zeros(10, 512)}, tmp_path / "bad.pth")
    for spec, msg in ((ClassifierSpec("timm:no_such_net", num_classes=10), "cannot build"),
                      (ClassifierSpec("timm:resnet10t"), "num_classes"),
                      (ClassifierSpec("timm:resnet10t", weights=str(tmp_path / "bad.pth"), num_classes=10),
                       "missing"),
                      (ClassifierSpec("timm:resnet10t", weights=str(tmp_path / "nope.pth"), num_classes=10),
                       "not found")):
        with pytest.raises(CertifyNetError, match=msg):
            build_classifier(spec)

"""Diffusion denoised smoothing: schedules and t*, the three diffusers folder layouts through the real loader,
an oracle UNet that reconstructs x exactly, refusals, and the record (sidecar / load summary)."""
import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

from certifynet.denoise import DenoisedClassifier
from certifynet.denoise.diffusion import (
    DiffusionDenoiser,
    DiffusionOptions,
    choose_t,
    cosine_schedule,
    is_diffusion_source,
    linear_schedule,
    load_diffusion_denoiser,
    parse_schedule,
    schedule_from_config,
)
from certifynet.denoise.diffusion.schedule import scaled_linear_schedule, step_times
from certifynet.errors import CertifyNetError

# ------------------------------------------------------------------ schedules and t*
REFERENCE_T = {"linear": {0.25: (145, 0.79797), 0.5: (259, 0.49761), 1.0: (396, 0.19992)},
               "cosine": {0.25: (1158, 0.800), 0.5: (1984, 0.500), 1.0: (2809, 0.200)}}


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_t_star_reference_values(kind):
    sched = linear_schedule() if kind == "linear" else cosine_schedule(4000)
    assert sched.alphas_cumprod.dtype == np.float64
    for sigma, (t, ab) in REFERENCE_T[kind].items():
        ts = choose_t(sched, sigma, rule="first")
        assert ts.t == t and ts.alpha_bar == pytest.approx(ab, abs=5e-4 if kind == "cosine" else 5e-6)
        nu = sched.noise_levels()
        assert nu[t] >= 2 * sigma > nu[t - 1]          # the first t whose noise reaches 2σ
        assert ts.effective_sigma >= sigma and ts.record()["t_star"] == t


def test_t_rules_and_continuous_t():
    sched = linear_schedule()
    first, nearest = choose_t(sched, 0.5, rule="first"), choose_t(sched, 0.5, rule="nearest")
    exact = choose_t(sched, 0.5, rule="exact", continuous=True)
    assert nearest.t in (258, 259) and 258 < exact.t < 259
    assert exact.alpha_bar == pytest.approx(1 / (1 + 4 * 0.25), rel=1e-12)   # ᾱ* = 1/(1 + 4σ²) exactly
    assert exact.effective_sigma == pytest.approx(0.5, rel=1e-12) and first.effective_sigma > 0.5
    assert choose_t(sched, 0.5, rule="auto", continuous=True).rule == "exact"
    assert choose_t(sched, 0.5, rule="auto").rule == "first"
    assert choose_t(sched, 1e-4).t == 0   # below the noise of t = 0
    with pytest.raises(CertifyNetError, match="exact needs a model that takes continuous"):
        choose_t(sched, 0.5, rule="exact")
    with pytest.raises(CertifyNetError, match="too large for this schedule"):
        choose_t(sched, 200.0)
    assert choose_t(sched, 0.5, scale=1.0).t == choose_t(sched, 0.25).t == 145   # [0, 1]-range model: noise σ, not 2σ


def test_schedule_configs_and_spellings():
    cfg = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    np.testing.assert_array_equal(schedule_from_config(cfg).alphas_cumprod, linear_schedule().alphas_cumprod)
    cos = schedule_from_config({"num_train_timesteps": 4000, "beta_schedule": "squaredcos_cap_v2"})
    np.testing.assert_array_equal(cos.alphas_cumprod, cosine_schedule(4000).alphas_cumprod)
    sl = schedule_from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    np.testing.assert_allclose(np.diff(np.sqrt(1 - sl.alphas_cumprod[:2] / [1, sl.alphas_cumprod[0]])), 0, atol=1)
    assert sl.alphas_cumprod[0] == pytest.approx(1 - 0.00085)
    assert scaled_linear_schedule().T == 1000
    trained = schedule_from_config({"trained_betas": [0.1, 0.2, 0.3]})
    np.testing.assert_allclose(trained.alphas_cumprod, [0.9, 0.72, 0.504])
    assert parse_schedule("cosine").T == 4000 and parse_schedule("linear:500").T == 500
    assert parse_schedule("linear:1000:0.0001:0.02").describe() == linear_schedule().describe()
    for bad in ("quadratic", "linear:x", "cosine:1:2", "linear:1"):
        with pytest.raises(CertifyNetError, match="diffusion_schedule"):
            parse_schedule(bad)
    for bad in ({"beta_schedule": "sigmoid"}, {"rescale_betas_zero_snr": True}):
        with pytest.raises(CertifyNetError):
            schedule_from_config(bad)


def test_step_times():
    assert step_times(259.0, 1, integer=True) == [259.0]
    assert step_times(259.0, 4, integer=True) == [259.0, 194.0, 130.0, 65.0]
    assert step_times(2.0, 5, integer=True) == [2.0, 1.0]
    assert step_times(10.5, 2, integer=False) == [10.5, 5.25]


# ------------------------------------------------------------------ an oracle UNet
class OracleUNet(nn.Module):
    """Knows the clean images: returns the true ε = (x_t − √ᾱ_t·x₀)/√(1 − ᾱ_t) (or x₀, or v = √ᾱ ε − √(1−ᾱ) x₀) at
    the timestep it is fed, with ᾱ read from the schedule at t = fed/rescale; records what it was fed."""

    def __init__(self, x0_model, schedule, rescale=1.0, kind="epsilon"):
        super().__init__()
        self.x0, self.schedule, self.rescale, self.kind, self.fed = x0_model, schedule, rescale, kind, []

    def forward(self, sample, timestep, return_dict=False):
        fed = float(timestep.flatten()[0])
        self.fed.append(fed)
        ab = self.schedule.alpha_bar(fed / self.rescale)
        eps = (sample - math.sqrt(ab) * self.x0) / math.sqrt(1 - ab)
        out = {"epsilon": eps, "sample": self.x0, "v_prediction": math.sqrt(ab) * eps - math.sqrt(1 - ab) * self.x0}
        return (out[self.kind],)


@pytest.mark.parametrize("kind,sched,rescale,rule,continuous", [
    ("epsilon", "linear", 1.0, "first", False), ("epsilon", "cosine", 0.25, "first", False),
    ("v_prediction", "linear", 1.0, "nearest", False), ("sample", "cosine", 0.25, "exact", True)])
def test_oracle_reconstructs_x_and_the_classifier_agrees(kind, sched, rescale, rule, continuous):
    """With the true ε, x̂₀ = x exactly, so F(D(x + δ)) = F(x) on every draw; a zero-ε UNet (the control) leaves
    the noise in and changes predictions."""
    g = torch.Generator().manual_seed(0)
    schedule = parse_schedule(sched)
    x = torch.rand(64, 1, 28, 28, generator=g)
    noisy = x + 0.5 * torch.randn(x.shape, generator=g)
    oracle = OracleUNet(2 * x - 1, schedule, rescale, kind)
    den = DiffusionDenoiser(oracle, schedule, 0.5, prediction_type=kind, t_rule=rule, continuous=continuous,
                            timestep_rescale=rescale)
    torch.testing.assert_close(den(noisy), x, rtol=0, atol=2e-5)
    assert oracle.fed == [pytest.approx(den.tstar.t * rescale, rel=1e-6)]   # fed as float32 where not integer
    torch.manual_seed(1)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()   # its argmax moves with the noise
    with torch.no_grad():
        assert torch.equal(DenoisedClassifier(den, clf, 0.5)(noisy).argmax(1), clf(x).argmax(1))
        zero = DiffusionDenoiser(OracleUNet(torch.zeros_like(x), schedule, rescale, "sample"), schedule, 0.5,
                                 prediction_type="epsilon", timestep_rescale=rescale, t_rule=rule,
                                 continuous=continuous)
        agree = (DenoisedClassifier(zero, clf, 0.5)(noisy).argmax(1) == clf(x).argmax(1)).float().mean()
    assert agree < 0.95   # the control: with ε̂ = 0 the noise stays in, and predictions move


def test_oracle_k_steps_also_reconstructs():
    """K reverse steps with the true ε: every x̂₀ is x, whatever noise ξ the posterior draws."""
    schedule = linear_schedule()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    den = DiffusionDenoiser(OracleUNet(2 * x - 1, schedule), schedule, 0.5, steps=4)
    torch.testing.assert_close(den(x + 0.5 * torch.randn(x.shape)), x, rtol=0, atol=5e-5)


# ------------------------------------------------------------------ the three folder layouts
def tiny_unet(seed=0):
    from diffusers import UNet2DModel
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)


def _scheduler(**kw):
    from diffusers import DDPMScheduler
    return DDPMScheduler(**kw)


def save_layout(root, layout, unet, scheduler, safe=True):
    """flat | pipeline | hub-cache (models--org--tiny with refs/main, snapshots/<hash> linking into blobs/)."""
    if layout == "flat":
        unet.save_pretrained(root, safe_serialization=safe)
        scheduler.save_pretrained(root)
        return str(root)
    if layout == "pipeline":
        from diffusers import DDPMPipeline
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(root, safe_serialization=safe)
        return str(root)
    repo = root / "models--org--tiny"
    snap = repo / "snapshots" / "0123abcd"
    save_layout(snap, "pipeline", unet, scheduler, safe)
    (repo / "blobs").mkdir(parents=True)
    for dirpath, _, files in os.walk(snap):
        for name in files:
            path = os.path.join(dirpath, name)
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            blob = repo / "blobs" / digest
            shutil.move(path, blob)
            os.symlink(os.path.relpath(blob, dirpath), path)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return str(repo)


def _manual_one_shot(unet, x_noisy, sigma, t, ab):
    z = math.sqrt(ab) * (2 * x_noisy - 1)
    with torch.no_grad():
        eps = unet(z, torch.full((len(z),), t, dtype=torch.long)).sample
    return ((z - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1).add(1).div(2)


@pytest.mark.parametrize("layout", ["flat", "pipeline", "hub-cache"])
def test_each_layout_loads_through_the_real_loader(tmp_path, layout):
    unet = tiny_unet().eval()
    path = save_layout(tmp_path, layout, unet, _scheduler())
    assert is_diffusion_source(path)
    den, meta = load_diffusion_denoiser(path, 0.5)
    d = meta["diffusion"]
    assert d["layout"] == {"hub-cache": "hub-cache/pipeline"}.get(layout, layout)
    assert (d["t_star"], d["t_rule"], d["schedule"]["kind"]) == (259, "first", "linear")
    assert d["prediction_type"] == "epsilon"
    assert d["schedule_source"] == "scheduler_config.json" and meta["denoiser_sha256"]
    for word in ("t* = 259", "ᾱ_t* = 0.49761", "linear", "UNet at t* = 259", "clip", "effective σ"):
        assert word in meta["summary"], word
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = den(noisy)
    torch.testing.assert_close(got, _manual_one_shot(unet, noisy, 0.5, 259, den.tstar.alpha_bar), rtol=1e-5, atol=1e-5)
    json.dumps(meta)   # the record is JSON (sidecar)


def test_bin_weights_with_deprecated_attention_names(tmp_path):
    """google/ddpm-cifar10-32's .bin uses diffusers' old attention names (query/key/value/proj_attn)."""
    unet = tiny_unet(seed=3).eval()
    state = {}
    for k, v in unet.state_dict().items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".{new}.", f".{old}.")
        state[k] = v
    unet.save_config(tmp_path)
    torch.save(state, tmp_path / "diffusion_pytorch_model.bin")
    _scheduler(num_train_timesteps=1000).save_pretrained(tmp_path)
    den, _ = load_diffusion_denoiser(str(tmp_path), 0.25)
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(den(x), _manual_one_shot(unet, x, 0.25, 145, den.tstar.alpha_bar), rtol=1e-5, atol=1e-5)


def test_flags_override_the_files(tmp_path):
    path = save_layout(tmp_path, "flat", tiny_unet(), _scheduler(beta_schedule="squaredcos_cap_v2",
                                                                   prediction_type="v_prediction"))
    den, meta = load_diffusion_denoiser(path, 0.5)
    assert den.prediction_type == "v_prediction" and meta["diffusion"]["schedule"]["kind"] == "cosine"
    opts = DiffusionOptions(diffusion_schedule="linear", diffusion_prediction="epsilon", diffusion_steps=3,
                            diffusion_t_rule="exact", diffusion_continuous=True, diffusion_timestep_rescale=2.0)
    den, meta = load_diffusion_denoiser(path, 0.5, opts)
    d = meta["diffusion"]
    assert (d["schedule_source"], d["prediction_type"], d["steps"], d["t_rule"]) == ("flag", "epsilon", 3, "exact")
    assert d["model_timestep"] == pytest.approx(2 * d["t_star"]) and "2 more reverse steps" in meta["summary"]


def _corrupt(tmp_path, what):
    path = save_layout(tmp_path, "flat", tiny_unet(), _scheduler())
    cfg = os.path.join(path, "config.json")
    if what == "class":
        data = json.load(open(cfg))
        json.dump({**data, "_class_name": "UNet2DConditionModel"}, open(cfg, "w"))
    elif what == "weights":
        os.remove(os.path.join(path, "diffusion_pytorch_model.safetensors"))
    elif what == "garbage":
        open(os.path.join(path, "diffusion_pytorch_model.safetensors"), "wb").write(b"\x00" * 64)
    elif what == "config":
        open(cfg, "w").write("{not json")
    elif what == "scheduler":
        os.remove(os.path.join(path, "scheduler_config.json"))
    elif what == "shapes":
        data = json.load(open(cfg))
        json.dump({**data, "block_out_channels": [8, 24]}, open(cfg, "w"))
    elif what == "layers":
        data = json.load(open(cfg))
        json.dump({**data, "layers_per_block": 2}, open(cfg, "w"))
    elif what == "empty":
        shutil.rmtree(path)
        os.makedirs(path)
    return path


@pytest.mark.parametrize("what,message", [
    ("class", "is a UNet2DConditionModel, not a UNet2DModel"), ("weights", "has no weights"),
    ("garbage", "not a safetensors file"), ("config", "not valid JSON"), ("scheduler", "diffusion_schedule"),
    ("shapes", "has shape .16,., expected .24,."),
    ("layers", "do not fit the UNet of its config: unmatched keys -, missing .'down_blocks.0.resnets.1"),
    ("empty", "not a diffusers model folder")])
def test_refusals_are_one_line(tmp_path, what, message):
    path = _corrupt(tmp_path, what)
    with pytest.raises(CertifyNetError, match=message) as e:
        load_diffusion_denoiser(path, 0.5)
    assert "\n" not in str(e.value)


def test_size_bound_and_pickles_are_refused(tmp_path):
    path = save_layout(tmp_path / "a", "flat", tiny_unet(), _scheduler())
    with pytest.raises(CertifyNetError, match="over the"):
        load_diffusion_denoiser(path, 0.5, DiffusionOptions(max_bytes=1000))
    b = tmp_path / "b"
    path = save_layout(b, "flat", tiny_unet(), _scheduler(), safe=False)
    torch.save({"x": torch.zeros(1), "evil": np.float64(1.0)}, b / "diffusion_pytorch_model.bin")
    with pytest.raises(CertifyNetError, match="weights_only"):
        load_diffusion_denoiser(path, 0.5)
    assert not is_diffusion_source(str(tmp_path / "missing.pt"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    assert not is_diffusion_source(str(tmp_path / "other.pt"))


def test_options_check():
    for kw, name in ((dict(diffusion_steps=0), "diffusion_steps"),
                     (dict(diffusion_prediction="x0"), "diffusion_prediction"),
                     (dict(diffusion_input_range="0,255"), "diffusion_input_range"),
                     (dict(diffusion_timestep_rescale=-1.0), "diffusion_timestep_rescale"),
                     (dict(diffusion_t_rule="last"), "diffusion_t_rule"), (dict(qkv_order="x"), "qkv_order"),
                     (dict(openai_heads=4, openai_head_channels=64), "openai_heads")):
        with pytest.raises(CertifyNetError) as e:
            DiffusionOptions(**kw).check()
        assert e.value.render(cli=True).count("--" + name.replace("_", "-")) >= 1, e.value.render(cli=True)

    class NS:
        diffusion_steps, diffusion_schedule, other = 2, "cosine:4000", "ignored"
    opts = DiffusionOptions.from_namespace(NS)
    assert opts.diffusion_steps == 2 and opts.diffusion_schedule == "cosine:4000"


def test_odd_sizes_are_padded_and_resizing_is_an_option():
    """28×28 into a UNet with 3 levels: reflect-padded to 32 and cropped; `resolution` resizes instead."""
    schedule = linear_schedule()

    class Shape(nn.Module):
        config = type("C", (), {"block_out_channels": (8, 16, 32)})()
        seen = []

        def forward(self, sample, timestep, return_dict=False):
            self.seen.append(tuple(sample.shape[-2:]))
            return (torch.zeros_like(sample),)

    unet = Shape()
    den = DiffusionDenoiser(unet, schedule, 0.5, clip=False)
    x = torch.rand(2, 1, 30, 30)
    torch.testing.assert_close(den(x), x, rtol=0, atol=1e-5)   # zero ε: identity, padding cropped exactly
    den_r = DiffusionDenoiser(unet, schedule, 0.5, resolution=16)
    assert den_r(x).shape == x.shape and unet.seen == [(32, 32), (16, 16)]

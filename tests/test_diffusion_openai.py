"""OpenAI improved/guided-diffusion UNet → diffusers UNet2DModel: a state dict synthesised from the published key
names and shapes converts with no unmatched key, the converted UNet computes what the OpenAI architecture computes
(a reference forward pass written here from the published equations), and the qkv split is right per head."""
import math

import pytest
import torch
import torch.nn.functional as F

from certifynet.denoise.diffusion import DiffusionOptions, is_diffusion_source, load_diffusion_denoiser
from certifynet.denoise.diffusion.openai import (
    attention_heads,
    convert_openai,
    convert_state_dict,
    infer_arch,
    match_preset,
    split_qkv,
)
from certifynet.errors import CertifyNetError


# ------------------------------------------------------------------ an OpenAI-layout state dict and its plan
def _rand(g, *shape, scale=0.2):
    return torch.randn(*shape, generator=g) * scale


def _res_keys(sd, p, cin, cout, emb, scale_shift, g):
    sd[f"{p}.in_layers.0.weight"], sd[f"{p}.in_layers.0.bias"] = 1 + _rand(g, cin), _rand(g, cin)
    sd[f"{p}.in_layers.2.weight"], sd[f"{p}.in_layers.2.bias"] = _rand(g, cout, cin, 3, 3), _rand(g, cout)
    w = 2 * cout if scale_shift else cout
    sd[f"{p}.emb_layers.1.weight"], sd[f"{p}.emb_layers.1.bias"] = _rand(g, w, emb), _rand(g, w)
    sd[f"{p}.out_layers.0.weight"], sd[f"{p}.out_layers.0.bias"] = 1 + _rand(g, cout), _rand(g, cout)
    sd[f"{p}.out_layers.3.weight"], sd[f"{p}.out_layers.3.bias"] = _rand(g, cout, cout, 3, 3), _rand(g, cout)
    if cin != cout:
        sd[f"{p}.skip_connection.weight"], sd[f"{p}.skip_connection.bias"] = _rand(g, cout, cin, 1, 1), _rand(g, cout)


def _attn_keys(sd, p, c, g):
    sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"] = 1 + _rand(g, c), _rand(g, c)
    sd[f"{p}.qkv.weight"], sd[f"{p}.qkv.bias"] = _rand(g, 3 * c, c, 1, scale=0.5), _rand(g, 3 * c)
    sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"] = _rand(g, c, c, 1), _rand(g, c)


def openai_unet(mc=32, mult=(1, 2), nrb=1, attn_levels=(1,), scale_shift=True, updown=False, learn_sigma=True,
                in_ch=1, seed=0):
    """(state dict, plan) of OpenAI's UNetModel built from the published code's structure (unet.py): the plan
    lists, per input/middle/output block, its layers as ('res', cin, cout, resample) / ('attn', c) /
    ('down'|'up', c) in forward order."""
    g = torch.Generator().manual_seed(seed)
    emb = 4 * mc
    sd = {"time_embed.0.weight": _rand(g, emb, mc), "time_embed.0.bias": _rand(g, emb),
          "time_embed.2.weight": _rand(g, emb, emb), "time_embed.2.bias": _rand(g, emb),
          "input_blocks.0.0.weight": _rand(g, mc, in_ch, 3, 3), "input_blocks.0.0.bias": _rand(g, mc)}
    plan = {"in": [[("conv_in",)]], "mid": None, "out": []}
    chans, ch = [mc], mc
    for lv, m in enumerate(mult):
        for _ in range(nrb):
            i = len(plan["in"])
            _res_keys(sd, f"input_blocks.{i}.0", ch, m * mc, emb, scale_shift, g)
            layers = [("res", ch, m * mc, None)]
            ch = m * mc
            if lv in attn_levels:
                _attn_keys(sd, f"input_blocks.{i}.1", ch, g)
                layers.append(("attn", ch))
            plan["in"].append(layers)
            chans.append(ch)
        if lv != len(mult) - 1:
            i = len(plan["in"])
            if updown:
                _res_keys(sd, f"input_blocks.{i}.0", ch, ch, emb, scale_shift, g)
                plan["in"].append([("res", ch, ch, "down")])
            else:
                sd[f"input_blocks.{i}.0.op.weight"] = _rand(g, ch, ch, 3, 3)
                sd[f"input_blocks.{i}.0.op.bias"] = _rand(g, ch)
                plan["in"].append([("down", ch)])
            chans.append(ch)
    _res_keys(sd, "middle_block.0", ch, ch, emb, scale_shift, g)
    _attn_keys(sd, "middle_block.1", ch, g)
    _res_keys(sd, "middle_block.2", ch, ch, emb, scale_shift, g)
    plan["mid"] = [("res", ch, ch, None), ("attn", ch), ("res", ch, ch, None)]
    for lv, m in list(enumerate(mult))[::-1]:
        for j in range(nrb + 1):
            o = len(plan["out"])
            cin = ch + chans.pop()
            _res_keys(sd, f"output_blocks.{o}.0", cin, m * mc, emb, scale_shift, g)
            layers = [("res", cin, m * mc, None)]
            ch = m * mc
            if lv in attn_levels:
                _attn_keys(sd, f"output_blocks.{o}.{len(layers)}", ch, g)
                layers.append(("attn", ch))
            if lv and j == nrb:
                k = len(layers)
                if updown:
                    _res_keys(sd, f"output_blocks.{o}.{k}", ch, ch, emb, scale_shift, g)
                    layers.append(("res", ch, ch, "up"))
                else:
                    sd[f"output_blocks.{o}.{k}.conv.weight"], sd[f"output_blocks.{o}.{k}.conv.bias"] = \
                        _rand(g, ch, ch, 3, 3), _rand(g, ch)
                    layers.append(("up", ch))
            plan["out"].append(layers)
    out_ch = 2 * in_ch if learn_sigma else in_ch
    sd["out.0.weight"], sd["out.0.bias"] = 1 + _rand(g, ch), _rand(g, ch)
    sd["out.2.weight"], sd["out.2.bias"] = _rand(g, out_ch, ch, 3, 3), _rand(g, out_ch)
    return sd, plan


# ------------------------------------------------------------------ the OpenAI forward pass, from the equations
def _gn(x, sd, p):
    return F.group_norm(x.float(), 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-5)


def _resample(x, kind):
    return F.interpolate(x, scale_factor=2, mode="nearest") if kind == "up" else F.avg_pool2d(x, 2, 2)


def _res_fwd(sd, p, x, emb, resample, scale_shift):
    h = F.silu(_gn(x, sd, f"{p}.in_layers.0"))
    if resample:
        h, x = _resample(h, resample), _resample(x, resample)
    h = F.conv2d(h, sd[f"{p}.in_layers.2.weight"], sd[f"{p}.in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), sd[f"{p}.emb_layers.1.weight"], sd[f"{p}.emb_layers.1.bias"])[..., None, None]
    if scale_shift:
        scale, shift = e.chunk(2, dim=1)
        h = _gn(h, sd, f"{p}.out_layers.0") * (1 + scale) + shift
    else:
        h = _gn(h + e, sd, f"{p}.out_layers.0")
    h = F.conv2d(F.silu(h), sd[f"{p}.out_layers.3.weight"], sd[f"{p}.out_layers.3.bias"], padding=1)
    if f"{p}.skip_connection.weight" in sd:
        x = F.conv2d(x, sd[f"{p}.skip_connection.weight"], sd[f"{p}.skip_connection.bias"])
    return x + h


def per_head_attention(x, qkv_w, qkv_b, proj_w, proj_b, norm_w, norm_b, heads, order):
    """OpenAI's AttentionBlock, head by head with explicit row indices of the fused qkv:
    legacy — head h owns rows [3·ch·h, 3·ch·(h+1)) as [q_h; k_h; v_h]; new — q, k, v are the thirds, head h
    owns rows [ch·h, ch·(h+1)) of each third."""
    b, c, hh, ww = x.shape
    flat = x.reshape(b, c, -1)
    qkv = F.conv1d(F.group_norm(flat, 32, norm_w, norm_b, eps=1e-5), qkv_w, qkv_b)
    ch = c // heads
    outs = []
    for h in range(heads):
        if order == "legacy":
            base = 3 * ch * h
            q, k, v = (qkv[:, base + i * ch: base + (i + 1) * ch] for i in range(3))
        else:
            q, k, v = (qkv[:, i * c + ch * h: i * c + ch * (h + 1)] for i in range(3))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
        outs.append(torch.einsum("bts,bcs->bct", w, v))
    a = torch.cat(outs, dim=1)
    return (flat + F.conv1d(a, proj_w, proj_b)).reshape(b, c, hh, ww)


def _attn_fwd(sd, p, x, heads, order):
    return per_head_attention(x, sd[f"{p}.qkv.weight"], sd[f"{p}.qkv.bias"], sd[f"{p}.proj_out.weight"],
                              sd[f"{p}.proj_out.bias"], sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"], heads, order)


def openai_forward(sd, plan, x, t, mc, head_ch, scale_shift, order="legacy", num_heads=None):
    half = mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    emb = F.linear(F.silu(F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])

    def block(prefix, layers, h):
        for k, layer in enumerate(layers):
            p = f"{prefix}.{k}"
            if layer[0] == "conv_in":
                h = F.conv2d(h, sd[f"{p}.weight"], sd[f"{p}.bias"], padding=1)
            elif layer[0] == "res":
                h = _res_fwd(sd, p, h, emb, layer[3], scale_shift)
            elif layer[0] == "attn":
                h = _attn_fwd(sd, p, h, num_heads or layer[1] // head_ch, order)
            elif layer[0] == "down":
                h = F.conv2d(h, sd[f"{p}.op.weight"], sd[f"{p}.op.bias"], stride=2, padding=1)
            else:
                h = F.conv2d(F.interpolate(h, scale_factor=2, mode="nearest"), sd[f"{p}.conv.weight"],
                             sd[f"{p}.conv.bias"], padding=1)
        return h

    hs, h = [], x
    for i, layers in enumerate(plan["in"]):
        h = block(f"input_blocks.{i}", layers, h)
        hs.append(h)
    h = block("middle_block", plan["mid"], h)
    for o, layers in enumerate(plan["out"]):
        h = block(f"output_blocks.{o}", layers, torch.cat([h, hs.pop()], dim=1))
    h = F.silu(_gn(h, sd, "out.0"))
    return F.conv2d(h, sd["out.2.weight"], sd["out.2.bias"], padding=1)


# ------------------------------------------------------------------ tests
CASES = {  # improved-diffusion-like (conv resampling) and guided-diffusion-like (resblock_updown), both scale-shift
    "improved": dict(mc=32, mult=(1, 2), nrb=2, attn_levels=(1,), scale_shift=True, updown=False, learn_sigma=True),
    "guided": dict(mc=32, mult=(1, 1, 2), nrb=1, attn_levels=(1, 2), scale_shift=True, updown=True, learn_sigma=True),
    "plain": dict(mc=32, mult=(1, 2), nrb=1, attn_levels=(0,), scale_shift=False, updown=False, learn_sigma=False),
}


def _converted(case, head_ch=32, order="legacy", num_heads=None):
    sd, plan = openai_unet(**CASES[case])
    unet, _, info = convert_openai(sd, num_heads, None if num_heads else head_ch, order)
    return sd, plan, infer_arch(sd), unet


@pytest.mark.parametrize("case", sorted(CASES))
def test_conversion_uses_every_key_and_reads_the_architecture(case):
    sd, plan, arch, unet = _converted(case)
    c = CASES[case]
    assert arch.channels == tuple(m * c["mc"] for m in c["mult"]) and arch.num_res_blocks == c["nrb"]
    assert arch.attention == tuple(lv in c["attn_levels"] for lv in range(len(c["mult"])))
    assert (arch.updown, arch.scale_shift, arch.learn_sigma) == (c["updown"], c["scale_shift"], c["learn_sigma"])
    assert unet.config.out_channels == 1 and unet.config.resnet_time_scale_shift == (
        "scale_shift" if c["scale_shift"] else "default")
    left = dict(sd, **{"input_blocks.1.0.extra.weight": torch.zeros(1)})
    with pytest.raises(CertifyNetError, match="no place in the diffusers UNet.*extra"):
        convert_state_dict(left, arch, attention_heads(arch, None, 32), "legacy")


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_unet_computes_the_openai_forward_pass(case):
    """ε̂ of the converted UNet = the first C channels of OpenAI's output, for t as fed (floats: rescaled)."""
    sd, plan, arch, unet = _converted(case)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3.0, 517.25])
    with torch.no_grad():
        want = openai_forward(sd, plan, x, t, 32, 32, CASES[case]["scale_shift"])[:, :1]
        got = unet(x, t, return_dict=False)[0]
    assert want.abs().mean() > 0.05
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fixed_head_count_over_different_widths():
    """OpenAI's num_heads over attention widths 32 and 64 (head widths 16 and 32): no single attention_head_dim;
    per-module head counts (set_attention_heads) compute the OpenAI forward pass."""
    sd, plan, arch, unet = _converted("plain", num_heads=2)
    assert attention_heads(arch, 2, None) == {32: 2, 64: 2}
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([7.0, 300.0])
    with torch.no_grad():
        want = openai_forward(sd, plan, x, t, 32, None, False, num_heads=2)[:, :1]
        got = unet(x, t, return_dict=False)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(CertifyNetError, match="does not split into 3 heads"):
        attention_heads(arch, 3, None)


def test_wrong_qkv_order_is_silently_wrong():
    """The control: the same weights split in the other order compute a different function."""
    sd, plan, arch, unet_new = _converted("improved", order="new")
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([10.0, 700.0])
    with torch.no_grad():
        want = openai_forward(sd, plan, x, t, 32, 32, True, order="legacy")[:, :1]
        wrong = unet_new(x, t, return_dict=False)[0]
        right_new = openai_forward(sd, plan, x, t, 32, 32, True, order="new")[:, :1]
    assert not torch.allclose(wrong, want, atol=1e-3)
    torch.testing.assert_close(wrong, right_new, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", ["legacy", "new"])
def test_qkv_split_against_per_head_attention(order):
    """One attention block: diffusers' Attention with split_qkv weights = the per-head computation above."""
    from diffusers.models.attention_processor import Attention
    g = torch.Generator().manual_seed(3)
    c, heads = 64, 4
    sd = {}
    _attn_keys(sd, "a", c, g)
    x = torch.randn(2, c, 4, 4, generator=g)
    want = per_head_attention(x, sd["a.qkv.weight"], sd["a.qkv.bias"], sd["a.proj_out.weight"], sd["a.proj_out.bias"],
                              sd["a.norm.weight"], sd["a.norm.bias"], heads, order)
    attn = Attention(c, heads=heads, dim_head=c // heads, norm_num_groups=32, eps=1e-5, residual_connection=True,
                     bias=True, upcast_softmax=True, _from_deprecated_attn_block=True)
    (wq, bq), (wk, bk), (wv, bv) = split_qkv(sd["a.qkv.weight"], sd["a.qkv.bias"], heads, order)
    state = {"group_norm.weight": sd["a.norm.weight"], "group_norm.bias": sd["a.norm.bias"], "to_q.weight": wq,
             "to_q.bias": bq, "to_k.weight": wk, "to_k.bias": bk, "to_v.weight": wv, "to_v.bias": bv,
             "to_out.0.weight": sd["a.proj_out.weight"][..., 0], "to_out.0.bias": sd["a.proj_out.bias"]}
    attn.load_state_dict(state)
    with torch.no_grad():
        got = attn(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    other = "new" if order == "legacy" else "legacy"
    (wq2, _), _, _ = split_qkv(sd["a.qkv.weight"], sd["a.qkv.bias"], heads, other)
    assert not torch.equal(wq, wq2)


def test_openai_file_loads_through_the_loader(tmp_path):
    """A .pt in the OpenAI layout: recognised, converted, t* and the rescale recorded."""
    sd, _, _, _ = _converted("improved")
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    assert is_diffusion_source(str(path))
    opts = DiffusionOptions(openai_head_channels=32, diffusion_schedule="cosine:4000")
    den, meta = load_diffusion_denoiser(str(path), 0.5, opts)
    d = meta["diffusion"]
    assert d["layout"] == "openai" and d["learn_sigma"] and d["qkv_order"] == "legacy"
    assert d["t_star"] == 1984 and d["timestep_rescale"] == 0.25 and d["model_timestep"] == 496.0
    assert den(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)
    with pytest.raises(CertifyNetError, match="openai_heads"):
        load_diffusion_denoiser(str(path), 0.5, DiffusionOptions(diffusion_schedule="cosine:4000"))
    with pytest.raises(CertifyNetError, match="diffusion_schedule"):
        load_diffusion_denoiser(str(path), 0.5, DiffusionOptions(openai_heads=2))


def test_presets_match_published_architectures():
    """The published shapes (improved-diffusion CIFAR-10, guided-diffusion 256 uncond) pick their presets,
    on the meta device (no memory)."""
    with torch.device("meta"):
        cifar, _ = openai_unet(mc=128, mult=(1, 2, 2, 2), nrb=3, attn_levels=(1, 2), in_ch=3)
        adm, _ = openai_unet(mc=256, mult=(1, 1, 2, 2, 4, 4), nrb=2, attn_levels=(3, 4, 5), updown=True, in_ch=3)
    a, b = infer_arch(cifar), infer_arch(adm)
    assert match_preset(a) == "improved-diffusion-cifar10" and attention_heads(a, 4, None) == {256: 4}
    assert match_preset(b) == "guided-diffusion-256-uncond"
    assert attention_heads(b, None, 64) == {512: 8, 1024: 16}
    assert a.learn_sigma and a.scale_shift and not a.updown and b.updown


def test_refusals():
    sd, _ = openai_unet(**CASES["plain"])
    with pytest.raises(CertifyNetError, match="class-conditional"):
        infer_arch({**sd, "label_emb.weight": torch.zeros(10, 128)})
    no_op = {k: v for k, v in sd.items() if not k.startswith("input_blocks.2.")}
    with pytest.raises(CertifyNetError, match="conv_resample=False"):
        infer_arch(no_op)

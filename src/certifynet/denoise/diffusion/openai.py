"""OpenAI improved-diffusion / guided-diffusion UNet checkpoints → diffusers `UNet2DModel` (no official converter).

The mapping follows the published architecture (openai/improved-diffusion and openai/guided-diffusion
`unet.py`, `nn.py`; diffusers `unet_2d.py`, `unet_2d_blocks.py`, `resnet.py`, `attention_processor.py`):

- `time_embed.{0,2}` → `time_embedding.linear_{1,2}`; the sinusoidal embedding is [cos, sin] with frequencies
  exp(−ln(10⁴)·i/half): diffusers `flip_sin_to_cos=True, freq_shift=0`.
- `input_blocks.0.0` → `conv_in`; then per level, `num_res_blocks` × [ResBlock (+ AttentionBlock)], then a
  downsampler (`op` conv, or a ResBlock with `down=True` when `resblock_updown`) → `down_blocks.L.resnets.j`,
  `.attentions.j`, `.downsamplers.0`. `middle_block.{0,1,2}` → `mid_block.resnets.0`, `.attentions.0`, `.resnets.1`.
  `output_blocks` per level (lowest resolution first), `num_res_blocks + 1` × [ResBlock (+ attention)], the last
  with an upsampler (`conv`, or a ResBlock with `up=True`) → `up_blocks.U.resnets.j`, `.attentions.j`, `.upsamplers.0`.
  `out.{0,2}` → `conv_norm_out`, `conv_out`.
- ResBlock `in_layers.{0,2}`, `emb_layers.1`, `out_layers.{0,3}`, `skip_connection` → `norm1`, `conv1`,
  `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut`. Scale-shift norm (emb_layers of width 2C, [scale, shift],
  h = norm(h)(1 + scale) + shift) is diffusers' `resnet_time_scale_shift="scale_shift"`. Up/down ResBlocks apply
  nearest ×2 / 2×2 average pooling after norm+SiLU to both paths, as diffusers' ResnetBlock2D(up/down=True).
- AttentionBlock `norm`, `qkv` (Conv1d C → 3C), `proj_out` → `group_norm`, `to_q/to_k/to_v`, `to_out.0`. The
  3C qkv channels are ordered **(heads, 3, ch)** in improved-diffusion's QKVAttention and guided-diffusion's
  QKVAttentionLegacy ("legacy", both published checkpoints), **(3, heads, ch)** in guided-diffusion's
  QKVAttention (`use_new_attention_order`, "new"). Scale 1/√ch = diffusers' dim_head^−½.
- Learned variance (out channels 2C): `conv_out` keeps the first C rows (ε); the variance rows are dropped.
- The mid-block attention keeps its GroupNorm under scale_shift only with `attn_norm_num_groups=32`.

Constructs without a diffusers equivalent are refused by name: parameter-free resampling
(`conv_resample=False`), class conditioning (`label_emb`) and channel_mult[0] ≠ 1 (the time embedding's width is
then not block_out_channels[0]). One more has no config equivalent: OpenAI's fixed `num_heads` over attention
levels of different widths gives several head widths, while UNet2DModel has one `attention_head_dim`. The
smallest faithful alternative (`set_attention_heads`): build with any head width, then set each Attention
module's head count (diffusers' SDPA processor splits by `attn.heads` and scales by 1/√(C/heads)).
Timestep rescaling (improved-diffusion's `rescale_timesteps`: the model is fed t·1000/T) is not a weight: the
denoiser applies it (`PRESETS[...]["timestep_rescale"]`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from certifynet.denoise.diffusion.options import QKV_ORDERS
from certifynet.errors import CertifyNetError

# Published checkpoints Carlini et al. use: what their files cannot say.
PRESETS = {
    "improved-diffusion-cifar10": {  # cifar10_uncond_50M_500K.pt
        "num_heads": 4, "qkv_order": "legacy", "schedule": "cosine:4000", "timestep_rescale": 0.25,
        "sample_size": 32, "match": {"block_out_channels": [128, 256, 256, 256], "layers_per_block": 3,
                                     "updown": False}},
    "guided-diffusion-256-uncond": {  # 256x256_diffusion_uncond.pt
        "num_head_channels": 64, "qkv_order": "legacy", "schedule": "linear:1000", "timestep_rescale": 1.0,
        "sample_size": 256, "match": {"block_out_channels": [256, 256, 512, 512, 1024, 1024], "layers_per_block": 2,
                                      "updown": True}},
}
_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
        "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def is_openai_state_dict(state: dict) -> bool:
    return all(k in state for k in ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight"))


@dataclass(frozen=True)
class OpenAIArch:
    """What the key names and shapes of an OpenAI UNet say about it."""
    in_channels: int
    out_channels: int
    channels: tuple          # per level
    num_res_blocks: int
    attention: tuple         # per level: attention after each ResBlock?
    scale_shift: bool
    updown: bool             # resblock_updown
    attention_widths: tuple  # channels of every attention block (mid block included)

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels


def _children(state: dict, prefix: str) -> dict[int, set[str]]:
    """{i: names under prefix.i.*}: e.g. input_blocks.3 → {0: {'in_layers.0.weight', ...}, 1: {'qkv.weight', ...}}."""
    out: dict[int, set[str]] = {}
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.(.+)$")
    for k in state:
        m = pat.match(k)
        if m:
            out.setdefault(int(m.group(1)), set()).add(m.group(2))
    return out


def _is_res(names: set) -> bool:
    return "in_layers.0.weight" in names


def infer_arch(state: dict) -> OpenAIArch:
    """Levels, ResBlocks per level, attention, scale-shift and resblock_updown from the keys and shapes."""
    if "label_emb.weight" in state:
        raise CertifyNetError("class-conditional OpenAI UNet (label_emb): only unconditional models denoise for "
                              "smoothing")
    ins = _children(state, "input_blocks")
    outs = _children(state, "output_blocks")
    n_out = max(outs) + 1 if outs else 0
    if sorted(ins) != list(range(len(ins))) or sorted(outs) != list(range(n_out)):
        raise CertifyNetError("OpenAI UNet with parameter-free resampling (conv_resample=False): diffusers' "
                              "UNet2DModel has no such downsampler")
    per_level = None
    for o in range(n_out):  # the first output block that ends a level carries the upsampler
        subs = _children(state, f"output_blocks.{o}")
        if any(i > 0 and ("conv.weight" in names or _is_res(names)) for i, names in subs.items()):
            per_level = o + 1
            break
    if per_level is None or per_level < 2 or n_out % per_level:
        raise CertifyNetError(f"OpenAI UNet: cannot read its levels from {n_out} output blocks")
    levels, nrb = n_out // per_level, per_level - 1
    if len(ins) != 1 + levels * nrb + levels - 1:
        raise CertifyNetError(f"OpenAI UNet: {len(ins)} input blocks do not fit {levels} levels × {nrb} ResBlocks")
    channels, attention = [], []
    for lv in range(levels):
        first = 1 + lv * (nrb + 1)
        channels.append(int(state[f"input_blocks.{first + nrb - 1}.0.in_layers.2.weight"].shape[0]))
        attention.append(f"input_blocks.{first}.1.qkv.weight" in state)
    width0 = int(state["input_blocks.0.0.weight"].shape[0])
    if width0 != int(state["time_embed.0.weight"].shape[1]):
        raise CertifyNetError("OpenAI UNet with channel_mult[0] != 1: diffusers ties the time embedding's width "
                              "to block_out_channels[0]")
    updown = levels > 1 and f"input_blocks.{1 + nrb}.0.in_layers.0.weight" in state
    emb = state["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    widths = [int(v.shape[1]) for k, v in state.items() if k.endswith(".qkv.weight")]
    return OpenAIArch(in_channels=int(state["input_blocks.0.0.weight"].shape[1]),
                      out_channels=int(state["out.2.weight"].shape[0]), channels=tuple(channels), num_res_blocks=nrb,
                      attention=tuple(attention), scale_shift=emb == 2 * channels[0], updown=updown,
                      attention_widths=tuple(widths))


def match_preset(arch: OpenAIArch) -> str | None:
    """The name of the published checkpoint whose architecture this is, if any."""
    for name, p in PRESETS.items():
        m = p["match"]
        if (list(arch.channels) == m["block_out_channels"] and arch.num_res_blocks == m["layers_per_block"]
                and arch.updown == m["updown"]):
            return name
    return None


def attention_heads(arch: OpenAIArch, num_heads: int | None, num_head_channels: int | None) -> dict[int, int]:
    """{attention width C: heads} from OpenAI's num_heads (the same count everywhere) or num_head_channels."""
    if not num_heads and not num_head_channels:
        raise CertifyNetError("{openai_heads} (or {openai_head_channels}) is needed: an OpenAI file does not record "
                              "its attention heads", "openai_heads", "openai_head_channels")
    out = {}
    for w in sorted(set(arch.attention_widths)):
        if num_head_channels and w % num_head_channels:
            raise CertifyNetError(f"attention width {w} is not a multiple of num_head_channels={num_head_channels}")
        if not num_head_channels and w % num_heads:
            raise CertifyNetError(f"attention width {w} does not split into {num_heads} heads")
        out[w] = w // num_head_channels if num_head_channels else int(num_heads)
    return out


def set_attention_heads(unet: nn.Module, heads: dict[int, int]) -> int:
    """Give every Attention module of `unet` the head count of its width (`heads`); returns how many differ from
    the config's. Needed only when the head widths differ across levels (module docstring)."""
    changed = 0
    for m in unet.modules():
        if hasattr(m, "to_q") and hasattr(m, "heads"):
            width = m.to_q.in_features
            if m.heads != heads[width]:
                m.heads, changed = heads[width], changed + 1
                m.scale = (width // heads[width]) ** -0.5
    return changed


def diffusers_config(arch: OpenAIArch, attention_head_dim: int, sample_size: int | None = None) -> dict:
    """The UNet2DModel config of an OpenAI UNet (ε channels only)."""
    plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if arch.updown else \
        ("DownBlock2D", "UpBlock2D")
    return {
        "_class_name": "UNet2DModel", "sample_size": sample_size, "in_channels": arch.in_channels,
        "out_channels": arch.in_channels, "block_out_channels": list(arch.channels),
        "layers_per_block": arch.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else plain_down for a in arch.attention],
        "up_block_types": ["AttnUpBlock2D" if a else plain_up for a in reversed(arch.attention)],
        "downsample_type": "resnet" if arch.updown else "conv", "upsample_type": "resnet" if arch.updown else "conv",
        "resnet_time_scale_shift": "scale_shift" if arch.scale_shift else "default",
        "attn_norm_num_groups": 32, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
        "flip_sin_to_cos": True, "freq_shift": 0, "attention_head_dim": attention_head_dim,
        "mid_block_type": "UNetMidBlock2D", "add_attention": True, "downsample_padding": 1,
        "time_embedding_type": "positional", "center_input_sample": False, "dropout": 0.0,
    }


def split_qkv(weight: torch.Tensor, bias: torch.Tensor, heads: int, order: str):
    """OpenAI's fused qkv (Conv1d weight [3C, C, 1], bias [3C]) → ((W_q, b_q), (W_k, b_k), (W_v, b_v)), each W
    [C, C] with output channel h·ch + c (head h, channel c), as diffusers' to_q/to_k/to_v expect.
    'legacy': rows ordered (heads, 3, ch); 'new': (3, heads, ch)."""
    if order not in QKV_ORDERS:
        raise CertifyNetError(f"{{qkv_order}} must be one of {', '.join(QKV_ORDERS)}, got {order!r}", "qkv_order")
    w = weight.reshape(weight.shape[0], -1)
    c3, c_in = w.shape
    ch = c3 // (3 * heads)
    if ch * 3 * heads != c3:
        raise CertifyNetError(f"qkv of width {c3} does not split into 3 × {heads} heads")
    if order == "legacy":
        w, b = w.reshape(heads, 3, ch, c_in).transpose(0, 1), bias.reshape(heads, 3, ch).transpose(0, 1)
    else:
        w, b = w.reshape(3, heads, ch, c_in), bias.reshape(3, heads, ch)
    return tuple((w[i].reshape(heads * ch, c_in).contiguous(), b[i].reshape(heads * ch).contiguous())
                 for i in range(3))


def _res(state, src, dst, out):
    for a, b in _RES.items():
        for leaf in ("weight", "bias"):
            key = f"{src}.{a}.{leaf}"
            if key in state:
                out[f"{dst}.{b}.{leaf}"] = state[key]


def _attn(state, src, dst, out, heads, order):
    c = state[f"{src}.qkv.weight"].shape[1]
    for name, leaf in (("norm", "weight"), ("norm", "bias")):
        out[f"{dst}.group_norm.{leaf}"] = state[f"{src}.{name}.{leaf}"]
    parts = split_qkv(state[f"{src}.qkv.weight"], state[f"{src}.qkv.bias"], heads[c], order)
    for name, (w, b) in zip(("to_q", "to_k", "to_v"), parts):
        out[f"{dst}.{name}.weight"], out[f"{dst}.{name}.bias"] = w, b
    out[f"{dst}.to_out.0.weight"] = state[f"{src}.proj_out.weight"].reshape(c, c)
    out[f"{dst}.to_out.0.bias"] = state[f"{src}.proj_out.bias"]


def _resampler(state, src, dst, out, conv_name):
    """A downsampler/upsampler: a ResBlock (resblock_updown) or a conv named `conv_name` (op | conv)."""
    if f"{src}.in_layers.0.weight" in state:
        _res(state, src, dst, out)
    else:
        out[f"{dst}.conv.weight"], out[f"{dst}.conv.bias"] = state[f"{src}.{conv_name}.weight"], \
            state[f"{src}.{conv_name}.bias"]


class _Reads(dict):
    """A state dict that remembers which keys were read (`unread()`: what a conversion left unmatched)."""

    def __init__(self, state: dict):
        super().__init__(state)
        self.read: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def unread(self) -> list[str]:
        return sorted(set(self) - self.read)


def convert_state_dict(state: dict, arch: OpenAIArch, heads: dict[int, int], qkv_order: str = "legacy") -> dict:
    """OpenAI keys → diffusers UNet2DModel keys (see the module docstring). Source keys left unread are an
    error naming the first of them (the learned-variance rows of `out.2` are read and dropped)."""
    state = _Reads(state)
    out: dict = {}
    for i, lin in ((1, "time_embed.0"), (2, "time_embed.2")):
        out[f"time_embedding.linear_{i}.weight"] = state[f"{lin}.weight"]
        out[f"time_embedding.linear_{i}.bias"] = state[f"{lin}.bias"]
    out["conv_in.weight"], out["conv_in.bias"] = state["input_blocks.0.0.weight"], state["input_blocks.0.0.bias"]
    nrb, levels = arch.num_res_blocks, len(arch.channels)
    for lv in range(levels):
        first = 1 + lv * (nrb + 1)
        for j in range(nrb):
            _res(state, f"input_blocks.{first + j}.0", f"down_blocks.{lv}.resnets.{j}", out)
            if arch.attention[lv]:
                _attn(state, f"input_blocks.{first + j}.1", f"down_blocks.{lv}.attentions.{j}", out, heads,
                      qkv_order)
        if lv < levels - 1:
            _resampler(state, f"input_blocks.{first + nrb}.0", f"down_blocks.{lv}.downsamplers.0", out, "op")
    _res(state, "middle_block.0", "mid_block.resnets.0", out)
    _attn(state, "middle_block.1", "mid_block.attentions.0", out, heads, qkv_order)
    _res(state, "middle_block.2", "mid_block.resnets.1", out)
    for u in range(levels):
        lv = levels - 1 - u
        for j in range(nrb + 1):
            o = u * (nrb + 1) + j
            _res(state, f"output_blocks.{o}.0", f"up_blocks.{u}.resnets.{j}", out)
            if arch.attention[lv]:
                _attn(state, f"output_blocks.{o}.1", f"up_blocks.{u}.attentions.{j}", out, heads, qkv_order)
            if j == nrb and lv > 0:
                _resampler(state, f"output_blocks.{o}.{2 if arch.attention[lv] else 1}", f"up_blocks.{u}.upsamplers.0",
                           out, "conv")
    c = arch.in_channels
    out["conv_norm_out.weight"], out["conv_norm_out.bias"] = state["out.0.weight"], state["out.0.bias"]
    out["conv_out.weight"], out["conv_out.bias"] = state["out.2.weight"][:c], state["out.2.bias"][:c]
    left = state.unread()
    if left:
        raise CertifyNetError(f"OpenAI UNet: {len(left)} keys have no place in the diffusers UNet, first {left[:3]}")
    return out


def convert_openai(state: dict, num_heads: int | None = None, num_head_channels: int | None = None,
                   qkv_order: str | None = None, sample_size: int | None = None):
    """(UNet2DModel in eval mode, its config, info) from an OpenAI state dict. Heads and qkv order default to the
    preset whose architecture the file has; `info` records the architecture read, the preset and the choices."""
    from certifynet.denoise.diffusion.folders import build_unet, load_state_strict
    arch = infer_arch(state)
    preset = match_preset(arch)
    p = PRESETS.get(preset, {})
    if not num_heads and not num_head_channels:
        num_heads, num_head_channels = p.get("num_heads"), p.get("num_head_channels")
    heads = attention_heads(arch, num_heads, num_head_channels)
    mid = arch.channels[-1]
    order = qkv_order or p.get("qkv_order", "legacy")
    config = diffusers_config(arch, mid // heads[mid], sample_size or p.get("sample_size"))
    unet = build_unet(config, "converted OpenAI UNet")
    load_state_strict(unet, convert_state_dict(state, arch, heads, order), "converted OpenAI UNet",
                      what="the converted UNet")
    set_attention_heads(unet, heads)
    info = {"layout": "openai", "preset": preset, "learn_sigma": arch.learn_sigma, "qkv_order": order,
            "attention_heads": {str(w): h for w, h in heads.items()}, "resblock_updown": arch.updown,
            "scale_shift_norm": arch.scale_shift, "schedule_default": p.get("schedule"),
            "timestep_rescale_default": p.get("timestep_rescale")}
    return unet.eval().requires_grad_(False), config, info

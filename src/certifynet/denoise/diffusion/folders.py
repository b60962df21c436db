"""Reading diffusers folders offline: the three layouts, bounded reads, weights without pickled code.

Layouts (`find_layout`):
- **flat** (google/ddpm-cifar10-32): `config.json` (a UNet2DModel), `diffusion_pytorch_model.safetensors` or `.bin`,
  `scheduler_config.json`;
- **pipeline** (`DDPMPipeline.save_pretrained`): `model_index.json`, `unet/` (config + weights), `scheduler/`;
- **hub-cache**: `models--ORG--NAME/` with `refs/main` and `snapshots/<hash>/` (flat or pipeline inside), or a
  snapshot folder itself; the snapshot's files may be links into `blobs/`.

Nothing is downloaded: the UNet is built with `UNet2DModel.from_config` from the JSON we read and its weights
are loaded from the local file, safetensors or a `.bin` read with `torch.load(weights_only=True)`
(`models.read_checkpoint_file`). JSON files over `MAX_JSON_BYTES` and weight files over `max_bytes` are refused
before they are read. diffusers is imported lazily (≈ 3 s) with `HF_HUB_OFFLINE=1`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
from dataclasses import dataclass

import torch
from torch import nn

from certifynet.denoise.diffusion.options import MAX_WEIGHT_BYTES
from certifynet.errors import CertifyNetError

MAX_JSON_BYTES = 1 << 20
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULER_NAME = "scheduler_config.json"
# diffusers' pre-0.14 attention names (google/ddpm-cifar10-32's .bin) → today's
_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def diffusers_lib():
    """`import diffusers` with the Hub switched off (HF_HUB_OFFLINE=1 unless the caller set it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import diffusers
    except ImportError:
        raise CertifyNetError("diffusion denoisers need the 'diffusers' package (pip install -r requirements.txt)") \
            from None
    return diffusers


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers logs config notes (unused keys, ...) through its own logger: keep them to errors here."""
    log = logging.getLogger("diffusers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@dataclass(frozen=True)
class Layout:
    """Where a diffusers model's files are: `kind` (flat | pipeline | hub-cache/flat | hub-cache/pipeline),
    the UNet's folder, the scheduler config (None if absent) and the folder the user named."""
    kind: str
    unet_dir: str
    scheduler: str | None
    root: str


def _snapshot(root: str) -> str | None:
    """The snapshot folder of a hub-cache repository folder (refs/main, else the only snapshot)."""
    snaps = os.path.join(root, "snapshots")
    if not os.path.isdir(snaps):
        return None
    ref = os.path.join(root, "refs", "main")
    if os.path.isfile(ref) and os.path.getsize(ref) < 256:
        with open(ref, encoding="utf-8") as f:
            cand = os.path.join(snaps, f.read().strip())
        if os.path.isdir(cand):
            return cand
    found = sorted(d for d in os.listdir(snaps) if os.path.isdir(os.path.join(snaps, d)))
    if len(found) != 1:
        raise CertifyNetError(f"diffusion model '{root}': hub cache with {len(found)} snapshots and no refs/main; "
                              f"pass the snapshot folder itself")
    return os.path.join(snaps, found[0])


def find_layout(path: str) -> Layout:
    """The layout of a diffusers folder (module docstring), or a one-line error naming what is missing."""
    if not os.path.isdir(path):
        raise CertifyNetError(f"diffusion model folder '{path}' not found")
    root, folder, prefix = os.path.abspath(path), os.path.abspath(path), ""
    snap = _snapshot(folder)
    if snap is not None:
        folder, prefix = snap, "hub-cache/"
    elif os.path.basename(os.path.dirname(folder)) == "snapshots":
        prefix = "hub-cache/"
    if os.path.isfile(os.path.join(folder, "unet", "config.json")):
        sched = os.path.join(folder, "scheduler", SCHEDULER_NAME)
        return Layout(prefix + "pipeline", os.path.join(folder, "unet"), sched if os.path.isfile(sched) else None, root)
    if os.path.isfile(os.path.join(folder, "config.json")):
        sched = os.path.join(folder, SCHEDULER_NAME)
        return Layout(prefix + "flat", folder, sched if os.path.isfile(sched) else None, root)
    raise CertifyNetError(f"'{path}' is not a diffusers model folder: no config.json, unet/config.json or "
                          f"hub-cache snapshots/ in it")


def read_json(path: str, limit: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from a file of at most `limit` bytes, with one-line errors."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"'{path}' not found")
    if os.path.getsize(path) > limit:
        raise CertifyNetError(f"'{path}' is {os.path.getsize(path):,} bytes: too large for a config (limit {limit:,})")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CertifyNetError(f"'{path}' is not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise CertifyNetError(f"'{path}' does not hold a JSON object")
    return data


def weights_path(unet_dir: str) -> str:
    """The UNet's weight file: safetensors first, then .bin; sharded checkpoints are refused."""
    for name in WEIGHT_NAMES:
        cand = os.path.join(unet_dir, name)
        if os.path.isfile(cand):
            return cand
    if any(f.endswith(".index.json") for f in os.listdir(unet_dir)):
        raise CertifyNetError(f"'{unet_dir}' holds a sharded checkpoint, which is not supported")
    raise CertifyNetError(f"'{unet_dir}' has no weights ({' or '.join(WEIGHT_NAMES)})")


def _check_size(path: str, max_bytes: int) -> None:
    size = os.path.getsize(path)
    if size > max_bytes:
        raise CertifyNetError(f"weights '{path}' are {size / 2**30:.1f} GiB, over the {max_bytes / 2**30:.1f} GiB "
                              f"limit (pass a larger max_bytes if you trust the file)")


def read_safetensors(path: str, max_bytes: int = MAX_WEIGHT_BYTES) -> dict:
    """Tensors of a .safetensors file; its JSON header must be shorter than the file and than MAX_JSON_BYTES·100."""
    _check_size(path, max_bytes)
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or not 2 <= struct.unpack("<Q", head)[0] <= min(os.path.getsize(path) - 8, 100 * MAX_JSON_BYTES):
        raise CertifyNetError(f"weights '{path}' are not a safetensors file (bad header)")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CertifyNetError(f"weights '{path}' are corrupt ({type(e).__name__})") from None


def read_weights(path: str, max_bytes: int = MAX_WEIGHT_BYTES) -> dict:
    """A state dict from .safetensors or a torch file (weights_only=True), size-checked first."""
    if path.endswith(".safetensors"):
        return read_safetensors(path, max_bytes)
    if not os.path.isfile(path):
        raise CertifyNetError(f"weights '{path}' not found")
    _check_size(path, max_bytes)
    from certifynet.models import read_checkpoint_file
    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CertifyNetError(f"weights '{path}' are not a state dict of tensors")
    return state


def rename_deprecated_attention(state: dict) -> dict:
    """diffusers' old attention keys (…attentions.N.query/key/value/proj_attn) → to_q/to_k/to_v/to_out.0."""
    out = {}
    for k, v in state.items():
        head, _, leaf = k.rpartition(".")
        block, _, name = head.rpartition(".")
        if ".attentions." in k and name in _DEPRECATED_ATTN:
            k = f"{block}.{_DEPRECATED_ATTN[name]}.{leaf}"
        out[k] = v
    return out


def build_unet(config: dict, where: str) -> nn.Module:
    """`UNet2DModel.from_config(config)` (fresh weights); any other model class is refused."""
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise CertifyNetError(f"'{where}' is a {cls}, not a UNet2DModel (only unconditional pixel-space UNets can "
                              f"denoise images for smoothing)")
    lib = diffusers_lib()
    try:
        with _quiet_diffusers():
            return lib.UNet2DModel.from_config(config)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CertifyNetError(f"'{where}': cannot build its UNet2DModel ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None


def load_state_strict(model: nn.Module, state: dict, where: str, what: str = "the UNet of its config") -> None:
    """load_state_dict with a one-line error naming the first unmatched/missing key or the first bad shape;
    NaN/Inf weights are refused. BatchNorm's `num_batches_tracked` may be missing."""
    from certifynet.models import check_finite_weights
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        raise CertifyNetError(f"weights '{where}' do not fit {what}: unmatched keys "
                              f"{unexpected[:3] or '-'}, missing {missing[:3] or '-'}")
    bad = [k for k in state if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise CertifyNetError(f"weights '{where}': '{bad[0]}' has shape {tuple(state[bad[0]].shape)}, expected "
                              f"{tuple(expected[bad[0]].shape)}")
    check_finite_weights(state, where)
    model.load_state_dict({**expected, **{k: v.to(expected[k].dtype) for k, v in state.items()}})


@dataclass
class DiffusersModel:
    """A UNet read from a diffusers folder: the module (eval), its config, the scheduler config (or None),
    the layout and the weight file."""
    unet: nn.Module
    config: dict
    scheduler: dict | None
    layout: Layout
    weights: str


def load_diffusers_folder(path: str, max_bytes: int = MAX_WEIGHT_BYTES) -> DiffusersModel:
    """Read a diffusers folder in any of the three layouts (see the module docstring)."""
    layout = find_layout(path)
    cfg_path = os.path.join(layout.unet_dir, "config.json")
    config = read_json(cfg_path)
    unet = build_unet(config, cfg_path)
    wpath = weights_path(layout.unet_dir)
    state = rename_deprecated_attention(read_weights(wpath, max_bytes))
    load_state_strict(unet, state, wpath)
    sched = read_json(layout.scheduler) if layout.scheduler else None
    return DiffusersModel(unet.eval().requires_grad_(False), config, sched, layout, wpath)

"""Denoiser checkpoints: our format, the denoised-smoothing reference layout and KAIR's bare DRUNet weights.

Our file (written atomically by `save_denoiser`)::

    {"format": "certifynet-denoiser", "version", "config": denoiser_config(D), "state_dict",
     "sigma": {"mode": "fixed"|"choice"|"uniform", "values": [...]}, "objective", "epoch",
     "optimizer", "scheduler", "args"}

`load_denoiser` also reads
- the reference layout of microsoft/denoised-smoothing, {"arch": "cifar_dncnn" | "cifar_dncnn_wide" |
  "imagenet_dncnn", "state_dict", ...} (DataParallel's `module.` stripped), DnCNN depth/width from the shapes;
- KAIR's bare DRUNet state dict (drunet_gray.pth, drunet_color.pth): channels and nb from the shapes.
Every file is read through `models.checkpoint.read_checkpoint_file` (weights_only=True, its inflated size
bounded), so pickled objects are refused; the header of ours is validated like user input
(`models.header.validate_denoiser_header`) before the model it describes is built.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from certifynet.denoise.registry import build_denoiser_from_config, denoiser_config, get_denoiser
from certifynet.errors import CertifyNetError
from certifynet.models.checkpoint import (
    CHECKPOINT_FORMAT,
    check_finite_weights,
    plain,
    read_checkpoint_file,
    write_checkpoint,
)
from certifynet.models.header import validate_denoiser_header

DENOISER_FORMAT = "certifynet-denoiser"
# Denoiser architectures of the denoised-smoothing code that we can rebuild (all DnCNN variants).
REFERENCE_DNCNN_ARCHS = ("cifar_dncnn", "cifar_dncnn_wide", "imagenet_dncnn")


@dataclass
class LoadedDenoiser:
    """A denoiser rebuilt from a file: `model(x_noisy, σ)` in eval mode, its JSON-able `config`, the training
    σ spec (None when unknown), where it came from ('certifynet' | 'reference' | 'kair') and the raw dict."""
    model: nn.Module
    path: str
    config: dict
    sigma: dict | None = None
    objective: str | None = None
    epoch: int = 0
    source: str = "certifynet"
    raw: dict = field(repr=False, default_factory=dict)


def save_denoiser(path: str, model: nn.Module, *, sigma: dict | None = None, objective: str | None = None,
                  epoch: int = 0, optimizer=None, scheduler=None, args=None, extra: dict | None = None) -> None:
    """Write {"format": "certifynet-denoiser", "config", "state_dict", "sigma", "objective", "epoch",
    "optimizer", "scheduler", "args"} atomically (temp file + rename)."""
    write_checkpoint(path, {"format": DENOISER_FORMAT, "config": plain(denoiser_config(model)),
                            "sigma": plain(sigma), "objective": objective},
                     model, epoch=epoch, optimizer=optimizer, scheduler=scheduler, args=args, extra=extra)


def _strip(state: dict) -> dict:
    """Tensors only, without DataParallel/DDP `module.` and torch.compile `_orig_mod.` prefixes."""
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in state.items() if torch.is_tensor(v)}


def _conv_weights(state: dict, prefix: str):
    """4-d weights under `prefix` in layer order (`prefix.<i>.weight`)."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.weight$")
    hits = sorted((int(m.group(1)), v) for k, v in state.items() if (m := pat.match(k)) and v.ndim == 4)
    return [v for _, v in hits]


def _infer_dncnn(state: dict) -> nn.Module:
    """DnCNN from `dncnn.<i>.weight` shapes: in_channels = W₀.shape[1], channels = W₀.shape[0], depth = #convs."""
    convs = _conv_weights(state, "dncnn")
    return get_denoiser("dncnn", convs[0].shape[1], channels=convs[0].shape[0], depth=len(convs))


def _kair_single_body(state: dict) -> dict:
    """KAIR builds m_body with B.sequential(*nb ResBlocks), which returns a lone module unwrapped: with nb = 1
    its keys are `m_body.res.*`, not `m_body.0.res.*`. Put the index back so that our Sequential loads it."""
    return {("m_body.0." + k[len("m_body."):] if k.startswith("m_body.res.") else k): v for k, v in state.items()}


def _infer_drunet(state: dict) -> nn.Module:
    """DRUNet from KAIR key shapes: in_channels = head.shape[1] − 1, c_i = down_i's stride conv width, nb from
    ResBlocks."""
    nb = len({k.split(".")[1] for k in state if k.startswith("m_down1.") and ".res." in k})
    if nb < 1:
        raise CertifyNetError("DRUNet weights without ResBlocks in m_down1")
    c0 = state["m_head.weight"].shape[0]
    downs = [state.get(f"m_down{i}.{nb}.weight") for i in (1, 2, 3)]
    if any(w is None for w in downs):
        raise CertifyNetError(f"DRUNet weights lack the stride-2 convs m_down1..3.{nb}.weight")
    return get_denoiser("drunet", state["m_head.weight"].shape[1] - 1,
                        channels=(c0, *(w.shape[0] for w in downs)), nb=nb)


def _load_strict(model: nn.Module, state: dict, path: str) -> None:
    """load_state_dict with a one-line error naming the first unmatched keys or the first shape mismatch.
    BatchNorm `num_batches_tracked` (absent from pre-0.4.1 files) may be missing."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CertifyNetError(f"denoiser '{path}' does not match {denoiser_config(model)}: "
                              f"unmatched keys {unexpected[:3] or '-'}, missing {missing[:3] or '-'}")
    bad = [k for k in state if state[k].shape != expected[k].shape]
    if bad:
        raise CertifyNetError(f"denoiser '{path}': shape of '{bad[0]}' is {tuple(state[bad[0]].shape)}, "
                              f"expected {tuple(expected[bad[0]].shape)}")
    model.load_state_dict({**expected, **state})


def _reference_or_kair(raw: dict, path: str) -> tuple[nn.Module, dict, str]:
    """(model, state, source) of a file that is not ours: the denoised-smoothing layout ({"arch", "state_dict"})
    or KAIR's bare state dict, the architecture read off the weights' shapes."""
    if isinstance(raw.get("state_dict"), dict):
        state, source = raw["state_dict"], "reference"
        arch = raw.get("arch")
        if isinstance(arch, str) and arch not in REFERENCE_DNCNN_ARCHS:
            raise CertifyNetError(f"denoiser '{path}' has reference arch '{arch}'; only "
                                  f"{', '.join(REFERENCE_DNCNN_ARCHS)} (DnCNN) can be rebuilt")
    elif raw and all(torch.is_tensor(v) for v in raw.values()):
        state, source = raw, "kair"
    else:
        raise CertifyNetError(f"denoiser '{path}' has no 'state_dict' and is not a state dict "
                              f"(keys {sorted(map(str, raw))[:5]})")
    state = _strip(state)
    if "dncnn.0.weight" in state:
        return _infer_dncnn(state), state, source
    if "m_head.weight" in state:
        state = _kair_single_body(state)
        return _infer_drunet(state), state, source
    raise CertifyNetError(f"denoiser '{path}' has an unknown layout: unmatched keys {list(state)[:3] or '-'} "
                          f"(expected DnCNN 'dncnn.0.weight' or DRUNet 'm_head.weight')")


def load_denoiser(path: str, device="cpu") -> LoadedDenoiser:
    """Rebuild the denoiser stored in `path` (any supported layout), in eval mode on `device`."""
    raw = read_checkpoint_file(path)
    if not isinstance(raw, dict):
        raise CertifyNetError(f"denoiser '{path}' is not a dict of tensors")
    if raw.get("format") == CHECKPOINT_FORMAT:
        raise CertifyNetError(f"'{path}' is a classifier checkpoint; pass it as {{model}}, not {{denoiser}}",
                              "model", "denoiser")
    kw = {}
    if raw.get("format") == DENOISER_FORMAT:
        if not isinstance(raw.get("config"), dict) or not isinstance(raw.get("state_dict"), dict):
            raise CertifyNetError(f"denoiser '{path}' lacks its 'config' or 'state_dict'")
        validate_denoiser_header(raw, path)  # every field, like user input, before the model is built
        model, state, source = build_denoiser_from_config(raw["config"]), raw["state_dict"], "certifynet"
        kw = {"sigma": raw.get("sigma"), "objective": raw.get("objective"), "epoch": int(raw.get("epoch") or 0)}
    else:
        model, state, source = _reference_or_kair(raw, path)
    state = _strip(state)
    check_finite_weights(state, path)
    _load_strict(model, state, path)
    return LoadedDenoiser(model=model.to(device).eval(), path=os.path.abspath(path),
                          config=plain(denoiser_config(model)), source=source, raw=raw, **kw)

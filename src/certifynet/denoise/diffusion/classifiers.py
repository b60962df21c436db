"""Any classifier behind a denoiser: certifynet's registry, torchvision or timm, built by name with random weights
(`pretrained=False`, nothing downloaded) and loaded from a local file (safetensors, or torch with weights_only).

The classifier F receives the denoiser's output in [0, 1] at the input's resolution. Resizing to F's
resolution and F's normalisation are part of the composed model (`ResizeNormalize`, run on the device):
    x̂ ∈ [0,1]^{C×H×W} → resize to S×S (Carlini et al.: 32 → 224, bicubic, antialiased) → (x̂ − μ)/s → F.
Defaults: timm — the model's `pretrained_cfg` (input size, mean/std, interpolation); torchvision — 224 and the
ImageNet mean/std; the registry — its own NormalizeLayer (inside the model) and the dataset's size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from certifynet.errors import CertifyNetError

SOURCES = ("certifynet", "torchvision", "timm")
RESIZE_MODES = ("bicubic", "bilinear", "nearest")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ResizeNormalize(nn.Module):
    """x ↦ ((resize(x, S) − μ)/s): the classifier side of the chain. `size` None keeps the resolution;
    `mean`/`std` None skip the normalisation (the registry's models normalise themselves)."""

    def __init__(self, size: int | None = None, mode: str = "bicubic", mean=None, std=None):
        super().__init__()
        if mode not in RESIZE_MODES:
            raise CertifyNetError(f"{{classifier_resize}} must be one of {', '.join(RESIZE_MODES)}, got {mode!r}",
                                  "classifier_resize")
        self.size, self.mode = size, mode
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size and tuple(x.shape[-2:]) != (self.size, self.size):
            kw = {} if self.mode == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode, **kw)
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}, normalize={self.normalize}"


@dataclass
class ClassifierSpec:
    """A classifier by name: 'torchvision:NAME', 'timm:NAME', a registry arch (lenet, cifar_resnet110, ...) or a
    certifynet/reference checkpoint path. `weights`: a local file (required except for a checkpoint path;
    None builds random weights, for tests and speed checks). None fields take the source's defaults."""
    name: str
    weights: str | None = None
    num_classes: int | None = None
    dataset: str | None = None
    input_size: int | None = None
    mean: tuple | None = None
    std: tuple | None = None
    resize_mode: str | None = None


def _source(name: str) -> tuple[str, str]:
    head, sep, rest = name.partition(":")
    if sep and head in ("torchvision", "timm"):
        return head, rest
    return "certifynet", name


def _unwrap_state(state: dict, path: str) -> dict:
    for key in ("state_dict", "model", "module"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    out = {}
    for k, v in state.items():
        if torch.is_tensor(v):
            for prefix in ("module.", "_orig_mod."):
                k = k.removeprefix(prefix)
            out[k] = v
    if not out:
        raise CertifyNetError(f"classifier weights '{path}' hold no tensors")
    return out


def _read(path: str) -> dict:
    from certifynet.denoise.diffusion.folders import read_weights
    if path.endswith(".safetensors"):
        return read_weights(path)
    from certifynet.models import read_checkpoint_file
    raw = read_checkpoint_file(path)
    if not isinstance(raw, dict):
        raise CertifyNetError(f"classifier weights '{path}' are not a dict of tensors")
    return _unwrap_state(raw, path)


def _build_external(source: str, name: str, num_classes: int) -> nn.Module:
    try:
        if source == "timm":
            import timm
            return timm.create_model(name, pretrained=False, num_classes=num_classes)
        import torchvision
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CertifyNetError(f"{source} cannot build classifier {name!r}: {str(e).splitlines()[0][:160]}") from None


def _external_defaults(source: str, net: nn.Module) -> dict:
    if source == "timm":
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        return {"input_size": int(cfg.get("input_size", (3, 224, 224))[-1]),
                "mean": tuple(cfg.get("mean", IMAGENET_MEAN)), "std": tuple(cfg.get("std", IMAGENET_STD)),
                "resize_mode": cfg.get("interpolation", "bicubic")}
    return {"input_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "resize_mode": "bilinear"}


def build_classifier(spec: ClassifierSpec) -> tuple[nn.Module, dict]:
    """(ResizeNormalize → F, meta) in eval mode. The meta names the source, weights (+ SHA-256), classes,
    resolution, resize mode and normalisation, for the sidecar and the load summary."""
    from certifynet.models import file_sha256
    source, name = _source(spec.name)
    if source == "certifynet":
        return _registry_classifier(spec)
    if not spec.num_classes:
        raise CertifyNetError(f"classifier {spec.name!r} needs {{num_classes}}", "num_classes")
    net = _build_external(source, name, int(spec.num_classes))
    d = _external_defaults(source, net)
    size = spec.input_size or d["input_size"]
    mean, std = spec.mean or d["mean"], spec.std or d["std"]
    mode = spec.resize_mode or (d["resize_mode"] if d["resize_mode"] in RESIZE_MODES else "bicubic")
    meta = {"classifier": spec.name, "classifier_source": source, "num_classes": int(spec.num_classes),
            "classifier_input_size": size, "classifier_resize": mode,
            "classifier_normalization": {"mean": list(mean), "std": list(std)}}
    if spec.weights:
        if not os.path.isfile(spec.weights):
            raise CertifyNetError(f"classifier weights '{spec.weights}' not found")
        from certifynet.denoise.diffusion.folders import load_state_strict
        load_state_strict(net, _read(spec.weights), spec.weights, what=f"{source} {name}")
        meta.update(classifier_weights=os.path.abspath(spec.weights), classifier_sha256=file_sha256(spec.weights))
    else:
        meta.update(classifier_weights=None)
    model = nn.Sequential(ResizeNormalize(size, mode, mean, std), net)
    meta["classifier_parameters"] = sum(p.numel() for p in net.parameters())
    return model.eval().requires_grad_(False), meta


def _registry_classifier(spec: ClassifierSpec) -> tuple[nn.Module, dict]:
    """A certifynet checkpoint (path) or a registry arch with `weights` (or random weights)."""
    from certifynet.models import get_architecture, load_checkpoint
    if os.path.isfile(spec.name) or spec.weights:
        ckpt = load_checkpoint(spec.name if os.path.isfile(spec.name) else spec.weights,
                               arch=None if os.path.isfile(spec.name) else spec.name, dataset=spec.dataset)
        net, meta = ckpt.model, ckpt.metadata()
    else:
        if not spec.dataset:
            raise CertifyNetError(f"registry classifier {spec.name!r} needs {{dataset}}", "dataset")
        net = get_architecture(spec.name, spec.dataset)
        meta = {"model": None, "arch": spec.name, "dataset": spec.dataset}
    mode = spec.resize_mode or "bicubic"
    meta.update(classifier=spec.name, classifier_source="certifynet", classifier_input_size=spec.input_size,
                classifier_resize=mode if spec.input_size else None,
                classifier_parameters=sum(p.numel() for p in net.parameters()))
    if spec.input_size:
        net = nn.Sequential(ResizeNormalize(spec.input_size, mode), net)
    return net.eval().requires_grad_(False), meta

"""Model registry, normalisation layer and checkpoints (ours and the reference repos').

Every model is `nn.Sequential(NormalizeLayer, net)`: noise is added in [0,1] pixel space and the
normalisation is the first layer, as in Cohen et al.'s code. The architectures carry the reference
parameter names, so `model.state_dict()` keys are `1.<name>` exactly as in the published checkpoints
(Cohen et al. `locuslab/smoothing`, consistency `jh-jeong/smoothing-consistency`, SmoothMix
`jh-jeong/smoothmix`, DSRS `llylly/DSRS`), and loading one of them is a key remap (`load_checkpoint`).

Reference layouts (all `torch.save({'epoch', 'arch', 'state_dict', 'optimizer'}, ...)`, the state_dict of
`Sequential(normalize_layer, net)`; the reference NormalizeLayer keeps its mean/std as plain attributes,
so no `0.` keys):

- CIFAR-10 `cifar_resnet20/110`, MNIST `lenet` / `mnist_43`: `1.<name>`.
- ImageNet `resnet50`: the net is `DataParallel(torchvision resnet50)`, so `1.module.<name>`.
- `mnist_43` (DSRS `Conv4FC3`) is itself an `nn.Sequential`: `1.0.weight`, `1.2.weight`, ... `1.13.bias`.

Input normalisation differs between the references, and nothing in a reference file records it:

- CIFAR-10 / ImageNet: Cohen's per-channel mean/std (also consistency, SmoothMix, DSRS CIFAR-10).
- MNIST `lenet` (consistency, SmoothMix): none (`get_normalize_layer('mnist')` is `nn.Identity`).
- MNIST `mnist_43` (DSRS): mean 0.5, std 0.5.
- ImageNet models *trained or fine-tuned by DSRS*: mean subtraction only (`InputCenterLayer`; DSRS uses
  Cohen's full normalisation only for the original Cohen models, its `--comment orig-cohen`). The keys are
  identical to Cohen's, so these need `normalization='center'` (`--normalization center`).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import math
import os
import pickle
import re
import sys
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from certifynet._version import __version__
from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.records import atomic_write

CHECKPOINT_FORMAT = "certifynet-checkpoint"

# ---------------------------------------------------------------- normalisation
IDENTITY = ((0.0,), (1.0,))
# Per-dataset mean/std of the references' NormalizeLayer (Cohen's CIFAR-10/ImageNet values; MNIST 0.5/0.5 is
# DSRS's). `default_normalization` applies the per-architecture exceptions (lenet: identity).
NORMALIZATION = {
    "mnist": ((0.5,), (0.5,)),
    "mnist5k": ((0.5,), (0.5,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# (arch, dataset) whose reference convention is not NORMALIZATION[dataset].
_ARCH_NORMALIZATION = {("lenet", "mnist"): "identity", ("lenet", "mnist5k"): "identity"}
NORMALIZATION_KINDS = ("dataset", "identity", "center")


def _channels(dataset: str) -> int:
    return dataset_info(dataset).shape[0]


def resolve_normalization(spec, arch: str, dataset: str):
    """(kind, mean, std) for a normalisation spec; `spec` is one of

    - None or 'dataset': the reference convention for this arch and dataset (see the module docstring);
    - 'identity': no normalisation;
    - 'center': subtract the dataset mean only (DSRS's InputCenterLayer, its ImageNet models);
    - (mean, std): explicit per-channel values (a dict {'mean','std'} works too).
    """
    if spec is None or spec == "dataset":
        kind = _ARCH_NORMALIZATION.get((arch, dataset), "dataset")
        if kind != "dataset":
            return resolve_normalization(kind, arch, dataset)
        mean, std = NORMALIZATION[dataset]
        return "dataset", tuple(mean), tuple(std)
    if spec == "identity":
        c = _channels(dataset)
        return "identity", (0.0,) * c, (1.0,) * c
    if spec == "center":
        mean = NORMALIZATION[dataset][0]
        return "center", tuple(mean), (1.0,) * len(mean)
    if isinstance(spec, dict) and "mean" in spec and "std" in spec:
        spec = (spec["mean"], spec["std"])
    if isinstance(spec, str):
        raise CertifyNetError(f"unknown normalization '{spec}'; use {', '.join(NORMALIZATION_KINDS)} or mean/std")
    try:
        mean, std = (tuple(float(v) for v in part) for part in spec)
    except (TypeError, ValueError) as e:
        raise CertifyNetError(f"normalization must be {', '.join(NORMALIZATION_KINDS)} or (mean, std), "
                              f"got {spec!r}") from e
    c = _channels(dataset)
    if len(mean) not in (1, c) or len(std) not in (1, c) or any(s <= 0 for s in std):
        raise CertifyNetError(f"normalization mean/std need 1 or {c} values (std > 0) for {dataset}, "
                              f"got {list(mean)}/{list(std)}")
    return "custom", mean, std


def default_normalization(arch: str, dataset: str):
    """(mean, std) that `get_architecture(arch, dataset)` uses: the reference convention."""
    return resolve_normalization(None, arch, dataset)[1:]


def parse_normalization(text: str | None):
    """CLI value → spec: 'dataset' | 'identity' | 'center' | 'M1,M2,M3/S1,S2,S3' (mean/std); None stays None."""
    if text is None or text in NORMALIZATION_KINDS:
        return text
    mean, sep, std = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(","))
    except ValueError:
        raise CertifyNetError(f"--normalization must be one of {', '.join(NORMALIZATION_KINDS)} "
                              f"or MEAN/STD (comma-separated per channel), got '{text}'") from None


class NormalizeLayer(nn.Module):
    """(x − μ)/s per channel. Stateless in the state_dict (non-persistent buffers), like the reference layer."""

    def __init__(self, mean, std):
        super().__init__()
        self._values = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def values(self):
        """(mean, std) as the tuples of floats it was built with."""
        return self._values

    def extra_repr(self):
        return f"mean={list(self._values[0])}, std={list(self._values[1])}"


# ---------------------------------------------------------------- architectures
class LeNet(nn.Module):
    """LeNet of consistency/SmoothMix/DSRS `archs/lenet.py`: conv5 1→20, pool, conv5 20→50, pool, fc 800→500→K
    (the reference flattens with view(-1, 800); flatten(1) is the same for 28×28 inputs)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class MNIST43(nn.Sequential):
    """DSRS `mnist_43` = `Conv4FC3` (archs/mnist_conv.py): an nn.Sequential, so its parameters are indexed
    0, 2, 4, 6 (convs 32, 32 s2, 64, 64 s2) and 9, 11, 13 (fc 3136→512→512→K), exactly as in the reference."""

    def __init__(self, num_classes=10):
        super().__init__(
            nn.Conv2d(1, 32, 3, stride=1, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=1, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
            nn.Linear(512, 512), nn.ReLU(),
            nn.Linear(512, num_classes),
        )


class BasicBlock(nn.Module):
    """Post-activation residual block of the CIFAR ResNet (reference names conv1/bn1/conv2/bn2/downsample)."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 (Cohen's archs/cifar_resnet.py, from bearpaw/pytorch-classification):
    widths 16/32/64, 1×1 conv+BN projection shortcuts. The final pool is avg_pool2d over the whole map: on
    CIFAR's 8×8 map it is the reference's AvgPool2d(8), bit for bit (AdaptiveAvgPool2d rounds differently)."""

    def __init__(self, depth, num_classes=10):
        super().__init__()
        assert (depth - 2) % 6 == 0, "depth must be 6n+2"
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.avg_pool2d(x, x.shape[-2:]).flatten(1))


def _resnet50(num_classes):
    from torchvision.models import resnet50
    return resnet50(weights=None, num_classes=num_classes)


ARCHITECTURES = {
    "lenet": (LeNet, ("mnist", "mnist5k")),
    "mnist_43": (MNIST43, ("mnist", "mnist5k")),
    "cifar_resnet20": (lambda num_classes: CifarResNet(20, num_classes), ("cifar10",)),
    "cifar_resnet110": (lambda num_classes: CifarResNet(110, num_classes), ("cifar10",)),
    "resnet50": (_resnet50, ("imagenet",)),
}
DEFAULT_DATASET = {"lenet": "mnist", "mnist_43": "mnist", "cifar_resnet20": "cifar10",
                   "cifar_resnet110": "cifar10", "resnet50": "imagenet"}


def get_architecture(arch: str, dataset: str, normalization=None) -> nn.Sequential:
    """`nn.Sequential(NormalizeLayer, net)` with random weights for `arch` on `dataset`.

    `normalization`: None/'dataset' (the reference convention), 'identity', 'center' or (mean, std);
    see `resolve_normalization`.
    """
    if arch not in ARCHITECTURES:
        raise CertifyNetError(f"unknown arch '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    info = dataset_info(dataset)
    ctor, datasets = ARCHITECTURES[arch]
    if dataset not in datasets:
        raise CertifyNetError(f"arch '{arch}' is for {'/'.join(datasets)} inputs, not dataset '{dataset}'")
    _, mean, std = resolve_normalization(normalization, arch, dataset)
    return nn.Sequential(NormalizeLayer(mean, std), ctor(num_classes=info.num_classes))


@functools.lru_cache(maxsize=None)
def _arch_keys(arch: str) -> frozenset:
    """The state_dict keys of `arch`'s net (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        net = ARCHITECTURES[arch][0](num_classes=10)
    return frozenset(net.state_dict())


# ---------------------------------------------------------------- checkpoint files
def file_sha256(path: str, limit: int | None = None) -> str:
    """Hex SHA-256 of a file (of its first `limit` bytes when given)."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def atomic_torch_save(obj, path: str) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


# Classes allowed in checkpoints besides weights_only's defaults (tensors, containers, numbers, strings).
# argparse.Namespace is plain data (reference training scripts sometimes store their `args`); its unpickling
# sets attributes and runs no code. Anything else (numpy scalars, custom classes, callables) is refused.
SAFE_GLOBALS = (argparse.Namespace,)


def read_checkpoint_file(path: str):
    """`torch.load(path, weights_only=True)` (plus SAFE_GLOBALS) with one-line errors for missing, corrupt
    or pickled files."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"checkpoint '{path}' not found")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # garbage reads as odd protocols
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CertifyNetError(
                f"checkpoint '{path}' holds a pickled object ({found.group(1)}) that weights_only=True refuses "
                f"to load; only tensors, plain data and argparse.Namespace are accepted (if you trust the file, "
                f"re-save just its state_dict)") from None
        raise CertifyNetError(f"checkpoint '{path}' is corrupt or not a torch file (unreadable pickle)") from None
    except PermissionError as e:
        raise CertifyNetError(f"checkpoint '{path}' cannot be read: {e.strerror}") from None
    except Exception as e:  # garbage bytes can raise nearly anything inside the unpickler (IndexError, ...)
        why = "empty or truncated" if isinstance(e, EOFError) or os.path.getsize(path) == 0 else type(e).__name__
        raise CertifyNetError(f"checkpoint '{path}' is corrupt or not a torch file ({why})") from None


def _plain(obj):
    """Turn argparse values into types torch's weights_only loader accepts (str/int/float/bool/None/list/dict)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DataParallel/DDP (`module`) and torch.compile (`_orig_mod`) wrappers."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return unwrap_model(inner)
    return model


def _same_values(a, b) -> bool:
    a, b = [float(v) for v in a], [float(v) for v in b]
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7) for x, y in zip(a, b))


def save_checkpoint(path: str, model: nn.Module, *, arch: str, dataset: str, num_classes: int,
                    normalization=None, sigma: float | None = None, k: int = 0, epoch: int = 0,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None, args=None, extra=None) -> None:
    """Write our checkpoint dict atomically (arch, dataset, num_classes, normalisation, noise σ/k, epoch,
    weights, optimizer, scheduler, args).

    The recorded normalisation is the model's own NormalizeLayer (so it is always what the weights were
    trained with); a given `normalization` must agree with it. Models without one record `normalization`
    (or the reference default).
    """
    net = unwrap_model(model)
    layer = net[0] if isinstance(net, nn.Sequential) and len(net) and isinstance(net[0], NormalizeLayer) else None
    given = None if normalization is None else resolve_normalization(normalization, arch, dataset)[1:]
    if layer is not None:
        norm = layer.values()
        if given is not None and not (_same_values(given[0], norm[0]) and _same_values(given[1], norm[1])):
            raise CertifyNetError(f"save_checkpoint: normalization {given} differs from the model's "
                                  f"NormalizeLayer {norm}")
    else:
        norm = given or default_normalization(arch, dataset)
    write_checkpoint(path, {
        "format": CHECKPOINT_FORMAT, "arch": arch, "dataset": dataset, "num_classes": int(num_classes),
        "normalization": {"mean": list(norm[0]), "std": list(norm[1])}, "noise": {"sigma": sigma, "k": int(k)},
    }, net, epoch=epoch, optimizer=optimizer, scheduler=scheduler, args=args, extra=extra)


def write_checkpoint(path: str, header: dict, model: nn.Module, *, epoch: int = 0, optimizer=None,
                     scheduler=None, args=None, extra=None) -> None:
    """Atomically save {**header, version, epoch, state_dict, optimizer, scheduler, args, **extra}
    (the training state every checkpoint of ours carries; `args` and `extra` made weights_only-safe)."""
    ckpt = {
        **header, "version": __version__, "epoch": int(epoch),
        "state_dict": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "args": _plain(vars(args) if hasattr(args, "__dict__") else (args or {})),
    }
    if extra:
        ckpt.update(_plain(extra))
    atomic_torch_save(ckpt, path)


# ---------------------------------------------------------------- reading the reference layouts
@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, with what is known of where it came from."""
    model: nn.Module
    arch: str
    dataset: str
    num_classes: int
    sigma: float | None
    k: int
    epoch: int
    source: str          # 'certifynet' | 'cohen' | 'consistency/smoothmix' | 'dsrs' | 'state_dict' (_source)
    path: str
    sha256: str
    raw: dict = field(repr=False, default_factory=dict)
    normalization: dict = field(default_factory=dict)   # {'kind', 'mean', 'std'} applied by model[0]
    layout: str = ""     # key layout found, e.g. '1.module.<name>' (Cohen ImageNet), '1.<name>', '<name>'

    def summary(self) -> str:
        """One line: arch, dataset, parameters, normalisation, training noise, source, path."""
        n = sum(p.numel() for p in self.model.parameters())
        norm = self.normalization
        noise = f"trained σ={self.sigma:g}" if isinstance(self.sigma, (int, float)) else "training σ unknown"
        return (f"{self.arch} on {self.dataset}, {n:,} parameters, normalization {norm.get('kind')} "
                f"(mean {norm.get('mean')}, std {norm.get('std')}), {noise}" + (f" k={self.k}" if self.k else "")
                + f", {self.source} layout {self.layout}, from {self.path}")

    def metadata(self) -> dict:
        return {"model": os.path.abspath(self.path), "model_sha256": self.sha256, "arch": self.arch,
                "dataset": self.dataset, "num_classes": self.num_classes, "train_sigma": self.sigma,
                "train_k": self.k, "checkpoint_source": self.source, "checkpoint_layout": self.layout,
                "normalization": self.normalization}


_WRAPPER_SEGMENTS = ("module", "_orig_mod")   # DataParallel/DDP, torch.compile


def _strip_wrappers(key: str) -> str:
    return ".".join(p for p in key.split(".") if p not in _WRAPPER_SEGMENTS)


def _layout_sequential(keys):
    """Sequential(NormalizeLayer, net): `1.<name>`; a `0.` key (normalisation state) is dropped."""
    if not any(k.startswith("1.") for k in keys):
        return None
    out = {}
    for k in keys:
        head, _, rest = k.partition(".")
        if head not in ("0", "1"):
            return None
        out[k] = rest if head == "1" else None
    return out


def _layout_bare(keys):
    """The net's own state_dict."""
    return {k: k for k in keys}


LAYOUTS = (_layout_sequential, _layout_bare)   # tried in this order, after _strip_wrappers
# Names our own checkpoints used before an architecture adopted the reference names.
LEGACY_NAMES = {"mnist_43": {"conv1": "0", "conv2": "2", "conv3": "4", "conv4": "6", "fc1": "9", "fc2": "11",
                             "fc3": "13"}}
_SEQ_INDEXED = re.compile(r"^\d+\.(weight|bias)$")


def _optional(key: str) -> bool:
    return key.endswith("num_batches_tracked")   # absent from pre-0.4.1 files; BatchNorm fills it in


def _candidates(state: dict, arch: str):
    """Yield (layout, {file key → our key}) for each layout the file's keys fit, most specific first.

    `layout` shows the prefix found, e.g. '1.module.<name>' for Cohen's ImageNet files."""
    wrapped = {k: _strip_wrappers(k) for k in state}
    for fn in LAYOUTS:
        mapping = fn(list(dict.fromkeys(wrapped.values())))
        if mapping is None:
            continue
        found = {k: mapping[w] for k, w in wrapped.items() if mapping[w] is not None}
        if not found:
            continue
        k0 = next(iter(found))
        shown = k0[:len(k0) - len(found[k0])] + "<name>"
        yield shown, found
        legacy = LEGACY_NAMES.get(arch)
        if legacy:
            renamed = {}
            for k, v in found.items():
                head, _, rest = v.partition(".")
                renamed[k] = f"{legacy.get(head, head)}.{rest}" if rest else legacy.get(head, head)
            yield shown + " (legacy names)", renamed


def _match(state: dict, net: nn.Module, arch: str, path: str):
    """({our key → tensor}, layout) for `net`, or a one-line CertifyNetError naming the first unmatched keys."""
    expected = net.state_dict()
    required = {k for k in expected if not _optional(k)}
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    best = None
    for layout, mapping in _candidates(tensors, arch):
        names = set(mapping.values())
        if required <= names <= set(expected) and len(names) == len(mapping):
            mapped = {mapping[k]: v for k, v in tensors.items() if k in mapping}
            bad = [k for k in mapped if mapped[k].shape != expected[k].shape]
            if bad:
                raise CertifyNetError(
                    f"checkpoint '{path}' does not fit arch '{arch}': '{bad[0]}' has shape "
                    f"{tuple(mapped[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)} (wrong --dataset?)")
            return mapped, layout
        # Sequential-indexed nets whose indices differ from ours (extra Dropout/ReLU slots, ...): map the
        # tensors in index order when every shape agrees in that order.
        if all(_SEQ_INDEXED.match(n) for n in names) and len(names) == len(mapping) == len(expected):
            order = sorted(mapping, key=lambda k: int(mapping[k].split(".")[0]))   # stable: weight, bias
            ours = list(expected)
            if all(tensors[t].shape == expected[o].shape for t, o in zip(order, ours)):
                return {o: tensors[t] for t, o in zip(order, ours)}, layout + " (by position)"
        overlap = len(names & set(expected))
        if best is None or overlap > best[0]:
            best = (overlap, names)
    names = best[1] if best else set()
    unmatched = sorted(names - set(expected), key=_natural)[:3]
    missing = sorted(required - names, key=_natural)[:3]
    raise CertifyNetError(f"checkpoint '{path}' has an unknown layout for arch '{arch}': first unmatched keys "
                          f"{unmatched or '-'}, missing {missing or '-'} (expected keys like "
                          f"'1.{next(iter(expected))}')")


def check_finite_weights(state: dict, path: str) -> None:
    """Refuse NaN/Inf in any floating tensor of a state dict (such a model certifies one class everywhere)."""
    for key, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
            raise CertifyNetError(f"checkpoint '{path}' has non-finite weights (NaN or Inf) in '{key}'")


# DSRS's own ImageNet files (trained behind InputCenterLayer) carry its k = 75260 in their names.
_DSRS_IMAGENET_NAME = re.compile(r"imagenet-75260", re.IGNORECASE)


def _warn_dsrs_imagenet(path: str, arch: str, kind: str) -> None:
    if arch == "resnet50" and kind != "center" and _DSRS_IMAGENET_NAME.search(os.path.basename(path)):
        print(f"warning: '{path}' looks like a DSRS ImageNet model (its name has imagenet-75260): those were "
              f"trained behind mean-centring; pass --normalization center (now: {kind})", file=sys.stderr)


def _natural(key: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def remap_state_dict(state: dict, net: nn.Module, arch: str, path: str) -> dict:
    """Map a reference, ours or bare state_dict onto `net` (the model without its normalisation layer).

    DataParallel/DDP `module.` and torch.compile `_orig_mod.` segments are dropped, then the keys must fit one
    of LAYOUTS exactly (`1.<name>` of Sequential(norm, net), or the bare `<name>`); Sequential-indexed nets
    may also map by index order. Otherwise a one-line error names the first unmatched keys.
    """
    return _match(state, net, arch, path)[0]


def _infer_arch(state: dict) -> str | None:
    """The registered arch whose key set the file's keys fit under some layout (None if none or several)."""
    tensors = [k for k, v in state.items() if torch.is_tensor(v)]
    fits = []
    for arch in ARCHITECTURES:
        expected = _arch_keys(arch)
        required = {k for k in expected if not _optional(k)}
        for _, mapping in _candidates(dict.fromkeys(tensors), arch):
            if required <= set(mapping.values()) <= expected:
                fits.append(arch)
                break
    return fits[0] if len(fits) == 1 else None


def _source(ours: bool, bare: bool, arch: str, kind: str) -> str:
    """Where a checkpoint comes from, as far as its layout tells."""
    if ours:
        return "certifynet"
    if bare:
        return "state_dict"
    if arch == "lenet":
        return "consistency/smoothmix"   # Cohen's repo has no MNIST; DSRS published mnist_43 models only
    if arch == "mnist_43" or kind == "center":
        return "dsrs"
    return "cohen"                       # Cohen layout; consistency/SmoothMix/DSRS CIFAR-10/ImageNet files share it


def load_checkpoint(path: str, arch: str | None = None, dataset: str | None = None,
                    normalization=None, device="cpu") -> LoadedCheckpoint:
    """Load our checkpoint, a reference one ({'epoch','arch','state_dict',...}) or a bare state_dict.

    Read with weights_only=True (argparse.Namespace allowed, nothing else pickled). The arch comes from the
    file's `arch` field where present (else `arch`, else the one registered arch whose keys fit); a given
    `arch`/`dataset` that disagrees with the file is an error. The dataset of a reference file is `dataset`
    or the arch's default. `normalization`: None = the one stored in our files, else the reference
    convention ('dataset'); 'identity', 'center' (DSRS ImageNet models) or (mean, std) override it.
    The result records `source`, the key `layout` and the `normalization` applied.
    """
    raw = read_checkpoint_file(path)
    if not isinstance(raw, dict):
        raise CertifyNetError(f"checkpoint '{path}' holds a {type(raw).__name__}, not a dict of tensors")
    ours = raw.get("format") == CHECKPOINT_FORMAT
    inner = next((raw[k] for k in ("state_dict", "model") if isinstance(raw.get(k), dict)), None)
    if inner is not None:
        state, bare = inner, False
    elif raw and all(torch.is_tensor(v) for v in raw.values()):
        state, bare = raw, True
    else:
        raise CertifyNetError(f"checkpoint '{path}' has no 'state_dict' and is not a state_dict "
                              f"(top-level keys: {sorted(map(str, raw))[:6]})")
    if not any(torch.is_tensor(v) for v in state.values()):
        raise CertifyNetError(f"checkpoint '{path}' has an empty state_dict")
    file_arch = raw.get("arch") if isinstance(raw.get("arch"), str) else None
    if file_arch and arch and file_arch != arch:
        raise CertifyNetError(f"checkpoint '{path}' holds arch '{file_arch}', but --arch '{arch}' was given")
    arch = file_arch or arch or _infer_arch(state)
    if arch is None:
        raise CertifyNetError(f"checkpoint '{path}': cannot tell its architecture from its keys; pass --arch "
                              f"({', '.join(ARCHITECTURES)})")
    if arch not in ARCHITECTURES:
        raise CertifyNetError(f"checkpoint '{path}' holds arch '{arch}', which certifynet does not provide "
                              f"({', '.join(ARCHITECTURES)})")
    file_ds = raw.get("dataset") if ours else None
    if file_ds and dataset and file_ds != dataset and {file_ds, dataset} != {"mnist", "mnist5k"}:
        raise CertifyNetError(f"checkpoint '{path}' was trained on '{file_ds}', but dataset '{dataset}' was given")
    dataset = dataset or file_ds or DEFAULT_DATASET[arch]
    stored = raw.get("normalization") if ours else None
    if normalization is None and isinstance(stored, dict) and "mean" in stored and "std" in stored:
        _, mean, std = resolve_normalization(stored, arch, dataset)
        kind = "checkpoint"
    else:
        kind, mean, std = resolve_normalization(normalization, arch, dataset)
    model = get_architecture(arch, dataset, (mean, std))
    mapped, layout = _match(state, model[1], arch, path)
    check_finite_weights(mapped, path)
    _warn_dsrs_imagenet(path, arch, kind)
    try:
        model[1].load_state_dict(mapped)
    except RuntimeError as e:  # not expected after _match; keep the one-line promise anyway
        raise CertifyNetError(f"checkpoint '{path}' does not load into arch '{arch}': "
                              f"{str(e).strip().splitlines()[0][:200]}") from None
    noise = raw.get("noise") if isinstance(raw.get("noise"), dict) else {}
    epoch = raw.get("epoch")
    return LoadedCheckpoint(model=model.to(device).eval(), arch=arch, dataset=dataset,
                            num_classes=dataset_info(dataset).num_classes, sigma=noise.get("sigma"),
                            k=int(noise.get("k") or 0), epoch=int(epoch) if isinstance(epoch, (int, float)) else 0,
                            source=_source(ours, bare, arch, kind), path=path, sha256=file_sha256(path), raw=raw,
                            normalization={"kind": kind, "mean": list(mean), "std": list(std)}, layout=layout)

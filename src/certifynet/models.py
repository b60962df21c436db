"""Model registry, normalisation layer and checkpoints.

Every model is `nn.Sequential(NormalizeLayer, net)`, so noise is added in [0,1] pixel space and the
state_dict keys are `1.<name>` exactly as in the reference repos (Cohen et al., consistency, SmoothMix,
DSRS); the normalisation layer holds no state. Architectures use the reference parameter names, so a
published checkpoint loads by a key remap (see `load_checkpoint`).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from certifynet._version import __version__
from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError

CHECKPOINT_FORMAT = "certifynet-checkpoint"

# Per-dataset normalisation (mean, sd). MNIST: 0.5/0.5 as in the DSRS code; the consistency and SmoothMix
# MNIST models use identity, which `load_checkpoint(..., normalization=IDENTITY)` selects.
IDENTITY = ((0.0,), (1.0,))
NORMALIZATION = {
    "mnist": ((0.5,), (0.5,)),
    "mnist5k": ((0.5,), (0.5,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class NormalizeLayer(nn.Module):
    """(x − μ)/s per channel. Stateless in the state_dict (non-persistent buffers), like the reference layer."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


# ---------------------------------------------------------------- architectures
class LeNet(nn.Module):
    """LeNet of the consistency/SmoothMix/DSRS code: conv5 1→20, pool, conv5 20→50, pool, fc 800→500, fc 500→K."""

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


class MNIST43(nn.Module):
    """The DSRS 4-conv + 3-fc MNIST net (`mnist_43`): 32,32(s2),64,64(s2) convs, fc 3136→512→512→K."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1, 1)
        self.conv2 = nn.Conv2d(32, 32, 4, 2, 1)
        self.conv3 = nn.Conv2d(32, 64, 3, 1, 1)
        self.conv4 = nn.Conv2d(64, 64, 4, 2, 1)
        self.fc1 = nn.Linear(64 * 7 * 7, 512)
        self.fc2 = nn.Linear(512, 512)
        self.fc3 = nn.Linear(512, num_classes)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


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
    """CIFAR ResNet of depth 6n+2 (He et al.), widths 16/32/64, 1×1 conv+BN projection shortcuts."""

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
        self.avgpool = nn.AdaptiveAvgPool2d(1)
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
        return self.fc(self.avgpool(x).flatten(1))


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
    """`nn.Sequential(NormalizeLayer, net)` with random weights for `arch` on `dataset`."""
    if arch not in ARCHITECTURES:
        raise CertifyNetError(f"unknown arch '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    info = dataset_info(dataset)
    ctor, datasets = ARCHITECTURES[arch]
    if dataset not in datasets:
        raise CertifyNetError(f"arch '{arch}' is for {'/'.join(datasets)} inputs, not dataset '{dataset}'")
    mean, std = normalization or NORMALIZATION[dataset]
    return nn.Sequential(NormalizeLayer(mean, std), ctor(num_classes=info.num_classes))


# ---------------------------------------------------------------- checkpoint files
def file_sha256(path: str, limit: int | None = None) -> str:
    """Hex SHA-256 of a file (of its first `limit` bytes when given)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read() if limit is None else f.read(limit))
    return h.hexdigest()


def atomic_torch_save(obj, path: str) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint_file(path: str):
    """`torch.load(path, weights_only=True)` with one-line errors for missing, corrupt or pickled files."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"checkpoint '{path}' not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        why = next((ln for ln in first if "Unsupported" in ln or "global" in ln.lower()), first[0] if first else "")
        raise CertifyNetError(f"checkpoint '{path}' holds objects that weights_only=True refuses to unpickle "
                              f"(only load files you trust; re-save its state_dict): {why.strip()[:160]}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, io.UnsupportedOperation) as e:
        raise CertifyNetError(f"checkpoint '{path}' is corrupt or not a torch file ({type(e).__name__})") from e


def _plain(obj):
    """Turn argparse values into types torch's weights_only loader accepts (str/int/float/bool/None/list/dict)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def save_checkpoint(path: str, model: nn.Module, *, arch: str, dataset: str, num_classes: int,
                    normalization=None, sigma: float | None = None, k: int = 0, epoch: int = 0,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None, args=None, extra=None) -> None:
    """Write our checkpoint dict atomically (arch, dataset, num_classes, noise σ/k, epoch, weights, optimizer, args)."""
    net = model.module if hasattr(model, "module") else model
    norm = normalization or NORMALIZATION.get(dataset, IDENTITY)
    ckpt = {
        "format": CHECKPOINT_FORMAT, "version": __version__,
        "arch": arch, "dataset": dataset, "num_classes": int(num_classes),
        "normalization": {"mean": list(norm[0]), "std": list(norm[1])},
        "noise": {"sigma": sigma, "k": int(k)}, "epoch": int(epoch),
        "state_dict": net.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "args": _plain(vars(args) if hasattr(args, "__dict__") else (args or {})),
    }
    if extra:
        ckpt.update(_plain(extra))
    atomic_torch_save(ckpt, path)


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
    source: str                      # 'certifynet' | 'reference' | 'state_dict'
    path: str
    sha256: str
    raw: dict = field(repr=False, default_factory=dict)

    def metadata(self) -> dict:
        return {"model": os.path.abspath(self.path), "model_sha256": self.sha256, "arch": self.arch,
                "dataset": self.dataset, "num_classes": self.num_classes, "train_sigma": self.sigma,
                "train_k": self.k, "checkpoint_source": self.source}


def _strip_prefixes(key: str) -> str:
    """Map reference keys to our `1.<name>`: drop DataParallel/DDP `module.` and an outer Sequential index."""
    parts = [p for p in key.split(".") if p != "module"]
    if parts and parts[0] == "1":
        parts = parts[1:]
    return ".".join(parts)


def remap_state_dict(state: dict, net: nn.Module, arch: str, path: str) -> dict:
    """Map a reference or raw state_dict onto `net` (the model without its normalisation layer).

    Order of attempts: (1) strip `module.` and the Sequential `1.` prefix and drop stateless `0.` keys;
    (2) if names still differ but the tensors agree in order and shape (e.g. a Sequential-indexed
    mnist_43), map by position. Otherwise raise a one-line error naming the first unmatched keys.
    """
    expected = net.state_dict()
    cleaned = {}
    for k, v in state.items():
        if not torch.is_tensor(v):
            continue
        parts = [p for p in k.split(".") if p != "module"]
        if parts and parts[0] == "0" and len(state) > 1 and any(s.split(".")[0] == "1" for s in state):
            continue  # normalisation-layer buffers of a Sequential(norm, model)
        cleaned[_strip_prefixes(k)] = v
    if set(cleaned) == set(expected):
        bad = [k for k in expected if cleaned[k].shape != expected[k].shape]
        if bad:
            raise CertifyNetError(f"checkpoint '{path}' does not match arch '{arch}': shape of '{bad[0]}' is "
                                  f"{tuple(cleaned[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}")
        return cleaned
    ours, theirs = list(expected.items()), list(cleaned.items())
    if len(ours) == len(theirs) and all(a.shape == b.shape for (_, a), (_, b) in zip(ours, theirs)):
        return {k: v for (k, _), (_, v) in zip(ours, theirs)}
    missing = [k for k in expected if k not in cleaned][:3]
    unexpected = [k for k in cleaned if k not in expected][:3]
    raise CertifyNetError(f"checkpoint '{path}' has an unknown layout for arch '{arch}': "
                          f"unmatched keys {unexpected or '-'}, missing {missing or '-'}")


def _infer_arch(state: dict) -> str | None:
    keys = {_strip_prefixes(k) for k in state}
    for arch, probe in (("lenet", "conv1.weight"), ("mnist_43", "conv4.weight"), ("resnet50", "layer4.0.conv3.weight")):
        if probe in keys and (arch != "lenet" or "conv3.weight" not in keys):
            if arch == "lenet" and state.get(next(k for k in state if k.endswith("conv1.weight"))).shape[0] != 20:
                continue
            return arch
    n_blocks = len({k.split(".")[1] for k in keys if k.startswith("layer1.")})
    return {3: "cifar_resnet20", 18: "cifar_resnet110"}.get(n_blocks)


def load_checkpoint(path: str, arch: str | None = None, dataset: str | None = None,
                    normalization=None, device="cpu") -> LoadedCheckpoint:
    """Load our checkpoint, a reference one ({'epoch','arch','state_dict',...}) or a bare state_dict.

    The arch comes from the file's `arch` field where present (else `arch`, else inferred from the keys);
    a given `arch`/`dataset` that disagrees with the file is an error. Read with weights_only=True.
    """
    raw = read_checkpoint_file(path)
    if not isinstance(raw, dict):
        raise CertifyNetError(f"checkpoint '{path}' is not a dict of tensors")
    ours = raw.get("format") == CHECKPOINT_FORMAT
    if "state_dict" in raw and isinstance(raw["state_dict"], dict):
        state, source = raw["state_dict"], "certifynet" if ours else "reference"
    elif raw and all(torch.is_tensor(v) for v in raw.values()):
        state, source = raw, "state_dict"
    else:
        raise CertifyNetError(f"checkpoint '{path}' has no 'state_dict' and is not a state_dict")
    file_arch = raw.get("arch") if isinstance(raw.get("arch"), str) else None
    if file_arch and arch and file_arch != arch:
        raise CertifyNetError(f"checkpoint '{path}' holds arch '{file_arch}', but --arch '{arch}' was given")
    arch = file_arch or arch or _infer_arch(state)
    if arch not in ARCHITECTURES:
        raise CertifyNetError(f"checkpoint '{path}': cannot tell its architecture (found '{arch}'); pass --arch")
    file_ds = raw.get("dataset") if ours else None
    if file_ds and dataset and file_ds != dataset and {file_ds, dataset} != {"mnist", "mnist5k"}:
        raise CertifyNetError(f"checkpoint '{path}' was trained on '{file_ds}', but dataset '{dataset}' was given")
    dataset = dataset or file_ds or DEFAULT_DATASET[arch]
    if normalization is None and ours and "normalization" in raw:
        normalization = (tuple(raw["normalization"]["mean"]), tuple(raw["normalization"]["std"]))
    model = get_architecture(arch, dataset, normalization)
    model[1].load_state_dict(remap_state_dict(state, model[1], arch, path))
    noise = raw.get("noise") or {}
    return LoadedCheckpoint(model=model.to(device).eval(), arch=arch, dataset=dataset,
                            num_classes=dataset_info(dataset).num_classes, sigma=noise.get("sigma"),
                            k=int(noise.get("k") or 0), epoch=int(raw.get("epoch") or 0), source=source,
                            path=path, sha256=file_sha256(path), raw=raw)

"""Checkpoint files: reading them safely, writing ours, and rebuilding a model from any supported layout.

Our file (written atomically by `save_checkpoint`)::

    {"format": "certifynet-checkpoint", "arch", "dataset", "num_classes", "normalization": {"mean", "std"},
     "noise": {"sigma", "k"}, "version", "epoch", "state_dict", "optimizer", "scheduler", "args"}

Every file is read with `torch.load(weights_only=True)` (`read_checkpoint_file`): pickled objects other than
argparse.Namespace are refused, and a zip file that would inflate beyond a bound of its size is refused before
it is read (`models.header.check_archive`). Its header is validated like user input (`models.header`).
`load_checkpoint` also reads the reference layouts (`models.layouts`) and bare state dicts, and records where
the model came from (`LoadedCheckpoint`).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from certifynet._version import __version__
from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.models.architectures import ARCHITECTURES, DEFAULT_DATASET, get_architecture, unwrap_model
from certifynet.models.header import check_archive, validate_header
from certifynet.models.layouts import checkpoint_source, infer_arch, match_state_dict, warn_dsrs_imagenet
from certifynet.models.normalization import NormalizeLayer, default_normalization, resolve_normalization
from certifynet.records.files import atomic_write

CHECKPOINT_FORMAT = "certifynet-checkpoint"

# Classes allowed in checkpoints besides weights_only's defaults (tensors, containers, numbers, strings).
# argparse.Namespace is plain data (reference training scripts sometimes store their `args`); its unpickling
# sets attributes and runs no code. Anything else (numpy scalars, custom classes, callables) is refused.
SAFE_GLOBALS = (argparse.Namespace,)


# ---------------------------------------------------------------- files
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


def read_checkpoint_file(path: str):
    """`torch.load(path, weights_only=True)` (plus SAFE_GLOBALS) with one-line errors for missing, corrupt
    or pickled files, and for zip files that would inflate too far (`check_archive`)."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"checkpoint '{path}' not found")
    try:
        check_archive(path)  # its inflated size, before torch reads it
    except PermissionError as e:
        raise CertifyNetError(f"checkpoint '{path}' cannot be read: {e.strerror}") from None
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


def check_finite_weights(state: dict, path: str) -> None:
    """Refuse NaN/Inf in any floating tensor of a state dict (such a model certifies one class everywhere)."""
    for key, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
            raise CertifyNetError(f"checkpoint '{path}' has non-finite weights (NaN or Inf) in '{key}'")


# ---------------------------------------------------------------- writing ours
def plain(obj):
    """Turn argparse values into types torch's weights_only loader accepts (str/int/float/bool/None/list/dict)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


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
        "args": plain(vars(args) if hasattr(args, "__dict__") else (args or {})),
    }
    if extra:
        ckpt.update(plain(extra))
    atomic_torch_save(ckpt, path)


# ---------------------------------------------------------------- loading any layout
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
    source: str          # 'certifynet' | 'cohen' | 'consistency/smoothmix' | 'dsrs' | 'state_dict'
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


def _state_dict_of(raw, path: str) -> tuple[dict, bool, bool]:
    """(state dict, ours, bare): the weights of our file or a reference one ({'state_dict' | 'model': ...}),
    or the file itself when it is a bare state dict."""
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
    return state, ours, bare


def _resolve_arch(raw: dict, state: dict, arch: str | None, path: str) -> str:
    """The file's `arch` field, else `arch`, else the one registered arch whose keys fit; they must agree."""
    file_arch = raw.get("arch") if isinstance(raw.get("arch"), str) else None
    if file_arch and arch and file_arch != arch:
        raise CertifyNetError(f"checkpoint '{path}' holds arch '{file_arch}', but {{arch}} '{arch}' was given", "arch")
    arch = file_arch or arch or infer_arch(state)
    if arch is None:
        raise CertifyNetError(f"checkpoint '{path}': cannot tell its architecture from its keys; pass {{arch}} "
                              f"({', '.join(ARCHITECTURES)})", "arch")
    if arch not in ARCHITECTURES:
        raise CertifyNetError(f"checkpoint '{path}' holds arch '{arch}', which certifynet does not provide "
                              f"({', '.join(ARCHITECTURES)})")
    return arch


def _resolve_dataset(raw: dict, ours: bool, dataset: str | None, arch: str, path: str) -> str:
    """`dataset`, else the one our file records, else the arch's default; mnist and mnist5k are one domain."""
    file_ds = raw.get("dataset") if ours else None
    if file_ds and dataset and file_ds != dataset and {file_ds, dataset} != {"mnist", "mnist5k"}:
        raise CertifyNetError(f"checkpoint '{path}' was trained on '{file_ds}', but dataset '{dataset}' was given")
    return dataset or file_ds or DEFAULT_DATASET[arch]


def _resolve_input_normalization(raw: dict, ours: bool, normalization, arch: str, dataset: str):
    """(kind, mean, std): the one our file stores unless `normalization` overrides it, else the convention."""
    stored = raw.get("normalization") if ours else None
    if normalization is None and isinstance(stored, dict) and "mean" in stored and "std" in stored:
        _, mean, std = resolve_normalization(stored, arch, dataset)
        return "checkpoint", mean, std
    return resolve_normalization(normalization, arch, dataset)


def _load_weights(model: nn.Sequential, state: dict, arch: str, path: str, kind: str) -> str:
    """Load the mapped, finite weights into model[1]; returns the key layout found."""
    mapped, layout = match_state_dict(state, model[1], arch, path)
    check_finite_weights(mapped, path)
    warn_dsrs_imagenet(path, arch, kind)
    try:
        model[1].load_state_dict(mapped)
    except RuntimeError as e:  # not expected after match_state_dict; keep the one-line promise anyway
        raise CertifyNetError(f"checkpoint '{path}' does not load into arch '{arch}': "
                              f"{str(e).strip().splitlines()[0][:200]}") from None
    return layout


def _noise_k(noise: dict, path: str) -> int:
    """The file's `noise.k` (0 when absent): an integer >= 0, refused otherwise (never truncated: 1.5 is not 1)."""
    k = noise.get("k") or 0
    integral = isinstance(k, int) or (isinstance(k, float) and k.is_integer())
    if isinstance(k, bool) or not integral or k < 0:
        raise CertifyNetError(f"checkpoint '{path}': its noise.k must be an integer >= 0, got {k!r}")
    return int(k)


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
    state, ours, bare = _state_dict_of(raw, path)
    validate_header(raw, path, ours)
    arch = _resolve_arch(raw, state, arch, path)
    dataset = _resolve_dataset(raw, ours, dataset, arch, path)
    kind, mean, std = _resolve_input_normalization(raw, ours, normalization, arch, dataset)
    model = get_architecture(arch, dataset, (mean, std))
    layout = _load_weights(model, state, arch, path, kind)
    noise = raw.get("noise") if isinstance(raw.get("noise"), dict) else {}
    epoch = raw.get("epoch")
    return LoadedCheckpoint(model=model.to(device).eval(), arch=arch, dataset=dataset,
                            num_classes=dataset_info(dataset).num_classes, sigma=noise.get("sigma"),
                            k=_noise_k(noise, path), epoch=int(epoch) if isinstance(epoch, (int, float)) else 0,
                            source=checkpoint_source(ours, bare, arch, kind), path=path, sha256=file_sha256(path),
                            raw=raw, normalization={"kind": kind, "mean": list(mean), "std": list(std)},
                            layout=layout)

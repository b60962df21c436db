"""Reading the reference checkpoint layouts: which file key is which parameter of our nets.

Reference files are all `torch.save({'epoch', 'arch', 'state_dict', 'optimizer'}, ...)`, the state_dict of
`Sequential(normalize_layer, net)`; the reference NormalizeLayer keeps its mean/std as plain attributes,
so there are no `0.` keys:

- CIFAR-10 `cifar_resnet20/110`, MNIST `lenet` / `mnist_43`: `1.<name>`.
- ImageNet `resnet50`: the net is `DataParallel(torchvision resnet50)`, so `1.module.<name>`.
- `mnist_43` (DSRS `Conv4FC3`) is itself an `nn.Sequential`: `1.0.weight`, `1.2.weight`, ... `1.13.bias`.

`match_state_dict` drops wrapper segments (DataParallel/DDP `module.`, torch.compile `_orig_mod.`), then the
keys must fit one of LAYOUTS exactly; Sequential-indexed nets may also map by index order. `infer_arch`
finds the one registered arch whose keys fit; `checkpoint_source` names where a file comes from.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator

import torch
import torch.nn as nn

from certifynet.errors import CertifyNetError, warn
from certifynet.models.architectures import ARCHITECTURES, arch_keys

_WRAPPER_SEGMENTS = ("module", "_orig_mod")   # DataParallel/DDP, torch.compile


def _strip_wrappers(key: str) -> str:
    return ".".join(p for p in key.split(".") if p not in _WRAPPER_SEGMENTS)


def _layout_sequential(keys: list[str]) -> dict[str, str | None] | None:
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


def _layout_bare(keys: list[str]) -> dict[str, str | None]:
    """The net's own state_dict."""
    return {k: k for k in keys}


LAYOUTS = (_layout_sequential, _layout_bare)   # tried in this order, after _strip_wrappers
# Names our own checkpoints used before an architecture adopted the reference names.
LEGACY_NAMES = {"mnist_43": {"conv1": "0", "conv2": "2", "conv3": "4", "conv4": "6", "fc1": "9", "fc2": "11",
                             "fc3": "13"}}
_SEQ_INDEXED = re.compile(r"^\d+\.(weight|bias)$")


def optional_key(key: str) -> bool:
    """Keys a file may lack: BatchNorm's `num_batches_tracked` (absent from pre-0.4.1 files; filled in)."""
    return key.endswith("num_batches_tracked")


def _legacy(found: dict[str, str], legacy: dict[str, str]) -> dict[str, str]:
    """The same mapping with the net's legacy top-level names put back to the reference ones."""
    renamed = {}
    for k, v in found.items():
        head, _, rest = v.partition(".")
        renamed[k] = f"{legacy.get(head, head)}.{rest}" if rest else legacy.get(head, head)
    return renamed


def _candidates(state: dict, arch: str) -> Iterator[tuple[str, dict[str, str]]]:
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
        if arch in LEGACY_NAMES:
            yield shown + " (legacy names)", _legacy(found, LEGACY_NAMES[arch])


def _by_name(tensors: dict, mapping: dict[str, str], expected: dict, required: set[str], arch: str,
             path: str) -> dict | None:
    """{our key → tensor} when the mapped names are exactly our keys (a wrong shape is an error), else None."""
    names = set(mapping.values())
    if not (required <= names <= set(expected) and len(names) == len(mapping)):
        return None
    mapped = {mapping[k]: v for k, v in tensors.items() if k in mapping}
    bad = [k for k in mapped if mapped[k].shape != expected[k].shape]
    if bad:
        raise CertifyNetError(
            f"checkpoint '{path}' does not fit arch '{arch}': '{bad[0]}' has shape "
            f"{tuple(mapped[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)} (wrong {{dataset}}?)",
            "dataset")
    return mapped


def _by_position(tensors: dict, mapping: dict[str, str], expected: dict) -> dict | None:
    """Sequential-indexed nets whose indices differ from ours (extra Dropout/ReLU slots, ...): the tensors in
    index order when every shape agrees in that order, else None."""
    names = set(mapping.values())
    if not (all(_SEQ_INDEXED.match(n) for n in names) and len(names) == len(mapping) == len(expected)):
        return None
    order = sorted(mapping, key=lambda k: int(mapping[k].split(".")[0]))   # stable: weight, bias
    ours = list(expected)
    if all(tensors[t].shape == expected[o].shape for t, o in zip(order, ours)):
        return {o: tensors[t] for t, o in zip(order, ours)}
    return None


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def match_state_dict(state: dict, net: nn.Module, arch: str, path: str) -> tuple[dict, str]:
    """({our key → tensor}, layout) for `net` (the model without its normalisation layer), or a one-line
    CertifyNetError naming the first unmatched keys."""
    expected = net.state_dict()
    required = {k for k in expected if not optional_key(k)}
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    best = None
    for layout, mapping in _candidates(tensors, arch):
        mapped = _by_name(tensors, mapping, expected, required, arch, path)
        if mapped is not None:
            return mapped, layout
        mapped = _by_position(tensors, mapping, expected)
        if mapped is not None:
            return mapped, layout + " (by position)"
        names = set(mapping.values())
        overlap = len(names & set(expected))
        if best is None or overlap > best[0]:
            best = (overlap, names)
    names = best[1] if best else set()
    unmatched = sorted(names - set(expected), key=_natural)[:3]
    missing = sorted(required - names, key=_natural)[:3]
    raise CertifyNetError(f"checkpoint '{path}' has an unknown layout for arch '{arch}': first unmatched keys "
                          f"{unmatched or '-'}, missing {missing or '-'} (expected keys like "
                          f"'1.{next(iter(expected))}')")


def infer_arch(state: dict) -> str | None:
    """The registered arch whose key set the file's keys fit under some layout (None if none or several)."""
    tensors = [k for k, v in state.items() if torch.is_tensor(v)]
    fits = []
    for arch in ARCHITECTURES:
        expected = arch_keys(arch)
        required = {k for k in expected if not optional_key(k)}
        for _, mapping in _candidates(dict.fromkeys(tensors), arch):
            if required <= set(mapping.values()) <= expected:
                fits.append(arch)
                break
    return fits[0] if len(fits) == 1 else None


def checkpoint_source(ours: bool, bare: bool, arch: str, kind: str) -> str:
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


# DSRS's own ImageNet files (trained behind InputCenterLayer) carry its k = 75260 in their names.
_DSRS_IMAGENET_NAME = re.compile(r"imagenet-75260", re.IGNORECASE)


def warn_dsrs_imagenet(path: str, arch: str, kind: str) -> None:
    """Warn when a file named like DSRS's ImageNet models is loaded without mean-centring."""
    if arch == "resnet50" and kind != "center" and _DSRS_IMAGENET_NAME.search(os.path.basename(path)):
        warn(CertifyNetError(f"'{path}' looks like a DSRS ImageNet model (its name has imagenet-75260): those were "
                             f"trained behind mean-centring; pass {{normalization}} center (now: {kind})",
                             "normalization"))

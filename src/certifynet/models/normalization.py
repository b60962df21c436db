"""Input normalisation: the first layer of every model (`NormalizeLayer`), and which mean/std each reference
used (`resolve_normalization`).

Noise is added in [0,1] pixel space and the normalisation is the first layer, as in Cohen et al.'s code.
Input normalisation differs between the references, and nothing in a reference file records it:

- CIFAR-10 / ImageNet: Cohen's per-channel mean/std (also consistency, SmoothMix, DSRS CIFAR-10).
- MNIST `lenet` (consistency, SmoothMix): none (`get_normalize_layer('mnist')` is `nn.Identity`).
- MNIST `mnist_43` (DSRS): mean 0.5, std 0.5.
- ImageNet models *trained or fine-tuned by DSRS*: mean subtraction only (`InputCenterLayer`; DSRS uses
  Cohen's full normalisation only for the original Cohen models, its `--comment orig-cohen`). The keys are
  identical to Cohen's, so these need `normalization='center'` (`--normalization center`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError

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

Values = tuple[float, ...]


def _channels(dataset: str) -> int:
    return dataset_info(dataset).shape[0]


def _explicit(spec, dataset: str) -> tuple[Values, Values]:
    """(mean, std) given as values: 1 or C of each, std > 0."""
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
    if (len(mean) not in (1, c) or len(std) not in (1, c) or not all(0 < s < math.inf for s in std)
            or not all(math.isfinite(m) for m in mean)):  # NaN/inf would reach the model as its first layer
        counts = "1 finite value" if c == 1 else f"1 or {c} finite values"
        raise CertifyNetError(f"normalization mean/std need {counts} each (std > 0) for {dataset}, "
                              f"got {list(mean)}/{list(std)}")
    return mean, std


def resolve_normalization(spec, arch: str, dataset: str) -> tuple[str, Values, Values]:
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
    return ("custom", *_explicit(spec, dataset))


def default_normalization(arch: str, dataset: str) -> tuple[Values, Values]:
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
        raise CertifyNetError(f"{{normalization}} must be one of {', '.join(NORMALIZATION_KINDS)} "
                              f"or MEAN/STD (comma-separated per channel), got '{text}'", "normalization") from None


class NormalizeLayer(nn.Module):
    """(x − μ)/s per channel. Stateless in the state_dict (non-persistent buffers), like the reference layer."""

    def __init__(self, mean, std):
        super().__init__()
        self._values = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def values(self) -> tuple[Values, Values]:
        """(mean, std) as the tuples of floats it was built with."""
        return self._values

    def extra_repr(self) -> str:
        return f"mean={list(self._values[0])}, std={list(self._values[1])}"

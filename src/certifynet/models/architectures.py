"""The registered architectures, with the reference repositories' parameter names.

Every model is `nn.Sequential(NormalizeLayer, net)` (`get_architecture`). The nets carry the reference
parameter names, so `model.state_dict()` keys are `1.<name>` exactly as in the published checkpoints
(Cohen et al. `locuslab/smoothing`, consistency `jh-jeong/smoothing-consistency`, SmoothMix
`jh-jeong/smoothmix`, DSRS `llylly/DSRS`): loading one of them is a key remap (`models.layouts`).
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.models.normalization import NormalizeLayer, resolve_normalization


class LeNet(nn.Module):
    """LeNet of consistency/SmoothMix/DSRS `archs/lenet.py`: conv5 1→20, pool, conv5 20→50, pool, fc 800→500→K
    (the reference flattens with view(-1, 800); flatten(1) is the same for 28×28 inputs)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class MNIST43(nn.Sequential):
    """DSRS `mnist_43` = `Conv4FC3` (archs/mnist_conv.py): an nn.Sequential, so its parameters are indexed
    0, 2, 4, 6 (convs 32, 32 s2, 64, 64 s2) and 9, 11, 13 (fc 3136→512→512→K), exactly as in the reference."""

    def __init__(self, num_classes: int = 10):
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

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 (Cohen's archs/cifar_resnet.py, from bearpaw/pytorch-classification):
    widths 16/32/64, 1×1 conv+BN projection shortcuts. The final pool is avg_pool2d over the whole map: on
    CIFAR's 8×8 map it is the reference's AvgPool2d(8), bit for bit (AdaptiveAvgPool2d rounds differently)."""

    def __init__(self, depth: int, num_classes: int = 10):
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

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.avg_pool2d(x, x.shape[-2:]).flatten(1))


def _resnet50(num_classes: int) -> nn.Module:
    from torchvision.models import resnet50
    return resnet50(weights=None, num_classes=num_classes)


# arch -> (constructor taking num_classes, the datasets it is for)
ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
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


@functools.cache
def arch_keys(arch: str) -> frozenset[str]:
    """The state_dict keys of `arch`'s net (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        net = ARCHITECTURES[arch][0](num_classes=10)
    return frozenset(net.state_dict())


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DataParallel/DDP (`module`) and torch.compile (`_orig_mod`) wrappers."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return unwrap_model(inner)
    return model

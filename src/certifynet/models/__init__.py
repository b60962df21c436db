"""Model registry, normalisation layer and checkpoints (ours and the reference repos').

Every model is `nn.Sequential(NormalizeLayer, net)`: noise is added in [0,1] pixel space and the
normalisation is the first layer, as in Cohen et al.'s code. The architectures carry the reference
parameter names, so loading a published checkpoint (Cohen et al. `locuslab/smoothing`, consistency
`jh-jeong/smoothing-consistency`, SmoothMix `jh-jeong/smoothmix`, DSRS `llylly/DSRS`) is a key remap.

- `normalization`: `NormalizeLayer` and which mean/std each reference used (`resolve_normalization`).
- `architectures`: LeNet, MNIST43, the CIFAR ResNets, ResNet-50 and their registry (`get_architecture`).
- `checkpoint`: safe reading (`read_checkpoint_file`), writing ours (`save_checkpoint`), and rebuilding a
  model from any supported file (`load_checkpoint` → `LoadedCheckpoint`).
- `layouts`: the reference checkpoint layouts, i.e. which file key is which parameter (`match_state_dict`).
"""
from __future__ import annotations

from certifynet.models.architectures import (
    ARCHITECTURES,
    DEFAULT_DATASET,
    MNIST43,
    BasicBlock,
    CifarResNet,
    LeNet,
    get_architecture,
    unwrap_model,
)
from certifynet.models.checkpoint import (
    CHECKPOINT_FORMAT,
    SAFE_GLOBALS,
    LoadedCheckpoint,
    atomic_torch_save,
    check_finite_weights,
    file_sha256,
    load_checkpoint,
    plain,
    read_checkpoint_file,
    save_checkpoint,
    write_checkpoint,
)
from certifynet.models.layouts import LAYOUTS, LEGACY_NAMES, infer_arch, match_state_dict
from certifynet.models.normalization import (
    NORMALIZATION,
    NORMALIZATION_KINDS,
    NormalizeLayer,
    default_normalization,
    parse_normalization,
    resolve_normalization,
)

__all__ = [
    "ARCHITECTURES", "BasicBlock", "CHECKPOINT_FORMAT", "CifarResNet", "DEFAULT_DATASET", "LAYOUTS", "LEGACY_NAMES",
    "LeNet", "LoadedCheckpoint", "MNIST43", "NORMALIZATION", "NORMALIZATION_KINDS", "NormalizeLayer", "SAFE_GLOBALS",
    "atomic_torch_save", "check_finite_weights", "default_normalization", "file_sha256", "get_architecture",
    "infer_arch", "load_checkpoint", "match_state_dict", "parse_normalization", "plain", "read_checkpoint_file",
    "resolve_normalization", "save_checkpoint", "unwrap_model", "write_checkpoint",
]

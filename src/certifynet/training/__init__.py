"""Training losses and schedules for smoothing-friendly base classifiers (training.md)."""

from certifynet.training.losses import (
    consistency_loss,
    gaussian_loss,
    smoothadv_loss,
    smoothed_pgd_path,
    smoothmix_adversarial_path,
    smoothmix_loss,
)
from certifynet.training.schedule import k_at, smoothmix_warmup_weight

__all__ = [
    "gaussian_loss",
    "consistency_loss",
    "smoothed_pgd_path",
    "smoothmix_adversarial_path",
    "smoothadv_loss",
    "smoothmix_loss",
    "k_at",
    "smoothmix_warmup_weight",
]

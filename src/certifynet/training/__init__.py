"""Training smoothing-friendly base classifiers (training.md): losses, schedules and the training loop.

Modules, one job each: `config` (TrainConfig and its checks), `data` (splits, loaders, noise), `model`
(initialisation, resume, optimiser, checkpoint), `loss_spec` (which loss a step computes, the reference
batching), `losses` (the formulas), `schedule` (warm-ups), `epoch_log` (log.csv and its sidecar), `loop`
(the epochs and `train`), `ddp` (torchrun).
"""
from certifynet.training.config import (
    CHECKPOINT_NAME,
    METHODS,
    TrainConfig,
    default_outdir,
    prepare_config,
    resolve_method,
    warmup_unit,
)
from certifynet.training.data import SUBSET_SEED, NoiseSource, load_datasets, make_loaders
from certifynet.training.epoch_log import LOG_COLUMNS, LOG_NAME, META_NAME
from certifynet.training.loop import evaluate_noisy, run_training, train, train_one_epoch
from certifynet.training.loss_spec import LossSpec, split_batch
from certifynet.training.losses import (
    consistency_loss,
    gaussian_loss,
    smoothadv_loss,
    smoothed_pgd_path,
    smoothmix_adversarial_path,
    smoothmix_loss,
)
from certifynet.training.model import build_model, model_normalization
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
    "TrainConfig",
    "METHODS",
    "CHECKPOINT_NAME",
    "resolve_method",
    "default_outdir",
    "warmup_unit",
    "prepare_config",
    "SUBSET_SEED",
    "NoiseSource",
    "load_datasets",
    "make_loaders",
    "build_model",
    "model_normalization",
    "LossSpec",
    "split_batch",
    "LOG_COLUMNS",
    "LOG_NAME",
    "META_NAME",
    "train_one_epoch",
    "evaluate_noisy",
    "train",
    "run_training",
]

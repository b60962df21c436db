"""A training run's model: where it starts (scratch, pretrained weights, or a run to resume), the checks a
resume must pass, the optimiser it is trained with, and the checkpoint written after every epoch.

The checkpoint (``checkpoint.pth``, atomic) holds the weights, SGD and StepLR state, the settings and
``epoch`` = the number of epochs done, so a resume starts at that epoch index. A resume must keep σ, k, the
method and the normalisation, and every hyper-parameter of `HYPER_PARAMETERS` (`resume_changes`): a changed
one is refused naming it, unless ``force``, which records the change in ``log.meta.json``. Its normalisation is the
model's own NormalizeLayer (`model_normalization`), which is also what ``log.meta.json`` records.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import torch
from torch import nn

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.models import (
    get_architecture,
    load_checkpoint,
    parse_normalization,
    resolve_normalization,
    save_checkpoint,
)
from certifynet.records.guard import resume_changes as guarded_resume_changes
from certifynet.training import ddp
from certifynet.training.config import CHECKPOINT_NAME, SIGMA, TrainConfig

if TYPE_CHECKING:
    from certifynet.models import LoadedCheckpoint as Checkpoint

Optimiser = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]
# TrainConfig fields that a resumed run must keep (as the checkpoint's `args` record them); `force` allows a
# change. The rest may differ: epochs (a resume trains up to the new total), workers, device, paths.
HYPER_PARAMETERS = ("lr", "lr_step_size", "gamma", "momentum", "weight_decay", "batch", "seed", "num_noise_vec",
                    "lbd", "eta", "entropy", "k_warmup", "k_warmup_unit", "train_subset", "test_subset",
                    "num_steps", "alpha", "mix_step", "maxnorm_s", "maxnorm", "warmup", "eps", "attack_steps")


def resume_path(cfg: TrainConfig) -> str | None:
    """The checkpoint ``resume`` names: a path, or 'auto' = <outdir>/checkpoint.pth when it exists."""
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        path = os.path.join(cfg.outdir, CHECKPOINT_NAME)
        return path if os.path.isfile(path) else None
    if not os.path.isfile(cfg.resume):
        raise CertifyNetError(f"{{resume}} checkpoint '{cfg.resume}' not found", "resume")
    return cfg.resume


def _check_resumable(ck: Checkpoint, cfg: TrainConfig) -> None:
    """A resumed run must be a training checkpoint of the same σ, k and method."""
    args = ck.raw.get("args") if isinstance(ck.raw.get("args"), dict) else {}
    if ck.raw.get("optimizer") is None or ck.raw.get("scheduler") is None:
        raise CertifyNetError(f"{{resume}} '{ck.path}' has no optimizer/scheduler state (not a training "
                              f"checkpoint); use {{pretrained_model}} to start from its weights",
                              "resume", "pretrained_model")
    if ck.sigma is not None and not math.isclose(float(ck.sigma), cfg.sigma, rel_tol=0, abs_tol=1e-12):
        raise CertifyNetError(f"{{resume}} '{ck.path}' was trained with σ={ck.sigma}, not {{sigma}} {cfg.sigma}",
                              "resume", **SIGMA)
    if ck.k != cfg.k:
        raise CertifyNetError(f"{{resume}} '{ck.path}' was trained with k={ck.k}, not {{k}} {cfg.k}", "resume", "k")
    if args.get("method") not in (None, cfg.method):
        raise CertifyNetError(f"{{resume}} '{ck.path}' was trained with method {args.get('method')}, "
                              f"not {cfg.method}", "resume")


def resume_changes(ck: Checkpoint, cfg: TrainConfig) -> list[dict]:
    """The hyper-parameters of `cfg` that differ from those the checkpoint was trained with (its `args`):
    refused, naming them, unless ``cfg.force``; then the records of the changes (for log.meta.json)."""
    args = ck.raw.get("args") if isinstance(ck.raw.get("args"), dict) else {}
    return guarded_resume_changes(args, cfg.as_dict(), HYPER_PARAMETERS, force=cfg.force, path=ck.path,
                                  recorded_in="log.meta.json", epoch=ck.epoch)


def model_normalization(model: nn.Module) -> dict | None:
    """{'mean', 'std'} of the model's NormalizeLayer (what the checkpoint records), or None."""
    net = ddp.unwrap(model)
    first = net[0] if isinstance(net, nn.Sequential) and len(net) else None
    if first is None or not hasattr(first, "values"):
        return None
    mean, std = first.values()
    return {"mean": list(mean), "std": list(std)}


def build_model(cfg: TrainConfig, resume: str | None = None) -> tuple[nn.Module, Checkpoint | None, str]:
    """(model, resume checkpoint or None, source) — the model is on the CPU in train mode.

    `resume` is the checkpoint to continue (see `resume_path`); else --pretrained-model, else random init.
    Normalisation (``--normalization``): from scratch, the given one or the reference convention of the
    arch/dataset; with --pretrained-model, the given one, else the one stored in our files, else the
    reference convention; on resume, the checkpoint's (a different --normalization is an error).
    """
    spec = parse_normalization(cfg.normalization)
    if resume:
        ck = load_checkpoint(resume, arch=cfg.arch, dataset=cfg.dataset)
        _check_resumable(ck, cfg)
        if spec is not None:
            _, mean, std = resolve_normalization(spec, cfg.arch, cfg.dataset)
            have = model_normalization(ck.model)
            if have and (list(mean), list(std)) != (have["mean"], have["std"]):
                raise CertifyNetError(f"{{resume}} '{resume}' was trained with normalization {have}, "
                                      f"not {{normalization}} {cfg.normalization}", "resume", "normalization")
        return ck.model.train(), ck, f"resume:{resume}"
    if cfg.pretrained_model:
        ck = load_checkpoint(cfg.pretrained_model, arch=cfg.arch, dataset=cfg.dataset, normalization=spec)
        return ck.model.train(), None, f"pretrained:{cfg.pretrained_model}"
    torch.manual_seed(cfg.seed)
    return get_architecture(cfg.arch, cfg.dataset, spec).train(), None, "scratch"


def make_optimiser(cfg: TrainConfig, model: nn.Module, resume_ck: Checkpoint | None) -> tuple[Optimiser, int]:
    """((SGD, StepLR), first epoch index): fresh, or restored from the checkpoint being resumed."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_size, gamma=cfg.gamma)
    if resume_ck is None:
        return (optimizer, scheduler), 0
    try:
        optimizer.load_state_dict(resume_ck.raw["optimizer"])
        scheduler.load_state_dict(resume_ck.raw["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CertifyNetError(f"{{resume}} '{resume_ck.path}': optimizer/scheduler state does not fit "
                              f"({str(e).splitlines()[0][:120]})", "resume") from e
    return (optimizer, scheduler), resume_ck.epoch


def save_training_checkpoint(cfg: TrainConfig, model: nn.Module, optimiser: Optimiser, epochs_done: int,
                             global_step: int, k_now: int, world_size: int) -> None:
    """checkpoint.pth (atomic); its normalisation is the model's own NormalizeLayer."""
    optimizer, scheduler = optimiser
    save_checkpoint(os.path.join(cfg.outdir, CHECKPOINT_NAME), ddp.unwrap(model), arch=cfg.arch, dataset=cfg.dataset,
                    num_classes=dataset_info(cfg.dataset).num_classes,
                    sigma=cfg.sigma, k=cfg.k, epoch=epochs_done, optimizer=optimizer, scheduler=scheduler,
                    args=cfg.as_dict(),
                    extra={"training": {"method": cfg.method, "global_step": global_step, "k_current": k_now,
                                        "world_size": world_size}})

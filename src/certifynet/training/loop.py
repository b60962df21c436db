"""The training loop for smoothing base classifiers: Gaussian, consistency and SmoothMix, DDP-aware.

One epoch (index t, counted from 0):

- **Noise.** δ is drawn in [0,1] pixel space, no clipping, from ``certifynet.noise`` (the same samplers as
  certification): N(0, σ²I), or the generalized Gaussian with k_t = ``k_at(t, k, k_warmup)`` when ``--k`` is
  given (t = the epoch, or the global loader step for ImageNet / ``--k-warmup-unit step``); k_t = 0 is Gaussian.
  Noise comes from a per-rank generator reseeded at each epoch from (seed, rank, epoch), and the training
  order from ``DistributedSampler(seed).set_epoch(t)`` (also in one process), so a resumed run replays the
  uninterrupted one.
- **Batching (as the references).** Each loader batch of B images is cut into m = ``--num-noise-vec`` chunks of
  B//m images (a remainder is dropped, like the reference ``get_minibatches``); each chunk is one optimizer step
  on its m noisy copies, so every forward pass still holds about B noisy inputs and an epoch makes m·N/B steps.
  With m = 1 this is plain minibatch SGD.
- **Losses** (``certifynet.training.losses``): ``gaussian`` = CE(f(x+δ), y) (the mean over the m copies when
  m > 1); ``consistency`` = CE + λ·KL(p̂‖p_i) + η·H. Without ``--eta`` it is the DSRS variant of the seed
  commands, η = λ with the entropy the DSRS code computes, H(softmax p̂) (nearly constant; with H(p̂) and
  η = λ = 5 training collapses to chance); an explicit η uses H(p̂) as in Jeong & Shin (``--entropy`` overrides).
  ``smoothmix`` = CE + η·w·mixup-KL with the warm-up weight w = min(1, (t+1)/warmup). Gradients flow through
  the soft targets, as in the references. ``smoothadv`` = mean CE(f(x'+δ_i), y) on the SmoothAdv PGD point x' of
  the smoothed soft classifier (``--attack-steps`` T, radius ε_t = ε·min(1, (t+1)/warmup), step 2ε_t/T).
- **Optimiser.** SGD (momentum, weight decay) and StepLR(step_size, γ), stepped once per epoch.
- **Eval.** Accuracy of f(x+δ) on the test split (one draw per image, eval mode) with the k_t of that moment.
- **Outputs** (rank 0 only): ``log.csv`` (epoch, lr, k, train_loss, train_acc, test_acc_noisy, seconds; one row
  per epoch, appended and flushed), ``log.meta.json`` (what produced it) and ``checkpoint.pth``, rewritten
  atomically after every epoch with optimizer and scheduler state. Its ``epoch`` is the number of epochs done,
  so ``--resume`` starts at that epoch index.

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DDP, ``--batch`` is the global batch (each of the
G ranks loads batch/G images), the train split is sharded by ``DistributedSampler`` and the test split by
rank, and sums are all-reduced before logging.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from certifynet._version import __version__
from certifynet.data import dataset_info, get_dataset
from certifynet.errors import CertifyNetError
from certifynet.paths import check_output_folder, default_path
from certifynet.progress import progress
from certifynet.records import WriterLock, atomic_write
from certifynet.models import (get_architecture, load_checkpoint, parse_normalization, resolve_normalization,
                               save_checkpoint)
from certifynet.noise import GaussianNoise, GeneralizedGaussianNoise, check_k
from certifynet.training import ddp
from certifynet.training.losses import consistency_loss, gaussian_loss, smoothadv_loss, smoothmix_loss
from certifynet.training.schedule import k_at, smoothmix_warmup_weight

LOG_COLUMNS = ["epoch", "lr", "k", "train_loss", "train_acc", "test_acc_noisy", "seconds"]
METHODS = ("gaussian", "consistency", "smoothmix", "smoothadv")
CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "log.csv"
META_NAME = "log.meta.json"
SUBSET_SEED = 0  # --train-subset/--test-subset pick the same images whatever --seed is


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI flags map one to one onto these fields."""
    dataset: str
    arch: str
    sigma: float
    method: Optional[str] = None          # None: consistency if num_noise_vec >= 2 and lbd > 0, else gaussian
    lr: float = 0.1
    lr_step_size: int = 30
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 90
    batch: int = 256                      # global batch (split over DDP ranks)
    workers: int = 4
    seed: int = 0
    outdir: Optional[str] = None          # None: models/<dataset>/<arch>/noise_<σ>[_k<k>]
    data_dir: str = "data"
    download: bool = False
    device: str = "auto"
    resume: Optional[str] = None          # a path, or 'auto' = outdir/checkpoint.pth when present
    pretrained_model: Optional[str] = None
    normalization: Optional[str] = None   # 'dataset' | 'identity' | 'center' | 'M1,../S1,..'; None: see build_model
    overwrite: bool = False
    dry_run: bool = False
    num_noise_vec: int = 1
    lbd: float = 0.0
    eta: Optional[float] = None           # consistency: None → λ; smoothmix: None → 1.0
    entropy: Optional[str] = None         # consistency: 'dsrs' | 'pbar'; None → dsrs when eta is None, else pbar
    k: int = 0
    k_warmup: int = 0
    k_warmup_unit: str = "auto"           # 'epoch' | 'step' | 'auto' (step for imagenet)
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    num_steps: int = 8                    # SmoothMix
    alpha: float = 1.0
    mix_step: int = 0
    maxnorm_s: Optional[float] = None
    maxnorm: Optional[float] = None
    warmup: int = 10                      # SmoothMix weight / SmoothAdv ε warm-up (epochs)
    eps: float = 0.25                     # SmoothAdv: L2 radius ε of the training attack (reference 64/256)
    attack_steps: int = 10                # SmoothAdv: PGD steps T
    progress: bool = True

    @classmethod
    def from_namespace(cls, ns, **overrides) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(ns).items() if k in names}
        values.update(overrides)
        return cls(**values)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- config checks
def resolve_method(cfg: TrainConfig) -> str:
    if cfg.method is not None:
        if cfg.method not in METHODS:
            raise CertifyNetError(f"unknown --method '{cfg.method}'; choose from {', '.join(METHODS)}")
        return cfg.method
    return "consistency" if cfg.num_noise_vec >= 2 and cfg.lbd > 0 else "gaussian"


def _num(v) -> str:
    """A number for a folder name: 0.25 → '0.25', 5.0 → '5', 1e-4 → '0.0001'."""
    return f"{float(v):.10g}"


def default_outdir(cfg: "TrainConfig", method: Optional[str] = None) -> str:
    """<project>/models/<dataset>/<arch>/<method>/<hyper-parameters>/noise_<σ>[_k<k>[_kw<warm-up>]], as the
    consistency/SmoothMix repos name their runs, so that recipes differing in any of them never share a folder:
    consistency: num_<m>/lbd_<λ>/eta_<η>[_dsrs]; smoothmix: num_<m>/eta_<η>/steps_<T>/alpha_<α>/mix_<s>
    [/maxnorm_<r>][/maxnorms_<r>]/warmup_<w>; smoothadv: num_<m>/eps_<ε>/steps_<T>/warmup_<w>;
    gaussian: [num_<m>] when m > 1."""
    method = method or resolve_method(cfg)
    sigma = f"{cfg.sigma:.2f}" if round(cfg.sigma, 2) == cfg.sigma else _num(cfg.sigma)
    noise = f"noise_{sigma}" + (f"_k{cfg.k}" + (f"_kw{cfg.k_warmup}" if cfg.k_warmup else "") if cfg.k else "")
    parts = [method]
    if method == "consistency":
        eta = cfg.lbd if cfg.eta is None else cfg.eta
        entropy = cfg.entropy or ("dsrs" if cfg.eta is None else "pbar")
        parts += [f"num_{cfg.num_noise_vec}", f"lbd_{_num(cfg.lbd)}", f"eta_{_num(eta)}" + ("_dsrs" if entropy == "dsrs" else "")]
    elif method == "smoothmix":
        parts += [f"num_{cfg.num_noise_vec}", f"eta_{_num(1.0 if cfg.eta is None else cfg.eta)}",
                  f"steps_{cfg.num_steps}", f"alpha_{_num(cfg.alpha)}", f"mix_{cfg.mix_step}"]
        parts += [f"maxnorm_{_num(cfg.maxnorm)}"] if cfg.maxnorm is not None else []
        parts += [f"maxnorms_{_num(cfg.maxnorm_s)}"] if cfg.maxnorm_s is not None else []
        parts += [f"warmup_{cfg.warmup}"]
    elif method == "smoothadv":
        parts += [f"num_{cfg.num_noise_vec}", f"eps_{_num(cfg.eps)}", f"steps_{cfg.attack_steps}",
                  f"warmup_{cfg.warmup}"]
    elif cfg.num_noise_vec > 1:
        parts += [f"num_{cfg.num_noise_vec}"]
    return default_path(os.path.join("models", cfg.dataset, cfg.arch, *parts, noise))


def warmup_unit(cfg: TrainConfig) -> str:
    if cfg.k_warmup_unit == "auto":
        return "step" if cfg.dataset == "imagenet" else "epoch"
    return cfg.k_warmup_unit


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise CertifyNetError(msg)


def prepare_config(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Validate every setting (one-line errors) and fill in the derived ones (method, outdir)."""
    info = dataset_info(cfg.dataset)
    s = float(cfg.sigma)
    _check(math.isfinite(s) and s >= 0, f"--noise must be a finite σ >= 0, got {cfg.sigma}")
    _check(cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr must be > 0, got {cfg.lr}")
    _check(cfg.lr_step_size >= 1, f"--lr_step_size must be >= 1, got {cfg.lr_step_size}")
    _check(cfg.gamma > 0, f"--gamma must be > 0, got {cfg.gamma}")
    _check(cfg.momentum >= 0, f"--momentum must be >= 0, got {cfg.momentum}")
    _check(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    _check(cfg.epochs >= 0, f"--epochs must be >= 0, got {cfg.epochs}")
    _check(cfg.batch >= 1, f"--batch must be >= 1, got {cfg.batch}")
    _check(cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}")
    _check(cfg.num_noise_vec >= 1, f"--num-noise-vec must be >= 1, got {cfg.num_noise_vec}")
    _check(cfg.lbd >= 0, f"--lbd must be >= 0, got {cfg.lbd}")
    _check(cfg.eta is None or cfg.eta >= 0, f"--eta must be >= 0, got {cfg.eta}")
    _check(cfg.k >= 0, f"--k must be >= 0, got {cfg.k}")
    _check(cfg.k_warmup >= 0, f"--k-warmup must be >= 0, got {cfg.k_warmup}")
    _check(cfg.k_warmup_unit in ("auto", "epoch", "step"), "--k-warmup-unit must be auto, epoch or step")
    _check(cfg.entropy in (None, "dsrs", "pbar"), f"--entropy must be dsrs or pbar, got {cfg.entropy}")
    if cfg.k:
        check_k(info.dim, cfg.k)
        _check(s > 0, "--k > 0 needs --noise σ > 0")
    for name in ("train_subset", "test_subset"):
        v = getattr(cfg, name)
        _check(v is None or v >= 1, f"--{name.replace('_', '-')} must be >= 1, got {v}")
    method = resolve_method(cfg)
    if method == "smoothmix":
        _check(cfg.num_steps >= 1, f"--num-steps must be >= 1, got {cfg.num_steps}")
        _check(cfg.alpha > 0, f"--alpha (the SmoothMix step size) must be > 0, got {cfg.alpha}")
        _check(0 <= cfg.mix_step <= cfg.num_steps, f"--mix_step must be in [0, --num-steps={cfg.num_steps}], "
                                                   f"got {cfg.mix_step}")
        _check(cfg.warmup >= 0, f"--warmup must be >= 0, got {cfg.warmup}")
        for name in ("maxnorm", "maxnorm_s"):
            v = getattr(cfg, name)
            _check(v is None or v > 0, f"--{name} must be > 0, got {v}")
    if method == "smoothadv":
        _check(math.isfinite(cfg.eps) and cfg.eps >= 0, f"--eps must be a finite radius >= 0, got {cfg.eps}")
        _check(cfg.attack_steps >= 1, f"--attack-steps must be >= 1, got {cfg.attack_steps}")
        _check(cfg.warmup >= 0, f"--warmup must be >= 0, got {cfg.warmup}")
    _check(cfg.batch % world_size == 0, f"--batch {cfg.batch} is the global batch and must be divisible by "
                                        f"the {world_size} processes")
    per_rank = cfg.batch // world_size
    _check(per_rank >= cfg.num_noise_vec, f"each process's batch ({per_rank}) must hold at least "
                                          f"--num-noise-vec={cfg.num_noise_vec} images")
    _check(cfg.resume is None or cfg.resume != "", "--resume needs a path or 'auto'")
    entropy = cfg.entropy or ("dsrs" if cfg.eta is None else "pbar")
    cfg = dataclasses.replace(cfg, sigma=s, method=method, entropy=entropy)
    outdir = cfg.outdir or default_outdir(cfg)
    if not cfg.dry_run:
        check_output_folder(outdir, "--outdir")
    return dataclasses.replace(cfg, outdir=outdir)


# ---------------------------------------------------------------- losses
@dataclass(frozen=True)
class LossSpec:
    """Which loss a step computes: ``spec(model, x, y, noise_fn, epoch, generator) -> (loss, stats)``."""
    method: str = "gaussian"
    m: int = 1
    lbd: float = 0.0
    eta: Optional[float] = None
    num_steps: int = 8
    alpha: float = 1.0
    mix_step: int = 0
    maxnorm_s: Optional[float] = None
    maxnorm: Optional[float] = None
    warmup: int = 10
    num_classes: Optional[int] = None
    dsrs_entropy: bool = False
    eps: float = 0.25
    attack_steps: int = 10

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int) -> "LossSpec":
        return cls(method=resolve_method(cfg), m=cfg.num_noise_vec, lbd=cfg.lbd, eta=cfg.eta,
                   num_steps=cfg.num_steps, alpha=cfg.alpha, mix_step=cfg.mix_step, maxnorm_s=cfg.maxnorm_s,
                   maxnorm=cfg.maxnorm, warmup=cfg.warmup, num_classes=num_classes,
                   dsrs_entropy=(cfg.entropy or ("dsrs" if cfg.eta is None else "pbar")) == "dsrs",
                   eps=cfg.eps, attack_steps=cfg.attack_steps)

    def __call__(self, model, x, y, noise_fn, epoch: int = 0, generator=None):
        if self.method == "smoothadv":
            return smoothadv_loss(model, x, y, noise_fn, self.m, eps=self.eps, num_steps=self.attack_steps,
                                  warmup_weight=smoothmix_warmup_weight(epoch, self.warmup))
        if self.method == "smoothmix":
            return smoothmix_loss(model, x, y, noise_fn, self.m, num_steps=self.num_steps, step_alpha=self.alpha,
                                  eta=1.0 if self.eta is None else self.eta,
                                  warmup_weight=smoothmix_warmup_weight(epoch, self.warmup),
                                  num_classes=self.num_classes, mix_step=self.mix_step, maxnorm=self.maxnorm,
                                  maxnorm_s=self.maxnorm_s, generator=generator)
        if self.method == "consistency":
            return consistency_loss(model, x, y, noise_fn, self.m, self.lbd, self.eta, dsrs_entropy=self.dsrs_entropy)
        if self.m == 1:
            return gaussian_loss(model, x, y, noise_fn)
        return consistency_loss(model, x, y, noise_fn, self.m, 0.0, 0.0)  # mean CE over the m copies


def split_batch(x: torch.Tensor, y: torch.Tensor, m: int):
    """The reference batching: m chunks of len(x)//m images (remainder dropped); [] when len(x) < m."""
    size = x.shape[0] // m
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(m)] if size else []


class NoiseSource:
    """δ for a batch at a given k (cached samplers), drawn from one generator; σ = 0 gives no noise."""

    def __init__(self, sigma: float, dim: int, generator: Optional[torch.Generator] = None):
        self.sigma, self.dim, self.generator = sigma, dim, generator
        self._cache = {}

    def sampler(self, k: int):
        if k not in self._cache:
            self._cache[k] = GaussianNoise(self.sigma) if k == 0 else GeneralizedGaussianNoise(self.sigma, k, self.dim)
        return self._cache[k]

    def fn(self, k: int):
        if self.sigma == 0:
            return torch.zeros_like
        noise, gen = self.sampler(k), self.generator
        return lambda x: noise.sample_like(x, gen)


class _TrainOutputs:
    """Forward hook keeping the first train-mode output after each reset(): the logits of the noisy copies.

    The losses return only (loss, stats); this gives the training accuracy without a second forward pass.
    The SmoothMix attack runs in eval mode, so its forwards are skipped.
    """

    def __init__(self, module: nn.Module):
        self.out = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if module.training and self.out is None:
            self.out = output.detach()

    def reset(self):
        self.out = None

    def remove(self):
        self._handle.remove()


# ---------------------------------------------------------------- data
def _subset(ds, n: Optional[int]):
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(SUBSET_SEED)
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].sort().values.tolist())


def load_datasets(cfg: TrainConfig, info: ddp.DistInfo):
    """(train, test) datasets; with --download under DDP rank 0 fetches first and the others wait."""
    def get(split, download):
        return get_dataset(cfg.dataset, split, cfg.data_dir, download)

    if cfg.download and info.distributed and not info.is_main:
        ddp.barrier()
    train = get("train", cfg.download and info.is_main)
    test = get("test", cfg.download and info.is_main)
    if cfg.download and info.distributed and info.is_main:
        ddp.barrier()
    return _subset(train, cfg.train_subset), _subset(test, cfg.test_subset)


def make_loaders(train_set, test_set, cfg: TrainConfig, info: ddp.DistInfo):
    """Train loader (DistributedSampler over world_size ranks, even in one process) and a rank-sharded test loader."""
    per_rank = cfg.batch // info.world_size
    kw = {"num_workers": cfg.workers, "pin_memory": info.device.type == "cuda",
          "persistent_workers": cfg.workers > 0}
    sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    train = DataLoader(train_set, batch_size=per_rank, sampler=sampler, drop_last=False, **kw)
    test_idx = list(range(info.rank, len(test_set), info.world_size))  # no padding: each image counted once
    test = DataLoader(test_set, batch_size=per_rank, sampler=test_idx, **kw)
    return train, sampler, test


# ---------------------------------------------------------------- model
def _resume_path(cfg: TrainConfig) -> Optional[str]:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        path = os.path.join(cfg.outdir, CHECKPOINT_NAME)
        return path if os.path.isfile(path) else None
    if not os.path.isfile(cfg.resume):
        raise CertifyNetError(f"--resume checkpoint '{cfg.resume}' not found")
    return cfg.resume


def _check_resumable(ck, cfg: TrainConfig) -> None:
    args = ck.raw.get("args") if isinstance(ck.raw.get("args"), dict) else {}
    if ck.raw.get("optimizer") is None or ck.raw.get("scheduler") is None:
        raise CertifyNetError(f"--resume '{ck.path}' has no optimizer/scheduler state (not a training "
                              f"checkpoint); use --pretrained-model to start from its weights")
    if ck.sigma is not None and not math.isclose(float(ck.sigma), cfg.sigma, rel_tol=0, abs_tol=1e-12):
        raise CertifyNetError(f"--resume '{ck.path}' was trained with σ={ck.sigma}, not --noise {cfg.sigma}")
    if ck.k != cfg.k:
        raise CertifyNetError(f"--resume '{ck.path}' was trained with k={ck.k}, not --k {cfg.k}")
    if args.get("method") not in (None, cfg.method):
        raise CertifyNetError(f"--resume '{ck.path}' was trained with method {args.get('method')}, not {cfg.method}")


def model_normalization(model: nn.Module) -> Optional[dict]:
    """{'mean', 'std'} of the model's NormalizeLayer (what the checkpoint records), or None."""
    net = ddp.unwrap(model)
    first = net[0] if isinstance(net, nn.Sequential) and len(net) else None
    if first is None or not hasattr(first, "values"):
        return None
    mean, std = first.values()
    return {"mean": list(mean), "std": list(std)}


def build_model(cfg: TrainConfig, resume: Optional[str] = None):
    """(model, resume checkpoint or None, source) — the model is on the CPU in train mode.

    `resume` is the checkpoint to continue (see ``_resume_path``); else --pretrained-model, else random init.
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
                raise CertifyNetError(f"--resume '{resume}' was trained with normalization {have}, "
                                      f"not --normalization {cfg.normalization}")
        return ck.model.train(), ck, f"resume:{resume}"
    if cfg.pretrained_model:
        ck = load_checkpoint(cfg.pretrained_model, arch=cfg.arch, dataset=cfg.dataset, normalization=spec)
        return ck.model.train(), None, f"pretrained:{cfg.pretrained_model}"
    torch.manual_seed(cfg.seed)
    return get_architecture(cfg.arch, cfg.dataset, spec).train(), None, "scratch"


# ---------------------------------------------------------------- log files
def _atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


class EpochLog:
    """log.csv (header = LOG_COLUMNS) with one flushed row per epoch, and the log.meta.json sidecar.

    A fresh run rewrites both; a resumed run keeps the rows of epochs before `start_epoch` (a row written
    after the last checkpoint is dropped, since that epoch is trained again) and appends after them.
    """

    def __init__(self, outdir: str, meta: dict, start_epoch: int = 0, resumed: bool = False):
        self.path = os.path.join(outdir, LOG_NAME)
        self.meta_path = os.path.join(outdir, META_NAME)
        kept = []
        if resumed and os.path.isfile(self.path):
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))
            if rows and rows[0] != LOG_COLUMNS:
                raise CertifyNetError(f"'{self.path}' has columns {rows[0]}, expected {LOG_COLUMNS}")
            for r in rows[1:]:
                try:
                    if len(r) == len(LOG_COLUMNS) and int(r[0]) < start_epoch:
                        kept.append(r)
                except ValueError:
                    continue
        body = ",".join(LOG_COLUMNS) + "\n" + "".join(",".join(r) + "\n" for r in kept)
        _atomic_write_text(self.path, body)
        meta_text = json.dumps({**meta, "columns": LOG_COLUMNS}, indent=1, sort_keys=True) + "\n"
        _atomic_write_text(self.meta_path, meta_text)
        self._f = open(self.path, "a", newline="")

    def write(self, row: dict) -> None:
        self._f.write(",".join(_fmt(row[c]) for c in LOG_COLUMNS) + "\n")
        self._f.flush()

    def close(self):
        self._f.close()


# ---------------------------------------------------------------- train / eval
def _to(x, y, device):
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train_one_epoch(model, loader, optimizer, spec: LossSpec, noise: NoiseSource, epoch: int, k_of_step,
                    device, progress=None, first_step: int = 0):
    """One pass over `loader`; returns a tensor [loss·images, images, correct, predictions] summed on this rank
    and the k of the last step. `k_of_step(global_step)` gives the noise shape for each loader batch."""
    model.train()
    capture = _TrainOutputs(ddp.unwrap(model))
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    k_t = k_of_step(first_step)
    try:
        for i, (x, y) in enumerate(loader):
            x, y = _to(x, y, device)
            k_t = k_of_step(first_step + i)
            noise_fn = noise.fn(k_t)
            for xc, yc in split_batch(x, y, spec.m):
                capture.reset()
                loss, _ = spec(model, xc, yc, noise_fn, epoch, noise.generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = xc.shape[0]
                sums[0] += loss.detach().double() * n
                sums[1] += n
                if capture.out is not None:
                    out = capture.out
                    reps = out.shape[0] // n
                    sums[2] += (out.argmax(-1) == yc.repeat(reps)).sum()
                    sums[3] += out.shape[0]
            if progress is not None:
                progress.update(1)
                if i % 20 == 0:
                    s = sums.tolist()
                    progress.set_postfix(loss=f"{s[0] / max(s[1], 1):.4f}", acc=f"{s[2] / max(s[3], 1):.3f}", k=k_t)
    finally:
        capture.remove()
    return sums, k_t


@torch.no_grad()
def evaluate_noisy(model, loader, noise_fn, device):
    """[correct, total] of argmax f(x+δ) == y over `loader` (one noise draw per image), in eval mode."""
    net = ddp.unwrap(model)
    was_training = net.training
    net.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        for x, y in loader:
            x, y = _to(x, y, device)
            sums[0] += (net(x + noise_fn(x)).argmax(-1) == y).sum()
            sums[1] += y.shape[0]
    finally:
        net.train(was_training)
    return sums


def _progress(total, desc, enabled):
    return progress(total, desc, "step", enabled=enabled, leave=False) if enabled else None


def _save(cfg, model, optimizer, scheduler, epochs_done, global_step, k_now, info):
    """checkpoint.pth (atomic); its normalisation is the model's own NormalizeLayer."""
    save_checkpoint(os.path.join(cfg.outdir, CHECKPOINT_NAME), ddp.unwrap(model), arch=cfg.arch, dataset=cfg.dataset,
                    num_classes=dataset_info(cfg.dataset).num_classes,
                    sigma=cfg.sigma, k=cfg.k, epoch=epochs_done, optimizer=optimizer, scheduler=scheduler,
                    args=cfg.as_dict(),
                    extra={"training": {"method": cfg.method, "global_step": global_step, "k_current": k_now,
                                        "world_size": info.world_size}})


def _meta(cfg, info, n_train, n_test, source, normalization, start_epoch):
    return {"kind": "train_log", "dataset": cfg.dataset, "arch": cfg.arch, "sigma": cfg.sigma, "k": cfg.k,
            "k_warmup": cfg.k_warmup, "k_warmup_unit": warmup_unit(cfg), "method": cfg.method, "seed": cfg.seed,
            "lr": cfg.lr, "lr_step_size": cfg.lr_step_size, "gamma": cfg.gamma, "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay, "epochs": cfg.epochs, "batch": cfg.batch,
            "world_size": info.world_size, "num_noise_vec": cfg.num_noise_vec, "lbd": cfg.lbd, "eta": cfg.eta,
            "entropy": cfg.entropy if cfg.method == "consistency" else None,
            "smoothmix": ({"num_steps": cfg.num_steps, "alpha": cfg.alpha, "mix_step": cfg.mix_step,
                           "maxnorm_s": cfg.maxnorm_s, "maxnorm": cfg.maxnorm, "warmup": cfg.warmup}
                          if cfg.method == "smoothmix" else None),
            "smoothadv": ({"eps": cfg.eps, "attack_steps": cfg.attack_steps, "warmup": cfg.warmup}
                          if cfg.method == "smoothadv" else None),
            "normalization": normalization,
            "train_size": n_train, "test_size": n_test, "init": source, "start_epoch": start_epoch,
            "data_dir": cfg.data_dir, "device": str(info.device), "version": __version__,
            "command": " ".join(sys.argv), "created": datetime.datetime.now().isoformat(timespec="seconds")}


def train(cfg: TrainConfig, info: Optional[ddp.DistInfo] = None) -> dict:
    """Run (or dry-run) training as configured; returns a summary dict (outdir, last log row, ...).

    `info` describes the process (``ddp.init_distributed()``); None = one process on ``cfg.device``.
    """
    if info is None:
        info = ddp.DistInfo(device=ddp.resolve_device(cfg.device))
    cfg = prepare_config(cfg, info.world_size)
    dinfo = dataset_info(cfg.dataset)
    # Rank 0's view of the files decides for every rank (a fast rank 0 may write before a slow rank looks).
    resume_path = ddp.broadcast_object(_resume_path(cfg))
    ckpt_path = os.path.join(cfg.outdir, CHECKPOINT_NAME)
    ckpt_exists = ddp.broadcast_object(os.path.isfile(ckpt_path))
    model, resume_ck, source = build_model(cfg, resume_path)
    normalization = model_normalization(model)
    if resume_ck is None and not cfg.dry_run and not cfg.overwrite and ckpt_exists:
        raise CertifyNetError(f"'{ckpt_path}' already exists; pass --resume auto to continue that run, "
                              f"--overwrite to start over, or another --outdir")
    train_set, test_set = load_datasets(cfg, info)
    train_loader, sampler, test_loader = make_loaders(train_set, test_set, cfg, info)

    device = info.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    model = ddp.wrap_model(model.to(device), info)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_size, gamma=cfg.gamma)
    start_epoch = 0
    if resume_ck is not None:
        try:
            optimizer.load_state_dict(resume_ck.raw["optimizer"])
            scheduler.load_state_dict(resume_ck.raw["scheduler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CertifyNetError(f"--resume '{resume_ck.path}': optimizer/scheduler state does not fit "
                                  f"({str(e).splitlines()[0][:120]})") from e
        start_epoch = resume_ck.epoch
    spec = LossSpec.from_config(cfg, dinfo.num_classes)
    noise = NoiseSource(cfg.sigma, dinfo.dim, ddp.make_generator(device, ddp.rank_seed(cfg.seed, info.rank, 0)))
    eval_noise = NoiseSource(cfg.sigma, dinfo.dim, ddp.make_generator(device, ddp.rank_seed(cfg.seed, info.rank, 1)))
    steps_per_epoch = len(train_loader)
    unit = warmup_unit(cfg)

    def k_of_step(global_step: int, epoch: int) -> int:
        return k_at(global_step if unit == "step" else epoch, cfg.k, cfg.k_warmup)

    summary = {"outdir": cfg.outdir, "checkpoint": ckpt_path, "method": cfg.method, "start_epoch": start_epoch,
               "train_size": len(train_set), "test_size": len(test_set), "world_size": info.world_size,
               "init": source, "rows": []}

    if cfg.dry_run:
        x, y = _to(*next(iter(train_loader)), device)
        chunks = split_batch(x, y, spec.m)
        _check(bool(chunks), f"the first batch holds {x.shape[0]} images, fewer than --num-noise-vec={spec.m}")
        xc, yc = chunks[0]
        loss, _ = spec(model, xc, yc, noise.fn(k_of_step(start_epoch * steps_per_epoch, start_epoch)), start_epoch,
                       noise.generator)
        loss = float(loss.detach())
        n_params = sum(p.numel() for p in model.parameters())
        if info.is_main:
            print(f"dry run ok: {cfg.arch} ({n_params:,} parameters) on {cfg.dataset} (train {len(train_set)}, "
                  f"test {len(test_set)}), method {cfg.method}, σ={cfg.sigma:g}, k={cfg.k}, batch {cfg.batch} "
                  f"on {info.world_size} process(es), device {device}, init {source}, first loss {loss:.4f}, "
                  f"outdir {cfg.outdir}", flush=True)
        summary.update(dry_run=True, loss=loss, parameters=n_params)
        return summary

    log, lock, created = None, None, False
    if info.is_main:
        created = not os.path.isdir(cfg.outdir)
        os.makedirs(cfg.outdir, exist_ok=True)
        lock = WriterLock(ckpt_path).acquire(cfg.outdir)  # one training run per folder
        try:
            log = EpochLog(cfg.outdir, _meta(cfg, info, len(train_set), len(test_set), source, normalization,
                                             start_epoch), start_epoch, resumed=resume_ck is not None)
        except BaseException:
            lock.release()
            raise
    try:
        if cfg.epochs == 0 and resume_ck is None:
            if info.is_main:
                _save(cfg, model, optimizer, scheduler, 0, 0, k_of_step(0, 0), info)
                print(f"--epochs 0: saved the untrained model to {ckpt_path}", flush=True)
        elif start_epoch >= cfg.epochs and info.is_main:
            print(f"nothing to do: '{resume_ck.path}' has {start_epoch} epochs done, --epochs {cfg.epochs}", flush=True)
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()
            sampler.set_epoch(epoch)
            noise.generator.manual_seed(ddp.rank_seed(cfg.seed, info.rank, 0, epoch))
            eval_noise.generator.manual_seed(ddp.rank_seed(cfg.seed, info.rank, 1, epoch))
            lr = optimizer.param_groups[0]["lr"]
            first = epoch * steps_per_epoch
            bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", info.is_main and cfg.progress)
            try:
                sums, k_now = train_one_epoch(model, train_loader, optimizer, spec, noise, epoch,
                                              lambda s: k_of_step(s, epoch), device, bar, first)
            finally:
                if bar is not None:
                    bar.close()
            scheduler.step()
            acc = evaluate_noisy(model, test_loader, eval_noise.fn(k_now), device)
            totals = ddp.all_reduce_sum(torch.cat([sums, acc])).tolist()
            row = {"epoch": epoch, "lr": float(lr), "k": int(k_now),
                   "train_loss": totals[0] / max(totals[1], 1), "train_acc": totals[2] / max(totals[3], 1),
                   "test_acc_noisy": totals[4] / max(totals[5], 1), "seconds": round(time.time() - t0, 2)}
            summary["rows"].append(row)
            if info.is_main:
                log.write(row)
                print(f"epoch {epoch + 1}/{cfg.epochs}  lr {lr:.4g}  k {k_now}  loss {row['train_loss']:.4f}  "
                      f"train_acc {row['train_acc']:.4f}  test_acc_noisy {row['test_acc_noisy']:.4f}  "
                      f"{row['seconds']:.1f}s", flush=True)
            if not math.isfinite(row["train_loss"]):
                raise CertifyNetError(f"training diverged at epoch {epoch} (loss {row['train_loss']}); "
                                      f"the last good checkpoint is kept; try a lower --lr")
            if info.is_main:
                _save(cfg, model, optimizer, scheduler, epoch + 1, first + steps_per_epoch, k_now, info)
        ddp.barrier()
    except BaseException:
        if info.is_main and resume_ck is None and not summary["rows"] and not os.path.isfile(ckpt_path):
            log.close()
            log, lock = None, lock.release()
            _remove_empty_run(cfg.outdir, created)  # a failed fresh run leaves no header-only log behind
        raise
    finally:
        if log is not None:
            log.close()
        if lock is not None:
            lock.release()
    summary["last"] = summary["rows"][-1] if summary["rows"] else None
    return summary


def _remove_empty_run(outdir: str, created: bool) -> None:
    """Delete the log and sidecar of a run that wrote no epoch, and its folder if this run created it empty."""
    for name in (LOG_NAME, META_NAME):
        path = os.path.join(outdir, name)
        if os.path.isfile(path):
            os.unlink(path)
    if created:
        try:
            os.rmdir(outdir)
        except OSError:
            pass


def run_training(cfg: TrainConfig) -> dict:
    """Entry point for the CLIs: join the torchrun process group if there is one, train, clean up."""
    info = ddp.init_distributed(cfg.device)
    try:
        return train(cfg, info)
    finally:
        ddp.cleanup()

"""A training run's settings: `TrainConfig` (filled by the CLI, one field per flag), checked in one place.

`prepare_config` validates every field with one-line errors that name the field (the argparse dest, so the
CLI prints the flag: ``{epochs}`` → ``--epochs``; σ is the field ``sigma`` of the flag ``--noise``) and fills
in what the others imply: the method (consistency when m = ``num_noise_vec`` ≥ 2 and λ = ``lbd`` > 0, else
Gaussian), the entropy term of consistency, and the output folder (`default_outdir`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from certifynet.bounds import FLOAT_BYTES, check_workers, human_bytes, input_dim, memory_bytes
from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.noise import check_k
from certifynet.paths import check_output_folder, default_path

METHODS = ("gaussian", "consistency", "smoothmix", "smoothadv")
CHECKPOINT_NAME = "checkpoint.pth"
SIGMA = {"sigma": "noise"}  # the field σ is the flag --noise (--noise_sd in the references)


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI flags map one to one onto these fields."""
    dataset: str
    arch: str
    sigma: float
    method: str | None = None             # None: consistency if num_noise_vec >= 2 and lbd > 0, else gaussian
    lr: float = 0.1
    lr_step_size: int = 30
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 90
    batch: int = 256                      # global batch (split over DDP ranks)
    workers: int = 4
    seed: int = 0
    outdir: str | None = None             # None: models/<dataset>/<arch>/noise_<σ>[_k<k>]
    data_dir: str = "data"
    download: bool = False
    device: str = "auto"
    resume: str | None = None             # a path, or 'auto' = outdir/checkpoint.pth when present
    pretrained_model: str | None = None
    normalization: str | None = None      # 'dataset' | 'identity' | 'center' | 'M1,../S1,..'; None: see build_model
    overwrite: bool = False
    force: bool = False                   # resume with changed hyper-parameters (recorded in log.meta.json)
    dry_run: bool = False
    num_noise_vec: int = 1
    lbd: float = 0.0
    eta: float | None = None              # consistency: None → λ; smoothmix: None → 1.0
    entropy: str | None = None            # consistency: 'dsrs' | 'pbar'; None → dsrs when eta is None, else pbar
    k: int = 0
    k_warmup: int = 0
    k_warmup_unit: str = "auto"           # 'epoch' | 'step' | 'auto' (step for imagenet)
    train_subset: int | None = None
    test_subset: int | None = None
    num_steps: int = 8                    # SmoothMix
    alpha: float = 1.0
    mix_step: int = 0
    maxnorm_s: float | None = None
    maxnorm: float | None = None
    warmup: int = 10                      # SmoothMix weight / SmoothAdv ε warm-up (epochs)
    eps: float = 0.25                     # SmoothAdv: L2 radius ε of the training attack (reference 64/256)
    attack_steps: int = 10                # SmoothAdv: PGD steps T
    progress: bool = True

    @classmethod
    def from_namespace(cls, ns, **overrides) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(ns).items() if k in names}
        values.update(overrides)
        return cls(**values)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- what the settings imply
def resolve_method(cfg: TrainConfig) -> str:
    """The given method, else consistency when m ≥ 2 and λ > 0, else gaussian."""
    if cfg.method is not None:
        if cfg.method not in METHODS:
            raise CertifyNetError(f"unknown {{method}} '{cfg.method}'; choose from {', '.join(METHODS)}", "method")
        return cfg.method
    return "consistency" if cfg.num_noise_vec >= 2 and cfg.lbd > 0 else "gaussian"


def resolve_entropy(cfg: TrainConfig) -> str:
    """Consistency's entropy term: the given one, else 'dsrs' (H(softmax p̂)) when η is omitted, else 'pbar'
    (H(p̂))."""
    return cfg.entropy or ("dsrs" if cfg.eta is None else "pbar")


def warmup_unit(cfg: TrainConfig) -> str:
    """What t counts in k_t: the global step for ImageNet under 'auto', else the epoch."""
    if cfg.k_warmup_unit == "auto":
        return "step" if cfg.dataset == "imagenet" else "epoch"
    return cfg.k_warmup_unit


def _num(v) -> str:
    """A number for a folder name: 0.25 → '0.25', 5.0 → '5', 1e-4 → '0.0001'."""
    return f"{float(v):.10g}"


def _method_parts(cfg: TrainConfig, method: str) -> list[str]:
    """The hyper-parameter folders of `method` (see `default_outdir`)."""
    if method == "consistency":
        eta = cfg.lbd if cfg.eta is None else cfg.eta
        return [f"num_{cfg.num_noise_vec}", f"lbd_{_num(cfg.lbd)}",
                f"eta_{_num(eta)}" + ("_dsrs" if resolve_entropy(cfg) == "dsrs" else "")]
    if method == "smoothmix":
        return ([f"num_{cfg.num_noise_vec}", f"eta_{_num(1.0 if cfg.eta is None else cfg.eta)}",
                 f"steps_{cfg.num_steps}", f"alpha_{_num(cfg.alpha)}", f"mix_{cfg.mix_step}"]
                + ([f"maxnorm_{_num(cfg.maxnorm)}"] if cfg.maxnorm is not None else [])
                + ([f"maxnorms_{_num(cfg.maxnorm_s)}"] if cfg.maxnorm_s is not None else [])
                + [f"warmup_{cfg.warmup}"])
    if method == "smoothadv":
        return [f"num_{cfg.num_noise_vec}", f"eps_{_num(cfg.eps)}", f"steps_{cfg.attack_steps}",
                f"warmup_{cfg.warmup}"]
    return [f"num_{cfg.num_noise_vec}"] if cfg.num_noise_vec > 1 else []


def default_outdir(cfg: TrainConfig, method: str | None = None) -> str:
    """<project>/models/<dataset>/<arch>/<method>/<hyper-parameters>/noise_<σ>[_k<k>[_kw<warm-up>]], as the
    consistency/SmoothMix repos name their runs, so that recipes differing in any of them never share a folder:
    consistency: num_<m>/lbd_<λ>/eta_<η>[_dsrs]; smoothmix: num_<m>/eta_<η>/steps_<T>/alpha_<α>/mix_<s>
    [/maxnorm_<r>][/maxnorms_<r>]/warmup_<w>; smoothadv: num_<m>/eps_<ε>/steps_<T>/warmup_<w>;
    gaussian: [num_<m>] when m > 1."""
    method = method or resolve_method(cfg)
    sigma = f"{cfg.sigma:.2f}" if round(cfg.sigma, 2) == cfg.sigma else _num(cfg.sigma)
    noise = f"noise_{sigma}" + (f"_k{cfg.k}" + (f"_kw{cfg.k_warmup}" if cfg.k_warmup else "") if cfg.k else "")
    return default_path(os.path.join("models", cfg.dataset, cfg.arch, method, *_method_parts(cfg, method), noise))


# ---------------------------------------------------------------- checks
def _check(cond: bool, msg: str, *names: str, **renamed: str) -> None:
    if not cond:
        raise CertifyNetError(msg, *names, **renamed)


def _at_least(cfg: TrainConfig, minimum: int, *names: str) -> None:
    """Each field is None or a finite number >= minimum (NaN and ±inf never reach the optimiser)."""
    for name in names:
        v = getattr(cfg, name)
        _check(v is None or (math.isfinite(v) and v >= minimum), f"{{{name}}} must be >= {minimum} and finite, "
                                                                 f"got {v}", name)


def _positive(cfg: TrainConfig, *names: str) -> None:
    """Each field is None or a finite number > 0."""
    for name in names:
        v = getattr(cfg, name)
        _check(v is None or (math.isfinite(v) and v > 0), f"{{{name}}} must be > 0 and finite, got {v}", name)


def _check_common(cfg: TrainConfig, sigma: float) -> None:
    """The optimiser, data and noise fields every method uses (in the order the errors have always come)."""
    _check(math.isfinite(sigma) and sigma >= 0, f"{{sigma}} must be a finite σ >= 0, got {cfg.sigma}", **SIGMA)
    _check(cfg.lr > 0 and math.isfinite(cfg.lr), f"{{lr}} must be > 0, got {cfg.lr}", "lr")
    _at_least(cfg, 1, "lr_step_size")
    _check(cfg.gamma > 0, f"{{gamma}} must be > 0, got {cfg.gamma}", "gamma")
    _positive(cfg, "gamma")
    _at_least(cfg, 0, "momentum", "weight_decay", "epochs")
    _at_least(cfg, 1, "batch")
    _at_least(cfg, 0, "workers")
    check_workers(cfg.workers)
    _at_least(cfg, 1, "num_noise_vec")
    _at_least(cfg, 0, "lbd", "eta", "k", "k_warmup")
    _check(cfg.k_warmup_unit in ("auto", "epoch", "step"), "{k_warmup_unit} must be auto, epoch or step",
           "k_warmup_unit")
    _check(cfg.entropy in (None, "dsrs", "pbar"), f"{{entropy}} must be dsrs or pbar, got {cfg.entropy}", "entropy")
    if cfg.k:
        check_k(dataset_info(cfg.dataset).dim, cfg.k)
        _check(sigma > 0, "{k} > 0 needs {sigma} σ > 0", "k", **SIGMA)
    _at_least(cfg, 1, "train_subset", "test_subset")


def _check_method(cfg: TrainConfig, method: str) -> None:
    """The fields of SmoothMix and SmoothAdv (other methods ignore them)."""
    if method == "smoothmix":
        _at_least(cfg, 1, "num_steps")
        _check(cfg.alpha > 0, f"{{alpha}} (the SmoothMix step size) must be > 0, got {cfg.alpha}", "alpha")
        _positive(cfg, "alpha")
        _check(0 <= cfg.mix_step <= cfg.num_steps, f"{{mix_step}} must be in [0, {{num_steps}}={cfg.num_steps}], "
                                                   f"got {cfg.mix_step}", "mix_step", "num_steps")
        _at_least(cfg, 0, "warmup")
        _positive(cfg, "maxnorm", "maxnorm_s")
    if method == "smoothadv":
        _check(math.isfinite(cfg.eps) and cfg.eps >= 0, f"{{eps}} must be a finite radius >= 0, got {cfg.eps}", "eps")
        _at_least(cfg, 1, "attack_steps")
        _at_least(cfg, 0, "warmup")


def _check_batch(cfg: TrainConfig, world_size: int) -> None:
    """The global batch splits evenly over the processes, and each share holds the m noisy chunks."""
    _check(cfg.batch % world_size == 0, f"{{batch}} {cfg.batch} is the global batch and must be divisible by "
                                        f"the {world_size} processes", "batch")
    per_rank = cfg.batch // world_size
    _check(per_rank >= cfg.num_noise_vec, f"each process's batch ({per_rank}) must hold at least "
                                          f"{{num_noise_vec}}={cfg.num_noise_vec} images", "num_noise_vec")


FLOAT32_MAX = 3.4028234663852886e38  # torch's SGD takes lr and weight decay as float32 scalars
SEED_RANGE = (-2 ** 63, 2 ** 64 - 1)  # what torch.manual_seed takes


def _check_torch_limits(cfg: TrainConfig) -> None:
    """Values torch takes as machine numbers fit them: lr, momentum and weight decay the optimiser's float32
    scalars (else torch raises, or the weights become inf), the seed torch's 64 bits; one batch of images (batch × d
    float32 values, a bound far below what training needs) fits in memory."""
    for name in ("lr", "momentum", "weight_decay"):
        v = getattr(cfg, name)
        _check(not v > FLOAT32_MAX, f"{{{name}}} must be at most {FLOAT32_MAX:.4g} (float32), got {v}", name)
    lo, hi = SEED_RANGE
    _check(lo <= cfg.seed <= hi, f"{{seed}} must be in [-2^63, 2^64 - 1], got {cfg.seed}", "seed")
    need, have = float(cfg.batch) * input_dim(cfg.dataset) * FLOAT_BYTES, memory_bytes()   # the batch itself
    _check(need <= have, f"{{batch}} {cfg.batch:,} of {cfg.dataset} images needs at least {human_bytes(need)}, more "
                         f"than this machine's {human_bytes(have)} of memory", "batch")


def prepare_config(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Validate every setting (one-line errors) and fill in the derived ones (method, entropy, outdir)."""
    dataset_info(cfg.dataset)  # an unknown dataset is the first error
    sigma = float(cfg.sigma)
    _check_common(cfg, sigma)
    _check_torch_limits(cfg)
    method = resolve_method(cfg)
    _check_method(cfg, method)
    _check_batch(cfg, world_size)
    _check(cfg.resume is None or cfg.resume != "", "{resume} needs a path or 'auto'", "resume")
    cfg = dataclasses.replace(cfg, sigma=sigma, method=method, entropy=resolve_entropy(cfg))
    outdir = cfg.outdir or default_outdir(cfg)
    if not cfg.dry_run:
        check_output_folder(outdir, name="outdir")
    return dataclasses.replace(cfg, outdir=outdir)

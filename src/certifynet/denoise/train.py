"""Training loop for denoisers (denoised smoothing, Salman et al. 2020), with KAIR-style JSON options.

One step, for a batch (x, y) of clean images in [0, 1]:
    σ_b ~ the σ spec (fixed σ, one of a list, or U[lo, hi]), one per sample;  x̃ = x + σ_b·z, z ~ N(0, I);
    x̂ = D(x̃, σ_b)  (the σ map carries σ_b);  loss = objective(x̂, x, y; F), F frozen.
Objectives: mse, l1 (need no F), stability = CE(F(x̂), argmax F(x)), classification = CE(F(x̂), y).
Adam + MultiStepLR (milestones in epochs). After every epoch: outdir/denoiser.pth (atomic, with optimizer and
scheduler for `resume`), then one row of outdir/log.csv (flushed; sidecar log.csv.meta.json):
epoch, lr, loss (mean training loss), psnr and denoised_acc on the test split at the evaluation σ
(the training σ, the middle of the list, or the middle of the range), seconds.

Options come from `TrainOptions` defaults < a JSON options file < command-line flags (`resolve_options`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Subset

from certifynet.data import dataset_info, get_dataset
from certifynet.denoise import (DENOISER_PRESETS, classification_loss, denoiser_config, freeze, get_denoiser,
                                l1_loss, mse_loss, stability_loss)
from certifynet.denoise.checkpoint import load_denoiser, save_denoiser
from certifynet.errors import CertifyNetError
from certifynet.models import load_checkpoint
from certifynet.paths import check_output_folder, default_path
from certifynet.progress import progress as progress_bar
from certifynet.records import RowLog
from certifynet.sampling import input_generator, resolve_device

CHECKPOINT_NAME, LOG_NAME = "denoiser.pth", "log.csv"
LOG_COLUMNS = ["epoch", "lr", "loss", "psnr", "denoised_acc", "seconds"]
_SHUFFLE, _NOISE, _EVAL = 0, 1, 2  # generator streams, seeded by (seed, epoch, stream)

OBJECTIVES = {
    "mse": lambda out, x, y, f: mse_loss(out, x),
    "l1": lambda out, x, y, f: l1_loss(out, x),
    "stability": lambda out, x, y, f: stability_loss(f, out, x),
    "classification": lambda out, x, y, f: classification_loss(f, out, y),
}
NEEDS_CLASSIFIER = ("stability", "classification")
SIGMA_KEYS = ("sigma", "sigmas", "sigma_range")


@dataclass
class TrainOptions:
    """Every option of a denoiser run; JSON keys and CLI flags share these names (`lr_gamma` ↔ `--lr-gamma`)."""
    task: str | None = None                  # free run name (KAIR's "task")
    dataset: str = "mnist5k"
    data_dir: str | None = None              # None: <project>/data
    arch: str = "drunet_small"               # a DENOISER_PRESETS name
    objective: str = "mse"
    classifier: str | None = None            # checkpoint of F (frozen); needed by stability/classification
    sigma: float | None = None               # one σ for every sample
    sigmas: list | None = None               # or: one of these per sample, uniformly
    sigma_range: list | None = None          # or: σ ~ U[lo, hi] per sample
    epochs: int = 10
    batch: int = 64
    lr: float = 1e-3
    lr_milestones: list = field(default_factory=list)
    lr_gamma: float = 0.1
    outdir: str | None = None                # None: <project>/results/denoiser
    resume: bool | str = False               # True: outdir/denoiser.pth; a path: that checkpoint
    pretrained_denoiser: str | None = None   # initial weights (e.g. an MSE denoiser before Stab fine-tuning)
    train_subset: int | None = None          # first n training images
    eval_subset: int | None = None           # first n test images for psnr / denoised_acc
    eval_batch: int = 500
    seed: int = 0
    device: str = "auto"


# (kind, help) per option; kinds: str int float bool floats ints resume.
OPTION_SPECS = {
    "task": ("str", "run name, stored in the checkpoint"),
    "dataset": ("str", "dataset (mnist5k, mnist, cifar10, imagenet)"),
    "data_dir": ("str", "dataset folder (default <project>/data)"),
    "arch": ("str", f"denoiser preset: {', '.join(DENOISER_PRESETS)}"),
    "objective": ("str", f"training loss: {', '.join(OBJECTIVES)}"),
    "classifier": ("str", "classifier checkpoint F (frozen); required by stability/classification"),
    "sigma": ("float", "training noise σ (pixel units in [0,1])"),
    "sigmas": ("floats", "comma list of σ; each sample draws one"),
    "sigma_range": ("floats", "lo,hi: σ ~ U[lo, hi] per sample"),
    "epochs": ("int", "total epochs (a resumed run continues up to this)"),
    "batch": ("int", "training batch size"),
    "lr": ("float", "Adam learning rate"),
    "lr_milestones": ("ints", "comma list of epochs at which lr *= lr_gamma"),
    "lr_gamma": ("float", "MultiStepLR factor"),
    "outdir": ("str", f"output folder ({CHECKPOINT_NAME}, {LOG_NAME}; default <project>/results/denoiser)"),
    "resume": ("resume", f"continue from OUTDIR/{CHECKPOINT_NAME} (or from the given checkpoint)"),
    "pretrained_denoiser": ("str", "initial denoiser weights (e.g. MSE-trained, for Stab fine-tuning)"),
    "train_subset": ("int", "use the first n training images"),
    "eval_subset": ("int", "evaluate on the first n test images"),
    "eval_batch": ("int", "evaluation batch size"),
    "seed": ("int", "seed of init, shuffling and noise"),
    "device": ("str", "auto, cpu, cuda, cuda:1, ..."),
}
CHOICES = {"arch": tuple(DENOISER_PRESETS), "objective": tuple(OBJECTIVES)}


# ---------------------------------------------------------------- options
def _number_list(value, kind, where):
    cast = int if kind == "ints" else float
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if not isinstance(value, (list, tuple)):
        raise CertifyNetError(f"{where}: expected a list or 'a,b,...', got {value!r}")
    try:
        out = [cast(v) for v in value if not isinstance(v, bool)]
    except (TypeError, ValueError):
        raise CertifyNetError(f"{where}: expected numbers, got {value!r}") from None
    if len(out) != len(value) or (kind == "ints" and any(isinstance(v, float) and v != int(v) for v in value)):
        raise CertifyNetError(f"{where}: expected {'integers' if kind == 'ints' else 'numbers'}, got {value!r}")
    return out


def coerce_option(name: str, value, where: str | None = None):
    """Check/convert one option value (a JSON value or a CLI string) to its type; None stays None.
    Errors name the option as `<where> 'name'`, or as the flag `--name` when `where` is None."""
    if name not in OPTION_SPECS:
        raise CertifyNetError(f"{where or 'option'}: unknown option '{name}'")
    kind = OPTION_SPECS[name][0]
    where = f"--{name.replace('_', '-')}" if where is None else f"{where} '{name}'"
    if value is None:
        return [] if name == "lr_milestones" else None
    if kind in ("floats", "ints"):
        return _number_list(value, kind, where)
    if kind == "resume":
        if isinstance(value, (bool, str)):
            return value
        raise CertifyNetError(f"{where}: expected true/false or a checkpoint path, got {value!r}")
    if kind == "str":
        if not isinstance(value, str):
            raise CertifyNetError(f"{where}: expected a string, got {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            raise CertifyNetError(f"{where}: {value!r} is not one of {', '.join(CHOICES[name])}")
        return value
    cast = int if kind == "int" else float
    if isinstance(value, bool) or (isinstance(value, float) and kind == "int" and value != int(value)):
        raise CertifyNetError(f"{where}: expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise CertifyNetError(f"{where}: expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}") from None


def read_options_file(path: str) -> dict:
    """KAIR-style JSON options → {name: value}. Lines starting with `//` are comments, keys starting with `_`
    are ignored; an unknown key or invalid JSON (with its line number) is a one-line error."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"options file '{path}' not found")
    with open(path, encoding="utf-8") as f:
        lines = ["" if ln.lstrip().startswith("//") else ln for ln in f.read().splitlines()]
    try:
        data = json.loads("\n".join(lines))
    except json.JSONDecodeError as e:
        raise CertifyNetError(f"options file '{path}' is not valid JSON: {e.msg} at line {e.lineno}, "
                              f"column {e.colno}") from None
    if not isinstance(data, dict):
        raise CertifyNetError(f"options file '{path}' must hold a JSON object {{...}}")
    unknown = [k for k in data if k not in OPTION_SPECS and not k.startswith("_")]
    if unknown:
        raise CertifyNetError(f"options file '{path}': unknown key '{unknown[0]}' "
                              f"(known: {', '.join(OPTION_SPECS)})")
    return {k: coerce_option(k, v, f"options file '{path}':") for k, v in data.items() if not k.startswith("_")}


def resolve_options(file_opts: dict | None = None, cli_opts: dict | None = None) -> TrainOptions:
    """defaults < file < CLI. A σ flag on the CLI replaces every σ key of the file (sigma/sigmas/sigma_range)."""
    file_opts, cli_opts = dict(file_opts or {}), dict(cli_opts or {})
    if any(k in cli_opts for k in SIGMA_KEYS):
        for k in SIGMA_KEYS:
            file_opts.pop(k, None)
    return TrainOptions(**{**file_opts, **cli_opts})


def sigma_spec(opts: TrainOptions) -> dict:
    """The training σ as {"mode": "fixed"|"choice"|"uniform", "values": [...]} (stored in the checkpoint)."""
    given = [k for k in SIGMA_KEYS if getattr(opts, k) not in (None, [])]
    if len(given) != 1:
        raise CertifyNetError("set the training noise with exactly one of --sigma, --sigmas, --sigma-range"
                              + (f" (got {', '.join(given)})" if given else ""))
    if opts.sigma is not None:
        spec = {"mode": "fixed", "values": [float(opts.sigma)]}
    elif opts.sigmas:
        spec = {"mode": "choice", "values": [float(s) for s in opts.sigmas]}
    else:
        if len(opts.sigma_range) != 2 or not 0 <= opts.sigma_range[0] < opts.sigma_range[1]:
            raise CertifyNetError(f"--sigma-range must be lo,hi with 0 <= lo < hi, got {opts.sigma_range}")
        return {"mode": "uniform", "values": [float(v) for v in opts.sigma_range]}
    if not all(0 < s < math.inf for s in spec["values"]):
        raise CertifyNetError(f"training σ must be > 0, got {spec['values']}")
    return spec


def eval_sigma(spec: dict) -> float:
    """σ for psnr/denoised_acc: the fixed σ, the middle of the sorted list, or (lo + hi)/2."""
    v = sorted(spec["values"])
    return (v[0] + v[1]) / 2 if spec["mode"] == "uniform" else v[len(v) // 2]


def draw_sigmas(spec: dict, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """Per-sample σ [n]: constant, uniform over the list, or U[lo, hi]."""
    v = torch.tensor(spec["values"], dtype=torch.float32, device=device)
    if spec["mode"] == "fixed":
        return v.expand(n)
    if spec["mode"] == "choice":
        return v[torch.randint(len(v), (n,), generator=generator, device=device)]
    return v[0] + (v[1] - v[0]) * torch.rand(n, generator=generator, device=device)


def check_options(opts: TrainOptions) -> dict:
    """Validate cross-field constraints; returns the σ spec."""
    for name in ("epochs", "batch", "eval_batch"):
        if getattr(opts, name) < 1:
            raise CertifyNetError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    for name in ("train_subset", "eval_subset"):
        if getattr(opts, name) is not None and getattr(opts, name) < 1:
            raise CertifyNetError(f"--{name.replace('_', '-')} must be >= 1")
    if not opts.lr > 0 or not opts.lr_gamma > 0:
        raise CertifyNetError(f"--lr and --lr-gamma must be > 0, got {opts.lr}, {opts.lr_gamma}")
    if opts.objective in NEEDS_CLASSIFIER and not opts.classifier:
        raise CertifyNetError(f"--objective {opts.objective} needs --classifier CKPT (the frozen classifier F)")
    for name in ("classifier", "pretrained_denoiser"):
        path = getattr(opts, name)
        if path and not os.path.isfile(path):
            raise CertifyNetError(f"--{name.replace('_', '-')} '{path}' not found")
    return sigma_spec(opts)


# ---------------------------------------------------------------- pieces of the loop
def _first(data, n):
    return data if n is None or n >= len(data) else Subset(data, range(n))


def noisy_batch(x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x̃ = x + σ_b·z, z ~ N(0, I), σ_b per sample."""
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + sigmas.view(-1, *([1] * (x.dim() - 1))).to(x.dtype) * z


@torch.no_grad()
def evaluate_denoiser(model, classifier, data, sigma: float, batch: int = 500, device="cpu", seed: int = 0):
    """(psnr, denoised_acc) on `data` under N(0, σ²I) noise drawn from a fixed seed.

    psnr = mean_i 10·log10(1 / mean((clamp(x̂_i, 0, 1) − x_i)²)); denoised_acc = mean_i [argmax F(x̂_i) = y_i]
    with x̂ = D(x + δ, σ) unclamped, as F sees it in `DenoisedClassifier` (NaN without a classifier).
    """
    was_training = model.training
    model.eval()
    gen = input_generator(seed, 0, _EVAL, device)
    psnr_sum, correct, n = 0.0, 0, 0
    for x, y in DataLoader(data, batch_size=batch):
        x, y = x.to(device), y.to(device)
        out = model(noisy_batch(x, torch.full((len(x),), float(sigma), device=device), gen), float(sigma))
        mse = (out.clamp(0, 1) - x).square().flatten(1).mean(1).clamp_min(1e-10)
        psnr_sum += float((-10 * torch.log10(mse)).sum())
        if classifier is not None:
            correct += int((classifier(out).argmax(1) == y).sum())
        n += len(x)
    model.train(was_training)
    return psnr_sum / n, (correct / n if classifier is not None else float("nan"))


def train_epoch(model, classifier, loader, optimizer, objective: str, spec: dict, generator,
                device, desc: str = "train", progress: bool = True) -> float:
    """One pass over `loader`; returns the sample-weighted mean loss."""
    model.train()
    loss_fn, total, n = OBJECTIVES[objective], 0.0, 0
    bar = progress_bar(len(loader), desc, "batch", enabled=progress, leave=False)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        sig = draw_sigmas(spec, len(x), generator, device)
        loss = loss_fn(model(noisy_batch(x, sig, generator), sig), x, y, classifier)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, n = total + float(loss.detach()) * len(x), n + len(x)
        bar.update(1)
        bar.set_postfix(loss=f"{total / n:.4f}")
    bar.close()
    return total / max(n, 1)


def _load_classifier(opts, device):
    if not opts.classifier:
        return None, {}
    ckpt = load_checkpoint(opts.classifier, dataset=opts.dataset)
    return freeze(ckpt.model.to(device)), {"classifier": os.path.abspath(opts.classifier),
                                           "classifier_sha256": ckpt.sha256}


def _build_model(opts, in_channels: int):
    torch.manual_seed(opts.seed)
    model = get_denoiser(opts.arch, in_channels)
    if opts.pretrained_denoiser:
        pre = load_denoiser(opts.pretrained_denoiser)
        if pre.config != denoiser_config(model):
            raise CertifyNetError(f"--pretrained-denoiser '{opts.pretrained_denoiser}' is {pre.config}, "
                                  f"but --arch {opts.arch} on {opts.dataset} builds {denoiser_config(model)}")
        model = pre.model
    return model


def _resume_path(opts, ckpt_path):
    if opts.resume is True:
        return ckpt_path if os.path.isfile(ckpt_path) else None
    return opts.resume or None


def train_denoiser(opts: TrainOptions, progress: bool = True) -> dict:
    """Run (or resume) training; returns {"model" (trained D), "checkpoint", "log", "history": [log rows],
    "start_epoch"}."""
    opts = dataclasses.replace(opts, outdir=opts.outdir or default_path("results/denoiser"),
                               data_dir=opts.data_dir or default_path("data"))
    spec = check_options(opts)
    check_output_folder(opts.outdir, "--outdir")
    device = resolve_device(opts.device)
    info = dataset_info(opts.dataset)
    train_set = _first(get_dataset(opts.dataset, "train", opts.data_dir), opts.train_subset)
    test_set = _first(get_dataset(opts.dataset, "test", opts.data_dir), opts.eval_subset)
    classifier, clf_meta = _load_classifier(opts, device)
    model = _build_model(opts, info.shape[0]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(opts.lr_milestones), gamma=opts.lr_gamma)

    ckpt_path, log_path = os.path.join(opts.outdir, CHECKPOINT_NAME), os.path.join(opts.outdir, LOG_NAME)
    start, resume_from = 0, _resume_path(opts, ckpt_path)
    if resume_from:
        raw = load_denoiser(resume_from).raw
        if raw.get("config") != denoiser_config(model) or raw.get("optimizer") is None:
            raise CertifyNetError(f"cannot resume from '{resume_from}': it is {raw.get('config')} "
                                  f"(optimizer state {'missing' if raw.get('optimizer') is None else 'present'}), "
                                  f"this run builds {denoiser_config(model)}")
        model.load_state_dict(raw["state_dict"])
        optimizer.load_state_dict(raw["optimizer"])
        if raw.get("scheduler"):
            scheduler.load_state_dict(raw["scheduler"])
        start = int(raw.get("epoch") or 0)
    elif os.path.isfile(ckpt_path):
        raise CertifyNetError(f"'{ckpt_path}' exists; pass --resume to continue it or choose another --outdir")

    e_sigma = eval_sigma(spec)
    meta = {"kind": "denoiser_train_log", "task": opts.task, "dataset": opts.dataset,
            "denoiser": denoiser_config(model), "objective": opts.objective, "sigma": spec, "eval_sigma": e_sigma,
            "seed": opts.seed, "train_subset": opts.train_subset, "eval_subset": opts.eval_subset,
            "pretrained_denoiser": opts.pretrained_denoiser, **clf_meta}
    history = []
    with RowLog(log_path, LOG_COLUMNS, meta, sep=",") as log:
        if start >= opts.epochs:
            print(f"{ckpt_path} already has {start} of {opts.epochs} epochs; nothing to do", file=sys.stderr)
        for epoch in range(start + 1, opts.epochs + 1):
            t0 = time.time()
            loader = DataLoader(train_set, batch_size=opts.batch, shuffle=True,
                                generator=input_generator(opts.seed, epoch, _SHUFFLE, "cpu"))
            lr = optimizer.param_groups[0]["lr"]
            loss = train_epoch(model, classifier, loader, optimizer, opts.objective, spec,
                               input_generator(opts.seed, epoch, _NOISE, device), device,
                               f"epoch {epoch}/{opts.epochs}", progress)
            scheduler.step()
            psnr, acc = evaluate_denoiser(model, classifier, test_set, e_sigma, opts.eval_batch, device, opts.seed)
            save_denoiser(ckpt_path, model, sigma=spec, objective=opts.objective, epoch=epoch,
                          optimizer=optimizer, scheduler=scheduler, args=dataclasses.asdict(opts))
            row = {"idx": epoch, "epoch": epoch, "lr": lr, "loss": round(loss, 6), "psnr": round(psnr, 3),
                   "denoised_acc": round(acc, 4) if acc == acc else acc, "seconds": round(time.time() - t0, 2)}
            log.write(row)
            history.append(row)
            if progress:
                print(f"epoch {epoch}/{opts.epochs}: loss {loss:.4f}  psnr {psnr:.2f} dB  denoised_acc "
                      f"{acc:.4f}  ({row['seconds']:.1f}s)", file=sys.stderr)
    return {"model": model.eval(), "checkpoint": ckpt_path, "log": log_path, "history": history, "start_epoch": start}


__all__ = ["TrainOptions", "OPTION_SPECS", "OBJECTIVES", "read_options_file", "resolve_options", "sigma_spec",
           "eval_sigma", "draw_sigmas", "check_options", "noisy_batch", "evaluate_denoiser", "train_epoch",
           "train_denoiser"]

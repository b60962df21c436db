"""Training loop for denoisers (denoised smoothing, Salman et al. 2020), with KAIR-style JSON options.

One step, for a batch (x, y) of clean images in [0, 1]:
    σ_b ~ the σ spec (fixed σ, one of a list, or U[lo, hi]), one per sample;  x̃ = x + σ_b·z, z ~ N(0, I);
    x̂ = D(x̃, σ_b)  (the σ map carries σ_b);  loss = objective(x̂, x, y; F), F frozen.
Objectives: mse, l1 (need no F), stability = CE(F(x̂), argmax F(x)), classification = CE(F(x̂), y).
Adam + MultiStepLR (milestones in epochs). After every epoch: outdir/denoiser.pth (atomic, with optimizer and
scheduler for `resume`), then one row of outdir/log.csv (flushed; sidecar log.csv.meta.json):
epoch, lr, loss (mean training loss), psnr and denoised_acc on the test split at the evaluation σ
(the training σ, the middle of the list, or the middle of the range), seconds.

Outputs go through `records.guard`, checked before any data is loaded: a log.csv that is not ours, or is the
log of another run, is refused untouched; a resume with other hyper-parameters (`HYPER_PARAMETERS`) is
refused naming them unless `force`, which records them in the sidecar's `changes`. The folder's checkpoint is
held (`WriterLock`) while the run writes; the log is rewritten atomically to the epochs of the checkpoint.

Options come from `TrainOptions` defaults < a JSON options file < command-line flags (`denoise.options`,
re-exported here).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from certifynet.data import dataset_info, get_dataset
from certifynet.denoise import denoiser_config, freeze, get_denoiser
from certifynet.denoise.checkpoint import load_denoiser, save_denoiser
from certifynet.denoise.options import (  # noqa: F401
    CHECKPOINT_NAME,
    CHOICES,
    LOG_NAME,
    OBJECTIVES,
    OPTION_SPECS,
    TrainOptions,
    check_options,
    coerce_option,
    eval_sigma,
    read_options_file,
    resolve_options,
    sigma_spec,
)
from certifynet.errors import CertifyNetError
from certifynet.models import load_checkpoint
from certifynet.paths import check_output_folder, default_path
from certifynet.progress import progress as progress_bar
from certifynet.records import RowLog, WriterLock
from certifynet.records.guard import check_run_log, resume_changes
from certifynet.records.runlog import rewrite_log
from certifynet.sampling import input_generator, resolve_device

log = logging.getLogger(__name__)

LOG_COLUMNS = ["epoch", "lr", "loss", "psnr", "denoised_acc", "seconds"]
# Options a resumed run must keep (`force` allows a change); the run's identity (dataset, arch, objective, σ,
# classifier, evaluation subset) is its log's sidecar and cannot change.
HYPER_PARAMETERS = ("lr", "lr_milestones", "lr_gamma", "batch", "seed", "train_subset")
# Sidecar fields that may differ between a run and its resumption.
LOG_VOLATILE = {"created", "version", "command", "columns", "changes"}
_SHUFFLE, _NOISE, _EVAL = 0, 1, 2  # generator streams, seeded by (seed, epoch, stream)

# ---------------------------------------------------------------- pieces of the loop
def draw_sigmas(spec: dict, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """Per-sample σ [n]: constant, uniform over the list, or U[lo, hi]."""
    v = torch.tensor(spec["values"], dtype=torch.float32, device=device)
    if spec["mode"] == "fixed":
        return v.expand(n)
    if spec["mode"] == "choice":
        return v[torch.randint(len(v), (n,), generator=generator, device=device)]
    return v[0] + (v[1] - v[0]) * torch.rand(n, generator=generator, device=device)


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
            raise CertifyNetError(f"{{pretrained_denoiser}} '{opts.pretrained_denoiser}' is {pre.config}, "
                                  f"but {{arch}} {opts.arch} on {opts.dataset} builds {denoiser_config(model)}",
                                  "pretrained_denoiser", "arch")
        model = pre.model
    return model


def _resume_path(opts, ckpt_path):
    if opts.resume is True:
        return ckpt_path if os.path.isfile(ckpt_path) else None
    return opts.resume or None


@dataclass
class _Run:
    """What one denoiser run trains and evaluates with (built by `_set_up`)."""
    opts: TrainOptions
    spec: dict                       # the training σ (`sigma_spec`)
    device: torch.device
    train_set: Dataset
    test_set: Dataset
    classifier: nn.Module | None     # F, frozen
    classifier_meta: dict
    model: nn.Module                 # D
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.opts.outdir, CHECKPOINT_NAME)


def _set_up(opts: TrainOptions, spec: dict) -> _Run:
    """Build data, F, D and the optimiser (nothing is written)."""
    device = resolve_device(opts.device)
    info = dataset_info(opts.dataset)
    train_set = _first(get_dataset(opts.dataset, "train", opts.data_dir), opts.train_subset)
    test_set = _first(get_dataset(opts.dataset, "test", opts.data_dir), opts.eval_subset)
    classifier, clf_meta = _load_classifier(opts, device)
    model = _build_model(opts, info.shape[0]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(opts.lr_milestones),
                                                     gamma=opts.lr_gamma)
    return _Run(opts, spec, device, train_set, test_set, classifier, clf_meta, model, optimizer, scheduler)


def _resume_changes(raw: dict, resume_from: str, opts: TrainOptions) -> list[dict]:
    """The hyper-parameters that differ from the checkpoint's `args`: refused naming them unless `force`."""
    args = raw.get("args") if isinstance(raw.get("args"), dict) else {}
    return resume_changes(args, dataclasses.asdict(opts), HYPER_PARAMETERS, force=opts.force, path=resume_from,
                          recorded_in="the log's sidecar", epoch=int(raw.get("epoch") or 0))


def _resume(run: _Run, resume_from: str | None, raw: dict | None) -> int:
    """Epochs already done: restore D, Adam and the schedule from the checkpoint to resume (0 when fresh)."""
    if not resume_from:
        return 0
    if raw.get("config") != denoiser_config(run.model) or raw.get("optimizer") is None:
        raise CertifyNetError(f"cannot resume from '{resume_from}': it is {raw.get('config')} "
                              f"(optimizer state {'missing' if raw.get('optimizer') is None else 'present'}), "
                              f"this run builds {denoiser_config(run.model)}")
    run.model.load_state_dict(raw["state_dict"])
    try:
        run.optimizer.load_state_dict(raw["optimizer"])
        if raw.get("scheduler"):
            run.scheduler.load_state_dict(raw["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CertifyNetError(f"{{resume}} '{resume_from}': optimizer/scheduler state does not fit "
                              f"({str(e).splitlines()[0][:120]})", "resume") from e
    return int(raw.get("epoch") or 0)


def _settings_meta(opts: TrainOptions, spec: dict) -> dict:
    """The fields of the log's sidecar that the options alone fix (known before anything is loaded)."""
    return {"kind": "denoiser_train_log", "task": opts.task, "dataset": opts.dataset, "objective": opts.objective,
            "sigma": spec, "eval_sigma": eval_sigma(spec), "seed": opts.seed, "train_subset": opts.train_subset,
            "eval_subset": opts.eval_subset, "pretrained_denoiser": opts.pretrained_denoiser}


def _log_meta(run: _Run) -> dict:
    return {**_settings_meta(run.opts, run.spec), "denoiser": denoiser_config(run.model), **run.classifier_meta}


def _train_and_save_epoch(run: _Run, epoch: int, progress: bool) -> dict:
    """Train epoch `epoch` (counted from 1), step the schedule, evaluate, save the checkpoint; the log row
    (its line is logged with `progress`)."""
    opts, device = run.opts, run.device
    t0 = time.time()
    loader = DataLoader(run.train_set, batch_size=opts.batch, shuffle=True,
                        generator=input_generator(opts.seed, epoch, _SHUFFLE, "cpu"))
    lr = run.optimizer.param_groups[0]["lr"]
    loss = train_epoch(run.model, run.classifier, loader, run.optimizer, opts.objective, run.spec,
                       input_generator(opts.seed, epoch, _NOISE, device), device, f"epoch {epoch}/{opts.epochs}",
                       progress)
    run.scheduler.step()
    psnr, acc = evaluate_denoiser(run.model, run.classifier, run.test_set, eval_sigma(run.spec), opts.eval_batch,
                                  device, opts.seed)
    save_denoiser(run.ckpt_path, run.model, sigma=run.spec, objective=opts.objective, epoch=epoch,
                  optimizer=run.optimizer, scheduler=run.scheduler, args=dataclasses.asdict(opts))
    row = {"idx": epoch, "epoch": epoch, "lr": lr, "loss": round(loss, 6), "psnr": round(psnr, 3),
           "denoised_acc": round(acc, 4) if acc == acc else acc, "seconds": round(time.time() - t0, 2)}
    if progress:
        log.info(f"epoch {epoch}/{opts.epochs}: loss {loss:.4f}  psnr {psnr:.2f} dB  denoised_acc "
                 f"{acc:.4f}  ({row['seconds']:.1f}s)")
    return row


def _check_outputs(opts: TrainOptions, meta: dict, resumed: bool, forced=()) -> dict | None:
    """The checkpoint is replaced only by a resume; the log must be ours and of this run (`records.guard`)."""
    ckpt_path = os.path.join(opts.outdir, CHECKPOINT_NAME)
    if not resumed and os.path.isfile(ckpt_path):
        raise CertifyNetError(f"'{ckpt_path}' exists; pass {{resume}} to continue it or choose another "
                              f"{{outdir}}", "resume", "outdir")
    return check_run_log(os.path.join(opts.outdir, LOG_NAME), meta, ignore=LOG_VOLATILE | set(forced),
                         resumed=resumed)


def _start(opts: TrainOptions) -> tuple[dict, str | None, dict | None, list]:
    """Every check before anything is loaded or written: the options, the output folder and its files, and a
    resume's hyper-parameters. (σ spec, checkpoint to resume, its raw dict, forced changes)."""
    spec = check_options(opts)
    check_output_folder(opts.outdir, name="outdir")
    resume_from = _resume_path(opts, os.path.join(opts.outdir, CHECKPOINT_NAME))
    raw = load_denoiser(resume_from).raw if resume_from else None
    changes = _resume_changes(raw, resume_from, opts) if raw is not None else []
    _check_outputs(opts, _settings_meta(opts, spec), bool(resume_from), [c["field"] for c in changes])
    return spec, resume_from, raw, changes


def train_denoiser(opts: TrainOptions, progress: bool = True) -> dict:
    """Run (or resume) training; returns {"model" (trained D), "checkpoint", "log", "history": [log rows],
    "start_epoch"}. With `progress`, each epoch's line is logged (INFO) besides the progress bar."""
    opts = dataclasses.replace(opts, outdir=opts.outdir or default_path("results/denoiser"),
                               data_dir=opts.data_dir or default_path("data"))
    spec, resume_from, raw, changes = _start(opts)
    run = _set_up(opts, spec)
    start = _resume(run, resume_from, raw)
    log_path, history = os.path.join(opts.outdir, LOG_NAME), []
    os.makedirs(opts.outdir, exist_ok=True)
    lock = WriterLock(run.ckpt_path, covers=[(log_path, False)]).acquire(opts.outdir)  # one run per folder
    try:
        meta = _log_meta(run)
        old = _check_outputs(opts, meta, bool(resume_from), [c["field"] for c in changes])  # under the lock
        history_of_changes = list((old or {}).get("changes") or []) if resume_from else []
        if history_of_changes or changes:
            meta["changes"] = history_of_changes + changes
        rewrite_log(log_path, LOG_COLUMNS, meta, (lambda epoch: epoch <= start) if resume_from else None)
        with RowLog(log_path, LOG_COLUMNS, meta, sep=",") as rows:
            if start >= opts.epochs:
                log.info(f"{run.ckpt_path} already has {start} of {opts.epochs} epochs; nothing to do")
            for epoch in range(start + 1, opts.epochs + 1):
                row = _train_and_save_epoch(run, epoch, progress)
                rows.write(row)
                history.append(row)
    finally:
        lock.release()
    return {"model": run.model.eval(), "checkpoint": run.ckpt_path, "log": log_path, "history": history,
            "start_epoch": start}


__all__ = ["TrainOptions", "OPTION_SPECS", "OBJECTIVES", "read_options_file", "resolve_options", "sigma_spec",
           "eval_sigma", "draw_sigmas", "check_options", "noisy_batch", "evaluate_denoiser", "train_epoch",
           "train_denoiser"]

"""The training loop for smoothing base classifiers: Gaussian, consistency, SmoothMix and SmoothAdv, DDP-aware.

`train` runs four phases: set-up (`_set_up`: settings, model or resume, data, optimiser), the epochs
(`_run_epochs`), one row and one checkpoint per epoch (`_record_epoch`), and the finish (`RunFiles.close`).
One epoch (index t, counted from 0):

- **Noise.** δ is drawn in [0,1] pixel space, no clipping (`data.NoiseSource`): N(0, σ²I), or the generalized
  Gaussian with k_t = ``k_at(t, k, k_warmup)`` when ``k`` is given (t = the epoch, or the global loader step
  for ImageNet / ``k_warmup_unit='step'``); k_t = 0 is Gaussian. Noise comes from a per-rank generator
  reseeded at each epoch from (seed, rank, epoch), and the training order from
  ``DistributedSampler(seed).set_epoch(t)`` (also in one process), so a resumed run replays the uninterrupted one.
- **Batching and losses** (`loss_spec`): each loader batch of B images is cut into m chunks of B//m images,
  each one optimizer step on its m noisy copies, so an epoch makes m·N/B steps; the loss is ``LossSpec``'s.
- **Optimiser.** SGD (momentum, weight decay) and StepLR(step_size, γ), stepped once per epoch.
- **Eval.** Accuracy of f(x+δ) on the test split (one draw per image, eval mode) with the k_t of that moment.
- **Outputs** (rank 0 only): ``log.csv`` (epoch, lr, k, train_loss, train_acc, test_acc_noisy, seconds; one
  row per epoch, appended and flushed) with ``log.meta.json`` (`epoch_log`), and ``checkpoint.pth``, rewritten
  atomically after every epoch with optimizer and scheduler state (`model.save_training_checkpoint`).

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DDP, ``batch`` is the global batch (each of the
G ranks loads batch/G images), the train split is sharded by ``DistributedSampler`` and the test split by
rank, and sums are all-reduced before logging.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError, flag
from certifynet.progress import progress
from certifynet.training import ddp
from certifynet.training.config import CHECKPOINT_NAME, TrainConfig, prepare_config, warmup_unit
from certifynet.training.data import NoiseSource, load_datasets, make_loaders
from certifynet.training.epoch_log import RunFiles, check_run_files, format_row, log_meta, settings_meta
from certifynet.training.loss_spec import LossSpec, split_batch
from certifynet.training.model import (
    Optimiser,
    build_model,
    make_optimiser,
    model_normalization,
    resume_changes,
    resume_path,
    save_training_checkpoint,
)
from certifynet.training.schedule import k_at

if TYPE_CHECKING:
    from certifynet.models import LoadedCheckpoint

_TRAIN_NOISE, _EVAL_NOISE = 0, 1  # generator streams of rank_seed


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


# ---------------------------------------------------------------- one epoch
def _to(x, y, device):
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train_one_epoch(model, loader, optimizer, spec: LossSpec, noise: NoiseSource, epoch: int,
                    k_of_step: Callable[[int], int], device, progress=None, first_step: int = 0):
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


# ---------------------------------------------------------------- the run
@dataclass
class _Run:
    """What the phases of one training run share (built by `_set_up`)."""
    cfg: TrainConfig
    info: ddp.DistInfo
    model: nn.Module
    optimiser: Optimiser
    spec: LossSpec
    noise: NoiseSource
    eval_noise: NoiseSource
    train_loader: DataLoader
    sampler: DistributedSampler
    test_loader: DataLoader
    resume_ck: LoadedCheckpoint | None
    start_epoch: int
    meta: dict                                   # of log.meta.json
    changes: list = field(default_factory=list)  # hyper-parameters changed on resume with `force`
    summary: dict = field(default_factory=dict)  # what `train` returns

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.cfg.outdir, CHECKPOINT_NAME)

    def k_at(self, global_step: int, epoch: int) -> int:
        """k_t, with t the global step or the epoch (`warmup_unit`)."""
        return k_at(global_step if warmup_unit(self.cfg) == "step" else epoch, self.cfg.k, self.cfg.k_warmup)

    def save(self, epochs_done: int, global_step: int, k_now: int) -> None:
        save_training_checkpoint(self.cfg, self.model, self.optimiser, epochs_done, global_step, k_now,
                                 self.info.world_size)

    def say(self, text: str) -> None:
        """A line of the run's report on stdout (rank 0 only)."""
        if self.info.is_main:
            print(text, flush=True)  # noqa: T201 - train.py's report on stdout, unchanged (to move to the CLI)


def _on_rank0(info: ddp.DistInfo, check) -> None:
    """Run `check` on rank 0 (the files are rank 0's) and raise its refusal on every rank."""
    err = None
    if info.is_main:
        try:
            check()
        except CertifyNetError as e:
            err = (e.template, e.fields)
    err = ddp.broadcast_object(err)
    if err:
        raise CertifyNetError(err[0], **err[1])


def _set_up(cfg: TrainConfig, info: ddp.DistInfo) -> _Run:
    """Check the settings and the output folder, build (or resume) the model, load the data, make the
    optimiser: nothing is written."""
    cfg = prepare_config(cfg, info.world_size)
    # Rank 0's view of the files decides for every rank (a fast rank 0 may write before a slow rank looks).
    resume = ddp.broadcast_object(resume_path(cfg))
    ckpt_path = os.path.join(cfg.outdir, CHECKPOINT_NAME)
    ckpt_exists = ddp.broadcast_object(os.path.isfile(ckpt_path))
    if resume is None and not cfg.dry_run and not cfg.overwrite and ckpt_exists:
        raise CertifyNetError(f"'{ckpt_path}' already exists; pass {{resume}} auto to continue that run, "
                              f"{{overwrite}} to start over, or another {{outdir}}", "resume", "overwrite", "outdir")
    model, resume_ck, source = build_model(cfg, resume)
    changes = resume_changes(resume_ck, cfg) if resume_ck is not None else []
    if not cfg.dry_run:  # before any data is loaded: a log that is not ours, or of another run
        _on_rank0(info, lambda: check_run_files(cfg, settings_meta(cfg), resume_ck is not None,
                                                [c["field"] for c in changes]))
    normalization = model_normalization(model)
    train_set, test_set = load_datasets(cfg, info)
    train_loader, sampler, test_loader = make_loaders(train_set, test_set, cfg, info)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    model = ddp.wrap_model(model.to(info.device), info)
    optimiser, start_epoch = make_optimiser(cfg, model, resume_ck)
    dinfo = dataset_info(cfg.dataset)

    def noise(stream: int) -> NoiseSource:
        return NoiseSource(cfg.sigma, dinfo.dim, ddp.make_generator(info.device, ddp.rank_seed(cfg.seed, info.rank,
                                                                                               stream)))

    sizes = {"train_size": len(train_set), "test_size": len(test_set)}
    meta = log_meta(cfg, world_size=info.world_size, device=info.device, n_train=len(train_set),
                    n_test=len(test_set), source=source, normalization=normalization, start_epoch=start_epoch)
    summary = {"outdir": cfg.outdir, "checkpoint": ckpt_path, "method": cfg.method, "start_epoch": start_epoch,
               **sizes, "world_size": info.world_size, "init": source, "rows": []}
    return _Run(cfg, info, model, optimiser, LossSpec.from_config(cfg, dinfo.num_classes), noise(_TRAIN_NOISE),
                noise(_EVAL_NOISE), train_loader, sampler, test_loader, resume_ck, start_epoch, meta, changes, summary)


def _dry_run(run: _Run) -> dict:
    """One forward pass of the loss on the first batch; writes nothing."""
    cfg, spec, start = run.cfg, run.spec, run.start_epoch
    x, y = _to(*next(iter(run.train_loader)), run.info.device)
    chunks = split_batch(x, y, spec.m)
    if not chunks:
        raise CertifyNetError(f"the first batch holds {x.shape[0]} images, fewer than {{num_noise_vec}}={spec.m}",
                              "num_noise_vec")
    xc, yc = chunks[0]
    noise_fn = run.noise.fn(run.k_at(start * run.steps_per_epoch, start))
    loss = float(spec(run.model, xc, yc, noise_fn, start, run.noise.generator)[0].detach())
    n_params = sum(p.numel() for p in run.model.parameters())
    s = run.summary
    run.say(f"dry run ok: {cfg.arch} ({n_params:,} parameters) on {cfg.dataset} (train {s['train_size']}, "
            f"test {s['test_size']}), method {cfg.method}, σ={cfg.sigma:g}, k={cfg.k}, batch {cfg.batch} "
            f"on {run.info.world_size} process(es), device {run.info.device}, init {s['init']}, "
            f"first loss {loss:.4f}, outdir {cfg.outdir}")
    s.update(dry_run=True, loss=loss, parameters=n_params)
    return s


def _train_epoch(run: _Run, epoch: int) -> dict:
    """Train epoch `epoch` and evaluate; the log row, summed over the ranks."""
    t0 = time.time()
    cfg, info = run.cfg, run.info
    optimizer, scheduler = run.optimiser
    run.sampler.set_epoch(epoch)
    run.noise.generator.manual_seed(ddp.rank_seed(cfg.seed, info.rank, _TRAIN_NOISE, epoch))
    run.eval_noise.generator.manual_seed(ddp.rank_seed(cfg.seed, info.rank, _EVAL_NOISE, epoch))
    lr = optimizer.param_groups[0]["lr"]
    bar = _progress(run.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", info.is_main and cfg.progress)
    try:
        sums, k_now = train_one_epoch(run.model, run.train_loader, optimizer, run.spec, run.noise, epoch,
                                      lambda s: run.k_at(s, epoch), info.device, bar, epoch * run.steps_per_epoch)
    finally:
        if bar is not None:
            bar.close()
    scheduler.step()
    acc = evaluate_noisy(run.model, run.test_loader, run.eval_noise.fn(k_now), info.device)
    totals = ddp.all_reduce_sum(torch.cat([sums, acc])).tolist()
    return {"epoch": epoch, "lr": float(lr), "k": int(k_now),
            "train_loss": totals[0] / max(totals[1], 1), "train_acc": totals[2] / max(totals[3], 1),
            "test_acc_noisy": totals[4] / max(totals[5], 1), "seconds": round(time.time() - t0, 2)}


def _record_epoch(run: _Run, files: RunFiles | None, row: dict) -> None:
    """Log and print the epoch's row, stop on a diverged loss, then save the checkpoint (rank 0)."""
    epoch = row["epoch"]
    run.summary["rows"].append(row)
    if files is not None:
        files.log.write(format_row(row))
    run.say(f"epoch {epoch + 1}/{run.cfg.epochs}  lr {row['lr']:.4g}  k {row['k']}  loss {row['train_loss']:.4f}  "
            f"train_acc {row['train_acc']:.4f}  test_acc_noisy {row['test_acc_noisy']:.4f}  {row['seconds']:.1f}s")
    if not math.isfinite(row["train_loss"]):
        raise CertifyNetError(f"training diverged at epoch {epoch} (loss {row['train_loss']}); "
                              f"the last good checkpoint is kept; try a lower {{lr}}", "lr")
    if run.info.is_main:
        run.save(epoch + 1, (epoch + 1) * run.steps_per_epoch, row["k"])


def _run_epochs(run: _Run, files: RunFiles | None) -> None:
    """Epochs start_epoch .. epochs-1 (``epochs`` = 0 on a fresh run saves the untrained model)."""
    cfg = run.cfg
    if cfg.epochs == 0 and run.resume_ck is None:
        if run.info.is_main:
            run.save(0, 0, run.k_at(0, 0))
        run.say(f"{flag('epochs')} 0: saved the untrained model to {run.ckpt_path}")
    elif run.start_epoch >= cfg.epochs:
        run.say(f"nothing to do: '{run.resume_ck.path}' has {run.start_epoch} epochs done, "
                f"{flag('epochs')} {cfg.epochs}")
    for epoch in range(run.start_epoch, cfg.epochs):
        _record_epoch(run, files, _train_epoch(run, epoch))
    ddp.barrier()


def train(cfg: TrainConfig, info: ddp.DistInfo | None = None) -> dict:
    """Run (or dry-run) training as configured; returns a summary dict (outdir, last log row, ...).

    `info` describes the process (``ddp.init_distributed()``); None = one process on ``cfg.device``.
    """
    if info is None:
        info = ddp.DistInfo(device=ddp.resolve_device(cfg.device))
    run = _set_up(cfg, info)
    if run.cfg.dry_run:
        return _dry_run(run)
    files = RunFiles.open(run.cfg, run.meta, run.start_epoch, run.resume_ck is not None, run.changes) \
        if info.is_main else None
    try:
        _run_epochs(run, files)
    except BaseException:
        if files is not None:  # a failed fresh run that wrote nothing leaves no header-only log behind
            files.close(discard=run.resume_ck is None and not run.summary["rows"]
                        and not os.path.isfile(run.ckpt_path))
        raise
    if files is not None:
        files.close()
    run.summary["last"] = run.summary["rows"][-1] if run.summary["rows"] else None
    return run.summary


def run_training(cfg: TrainConfig) -> dict:
    """Entry point for the CLIs: join the torchrun process group if there is one, train, clean up."""
    info = ddp.init_distributed(cfg.device)
    try:
        return train(cfg, info)
    except BaseException as e:
        ddp.release(e)  # no DDP module may outlive the group (a normal return frees it with train's frame)
        raise
    finally:
        ddp.cleanup()

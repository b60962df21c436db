"""A training run's files on rank 0: ``log.csv`` (one row per epoch, written by ``records.RowLog``) with its
sidecar ``log.meta.json``, and the folder's writer lock (one training run per folder).

- **Columns.** `LOG_COLUMNS`; numbers as ``%.6g`` (`format_row`), NaN as ``nan``.
- **Whose files** (`check_run_files`, before anything is loaded and again under the lock): a ``log.csv``
  without its ``log.meta.json``, or a sidecar of another kind, is not ours and is refused untouched; a log of
  ours made with other settings (every field but `TRAIN_VOLATILE`) is refused naming the field, unless a fresh
  run passes ``overwrite``.
- **Fresh run.** Both files are written anew (an earlier run's of the same settings are replaced, or any of
  ours with ``overwrite``). A fresh run that fails before its first row or checkpoint leaves no log behind,
  nor the folder it created (`RunFiles.close`).
- **Resumed run.** The rows of epochs before the checkpoint's are kept (a row written after the last
  checkpoint is dropped, since that epoch is trained again) and the run appends after them; the sidecar
  describes the resumed run (its ``start_epoch`` and ``init``, and in ``changes`` every hyper-parameter changed
  with ``force``). Sidecar and log are each replaced atomically (`records.guard.rewrite_log`): a kill at any
  moment loses no kept row.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

from certifynet.records import RowLog, WriterLock
from certifynet.records.guard import check_run_log
from certifynet.records.runlog import rewrite_log
from certifynet.training.config import CHECKPOINT_NAME, TrainConfig, warmup_unit

LOG_COLUMNS = ["epoch", "lr", "k", "train_loss", "train_acc", "test_acc_noisy", "seconds"]
LOG_NAME = "log.csv"
META_NAME = "log.meta.json"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def format_row(row: dict) -> dict[str, str]:
    """A log row as written: floats with 6 significant digits."""
    return {c: _fmt(row[c]) for c in LOG_COLUMNS}


def settings_meta(cfg: TrainConfig) -> dict:
    """The fields of ``log.meta.json`` that the settings alone fix (known before anything is loaded)."""
    return {"kind": "train_log", "dataset": cfg.dataset, "arch": cfg.arch, "sigma": cfg.sigma, "k": cfg.k,
            "k_warmup": cfg.k_warmup, "k_warmup_unit": warmup_unit(cfg), "method": cfg.method, "seed": cfg.seed,
            "lr": cfg.lr, "lr_step_size": cfg.lr_step_size, "gamma": cfg.gamma, "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay, "epochs": cfg.epochs, "batch": cfg.batch,
            "num_noise_vec": cfg.num_noise_vec, "lbd": cfg.lbd, "eta": cfg.eta,
            "entropy": cfg.entropy if cfg.method == "consistency" else None,
            "smoothmix": ({"num_steps": cfg.num_steps, "alpha": cfg.alpha, "mix_step": cfg.mix_step,
                           "maxnorm_s": cfg.maxnorm_s, "maxnorm": cfg.maxnorm, "warmup": cfg.warmup}
                          if cfg.method == "smoothmix" else None),
            "smoothadv": ({"eps": cfg.eps, "attack_steps": cfg.attack_steps, "warmup": cfg.warmup}
                          if cfg.method == "smoothadv" else None),
            "data_dir": cfg.data_dir, "command": " ".join(sys.argv)}


def log_meta(cfg: TrainConfig, *, world_size: int, device, n_train: int, n_test: int, source: str,
             normalization: dict | None, start_epoch: int) -> dict:
    """What produced the log (``log.meta.json``; RowLog adds ``columns``, ``version`` and ``created``)."""
    return {**settings_meta(cfg), "world_size": world_size, "normalization": normalization,
            "train_size": n_train, "test_size": n_test, "init": source, "start_epoch": start_epoch,
            "device": str(device)}


# Fields of log.meta.json that may differ between a run and its resumption.
TRAIN_VOLATILE = {"created", "version", "command", "columns", "start_epoch", "init", "device", "data_dir", "epochs",
                  "world_size", "changes"}


def check_run_files(cfg: TrainConfig, meta: dict, resumed: bool, forced=()) -> dict | None:
    """Whether this run may write ``log.csv`` and ``log.meta.json`` in its folder (see the module doc);
    returns the old sidecar (None when there is none). `meta`: the run's sidecar, or part of it (only its
    keys are compared); `forced`: hyper-parameters changed with ``force``."""
    return check_run_log(os.path.join(cfg.outdir, LOG_NAME), meta, sidecar=os.path.join(cfg.outdir, META_NAME),
                         ignore=TRAIN_VOLATILE | set(forced), resumed=resumed, replace=cfg.overwrite,
                         replace_name="overwrite")


def open_epoch_log(outdir: str, meta: dict, start_epoch: int = 0, resumed: bool = False) -> RowLog:
    """log.csv and log.meta.json for this run, as the module doc says; rows are appended with ``write``."""
    path, sidecar = os.path.join(outdir, LOG_NAME), os.path.join(outdir, META_NAME)
    rewrite_log(path, LOG_COLUMNS, meta, (lambda epoch: epoch < start_epoch) if resumed else None, sep=",",
                sidecar=sidecar)
    return RowLog(path, LOG_COLUMNS, meta, sep=",", sidecar=sidecar)


@dataclass
class RunFiles:
    """Rank 0's files while a run trains: the folder's writer lock and the epoch log."""
    lock: WriterLock
    log: RowLog
    created: bool  # this run made the folder

    @classmethod
    def open(cls, cfg: TrainConfig, meta: dict, start_epoch: int, resumed: bool, changes=()) -> RunFiles:
        """Hold the folder, check its files again under the lock, open the log; `changes`: the records of the
        hyper-parameters changed with ``force`` (added to the sidecar's ``changes``)."""
        outdir = cfg.outdir
        created = not os.path.isdir(outdir)
        os.makedirs(outdir, exist_ok=True)
        files = [os.path.join(outdir, name) for name in (LOG_NAME, META_NAME)]
        lock = WriterLock(os.path.join(outdir, CHECKPOINT_NAME), covers=[(f, False) for f in files])
        lock.acquire(outdir)  # one training run per folder
        try:
            old = check_run_files(cfg, meta, resumed, [c["field"] for c in changes])
            history = list((old or {}).get("changes") or []) if resumed else []
            if history or changes:
                meta = {**meta, "changes": history + list(changes)}
            log = open_epoch_log(outdir, meta, start_epoch, resumed)
        except BaseException:
            lock.release()
            if created:
                try:
                    os.rmdir(outdir)
                except OSError:
                    pass
            raise
        return cls(lock, log, created)

    def close(self, discard: bool = False) -> None:
        """Close the log and release the folder; `discard` (a failed fresh run that wrote nothing) deletes
        the log, its sidecar and the folder if this run created it."""
        self.log.close(failed=discard)
        self.lock.release()
        if discard and self.created:
            try:
                os.rmdir(os.path.dirname(self.log.path))
            except OSError:
                pass

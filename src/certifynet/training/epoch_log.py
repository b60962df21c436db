"""A training run's files on rank 0: ``log.csv`` (one row per epoch, written by ``records.RowLog``) with its
sidecar ``log.meta.json``, and the folder's writer lock (one training run per folder).

- **Columns.** `LOG_COLUMNS`; numbers as ``%.6g`` (`format_row`), NaN as ``nan``.
- **Fresh run.** Both files are written anew (an earlier run's are replaced: the checkpoint check, or
  ``overwrite``, has allowed it). A fresh run that fails before its first row or checkpoint leaves no log
  behind, nor the folder it created (`RunFiles.close`).
- **Resumed run.** The rows of epochs before the checkpoint's are kept (a row written after the last
  checkpoint is dropped, since that epoch is trained again) and the run appends after them; the sidecar
  describes the resumed run (its ``start_epoch`` and ``init``).
"""
from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass

from certifynet.errors import CertifyNetError
from certifynet.records import RowLog, WriterLock
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


def log_meta(cfg: TrainConfig, *, world_size: int, device, n_train: int, n_test: int, source: str,
             normalization: dict | None, start_epoch: int) -> dict:
    """What produced the log (``log.meta.json``; RowLog adds ``columns``, ``version`` and ``created``)."""
    return {"kind": "train_log", "dataset": cfg.dataset, "arch": cfg.arch, "sigma": cfg.sigma, "k": cfg.k,
            "k_warmup": cfg.k_warmup, "k_warmup_unit": warmup_unit(cfg), "method": cfg.method, "seed": cfg.seed,
            "lr": cfg.lr, "lr_step_size": cfg.lr_step_size, "gamma": cfg.gamma, "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay, "epochs": cfg.epochs, "batch": cfg.batch,
            "world_size": world_size, "num_noise_vec": cfg.num_noise_vec, "lbd": cfg.lbd, "eta": cfg.eta,
            "entropy": cfg.entropy if cfg.method == "consistency" else None,
            "smoothmix": ({"num_steps": cfg.num_steps, "alpha": cfg.alpha, "mix_step": cfg.mix_step,
                           "maxnorm_s": cfg.maxnorm_s, "maxnorm": cfg.maxnorm, "warmup": cfg.warmup}
                          if cfg.method == "smoothmix" else None),
            "smoothadv": ({"eps": cfg.eps, "attack_steps": cfg.attack_steps, "warmup": cfg.warmup}
                          if cfg.method == "smoothadv" else None),
            "normalization": normalization,
            "train_size": n_train, "test_size": n_test, "init": source, "start_epoch": start_epoch,
            "data_dir": cfg.data_dir, "device": str(device), "command": " ".join(sys.argv)}


def _rows_before(path: str, start_epoch: int) -> list[dict[str, str]]:
    """The rows of an earlier log for epochs < start_epoch, as written (damaged or repeated rows are skipped)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if rows and rows[0] != LOG_COLUMNS:
        raise CertifyNetError(f"'{path}' has columns {rows[0]}, expected {LOG_COLUMNS}")
    kept: dict[int, dict[str, str]] = {}
    for r in rows[1:]:
        try:
            epoch = int(r[0]) if len(r) == len(LOG_COLUMNS) else start_epoch
        except ValueError:
            continue
        if epoch < start_epoch and epoch not in kept:
            kept[epoch] = dict(zip(LOG_COLUMNS, r))
    return list(kept.values())


def open_epoch_log(outdir: str, meta: dict, start_epoch: int = 0, resumed: bool = False) -> RowLog:
    """log.csv and log.meta.json for this run, as the module doc says; rows are appended with ``write``."""
    path, sidecar = os.path.join(outdir, LOG_NAME), os.path.join(outdir, META_NAME)
    kept = _rows_before(path, start_epoch) if resumed else []
    for name in (path, sidecar):
        if os.path.isfile(name):
            os.unlink(name)
    log = RowLog(path, LOG_COLUMNS, meta, sep=",", sidecar=sidecar)
    try:
        for row in kept:
            log.write(row)
    except BaseException:
        log.close()
        raise
    return log


@dataclass
class RunFiles:
    """Rank 0's files while a run trains: the folder's writer lock and the epoch log."""
    lock: WriterLock
    log: RowLog
    created: bool  # this run made the folder

    @classmethod
    def open(cls, outdir: str, meta: dict, start_epoch: int, resumed: bool) -> RunFiles:
        created = not os.path.isdir(outdir)
        os.makedirs(outdir, exist_ok=True)
        lock = WriterLock(os.path.join(outdir, CHECKPOINT_NAME)).acquire(outdir)  # one training run per folder
        try:
            log = open_epoch_log(outdir, meta, start_epoch, resumed)
        except BaseException:
            lock.release()
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

"""A small DDPM of our own on the bundled digits (mnist5k): ε-prediction, saved as a diffusers folder.

Ho et al. 2020's objective, for a batch x ∈ [0, 1] of training digits (28×28, the UNet's native size):
    x₀ = 2x − 1,  t ~ U{0, …, T−1},  ε ~ N(0, I),  x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε,  loss = ‖UNet(x_t, t) − ε‖².
Linear β from 1e-4 to 0.02 over T = 1000 (DDPM's schedule), Adam, an exponential moving average (EMA) of the
weights (the EMA is what is saved and used). After every epoch, atomically per file:
- OUTDIR/config.json, diffusion_pytorch_model.safetensors (EMA weights), scheduler_config.json — a flat diffusers
  folder that `load_diffusion_denoiser` reads like any other — and certifynet_diffusion.json (what trained it);
- OUTDIR/train_state.pt (weights, EMA, optimizer, epoch: `resume=True` continues from it);
- one row of OUTDIR/log.csv: epoch, loss, psnr (one-shot denoising of the first test digits at σ = eval_sigma,
  with the EMA weights), seconds (wall clock) and cpu_seconds (this process, all threads: steadier on a shared
  machine).
Deterministic from `seed` (generators seeded by (seed, epoch, stream)), whatever the resumption.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch

from certifynet.denoise.diffusion.schedule import linear_schedule
from certifynet.errors import CertifyNetError, check_seed

log = logging.getLogger(__name__)
STATE_NAME, LOG_NAME = "train_state.pt", "log.csv"
LOG_COLUMNS = ["epoch", "loss", "psnr", "seconds", "cpu_seconds"]
# Options that fix the run (a resumed run must agree on them); epochs and max_minutes may grow.
_RUN_KEYS = ("seed", "batch", "lr", "ema", "timesteps", "beta_start", "beta_end", "train_subset", "eval_subset",
             "eval_sigma")
_SHUFFLE, _NOISE, _TIME, _EVAL = 0, 1, 2, 3   # generator streams, seeded by (seed, epoch, stream)
# What the trainer writes: a folder of these (with certifynet_diffusion.json) is an older run of ours (records.guard).
OWN_FILES = {"config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "certifynet_diffusion.json",
             STATE_NAME, LOG_NAME, LOG_NAME + ".meta.json", ".saving"}
# name → UNet2DModel shape. 'bench': the benchmark's model; 'quick': the quickstart's (about a minute).
SIZES = {"bench": {"block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8},
         "quick": {"block_out_channels": [8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4}}


@dataclass
class DDPMOptions:
    """Every option of a DDPM run (CLI flags share the names, `--lr` ↔ lr)."""
    outdir: str | None = None               # None: <project>/results/ddpm_mnist5k
    size: str = "bench"                     # a SIZES name
    epochs: int = 12
    batch: int = 64
    lr: float = 2e-3
    ema: float = 0.995                      # EMA decay per step (warmed up: min(ema, (1 + n)/(10 + n)))
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    train_subset: int | None = None         # first n training digits
    eval_subset: int = 200                  # test digits for the psnr column
    eval_sigma: float = 0.5
    max_minutes: float | None = None        # stop after the epoch that passes this wall-clock budget
    data_dir: str | None = None
    seed: int = 0
    resume: bool = False
    extra: dict = field(default_factory=dict)   # UNet2DModel config overrides

    def check(self) -> DDPMOptions:
        if self.size not in SIZES:
            raise CertifyNetError(f"{{size}} must be one of {', '.join(SIZES)}, got {self.size!r}", "size")
        for name in ("epochs", "batch", "timesteps", "eval_subset"):
            if int(getattr(self, name)) < 1:
                raise CertifyNetError(f"{{{name}}} must be >= 1, got {getattr(self, name)}", name)
        if not (0 < self.lr < math.inf and 0 <= self.ema < 1 and 0 < self.beta_start < self.beta_end < 1
                and 0 < self.eval_sigma < math.inf):
            raise CertifyNetError("need finite lr > 0, 0 <= ema < 1, 0 < beta_start < beta_end < 1 and finite "
                                  "eval_sigma > 0")
        if self.train_subset is not None and int(self.train_subset) < 1:
            raise CertifyNetError(f"{{train_subset}} must be >= 1, got {self.train_subset}", "train_subset")
        if self.max_minutes is not None and not 0 < self.max_minutes < math.inf:
            raise CertifyNetError(f"{{max_minutes}} must be a finite number > 0, got {self.max_minutes}", "max_minutes")
        check_seed(self.seed)
        return self


def unet_config(opts: DDPMOptions, shape=(1, 28, 28)) -> dict:
    """UNet2DModel for 28×28 digits: three levels (28 → 14 → 7), attention only at 7×7 (and in the middle)."""
    cfg = {"sample_size": shape[-1], "in_channels": shape[0], "out_channels": shape[0],
           "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
           "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], "attention_head_dim": 16,
           **SIZES[opts.size], **opts.extra}
    return cfg


def _train_images(opts: DDPMOptions, split: str, n: int | None) -> torch.Tensor:
    from certifynet.data import get_dataset
    from certifynet.paths import default_path
    data = get_dataset("mnist5k", split, opts.data_dir or default_path("data"))
    n = len(data) if n is None else min(n, len(data))
    return torch.stack([data[i][0] for i in range(n)])


def _save_folder(outdir: str, unet, opts: DDPMOptions, record: dict) -> None:
    """config.json + weights + scheduler_config.json + certifynet_diffusion.json, each replaced atomically."""
    from certifynet.denoise.diffusion.folders import diffusers_lib
    from certifynet.denoise.diffusion.load import RECORD_NAME
    lib = diffusers_lib()
    tmp = os.path.join(outdir, ".saving")
    os.makedirs(tmp, exist_ok=True)
    unet.save_pretrained(tmp)
    lib.DDPMScheduler(num_train_timesteps=opts.timesteps, beta_start=opts.beta_start, beta_end=opts.beta_end,
                      beta_schedule="linear", prediction_type="epsilon").save_pretrained(tmp)
    with open(os.path.join(tmp, RECORD_NAME), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(outdir, name))
    os.rmdir(tmp)


@torch.no_grad()
def denoise_psnr(unet, x: torch.Tensor, sigma: float, alphas_cumprod, seed: int) -> float:
    """Mean PSNR of one-shot denoising (first t with noise ≥ 2σ) of x + δ, δ ~ N(0, σ²I) from a fixed seed."""
    from certifynet.denoise.diffusion.denoiser import DiffusionDenoiser
    from certifynet.denoise.diffusion.schedule import Schedule
    from certifynet.sampling import input_generator
    den = DiffusionDenoiser(unet, Schedule("linear", alphas_cumprod), sigma)
    noisy = x + sigma * torch.randn(x.shape, generator=input_generator(seed, 0, _EVAL, "cpu"))
    out = torch.cat([den(noisy[i:i + 100]) for i in range(0, len(x), 100)])
    mse = (out - x).square().flatten(1).mean(1).clamp_min(1e-10)
    return float((-10 * torch.log10(mse)).mean())


def _epoch(unet, ema, optimizer, x_all, sqrt_ab, sqrt_1m, opts, epoch, step0) -> tuple[float, int]:
    """One pass over the digits; returns (mean loss, steps so far)."""
    from certifynet.sampling import input_generator
    unet.train()
    order = torch.randperm(len(x_all), generator=input_generator(opts.seed, epoch, _SHUFFLE, "cpu"))
    g_noise = input_generator(opts.seed, epoch, _NOISE, "cpu")
    g_time = input_generator(opts.seed, epoch, _TIME, "cpu")
    total, n, step = 0.0, 0, step0
    for start in range(0, len(order), opts.batch):
        x0 = 2 * x_all[order[start:start + opts.batch]] - 1
        t = torch.randint(0, opts.timesteps, (len(x0),), generator=g_time)
        eps = torch.randn(x0.shape, generator=g_noise)
        x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1m[t].view(-1, 1, 1, 1) * eps
        loss = (unet(x_t, t).sample - eps).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        decay = min(opts.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        total, n = total + float(loss.detach()) * len(x0), n + len(x0)
    return total / max(n, 1), step


def _start(opts: DDPMOptions, unet, ema, optimizer, state_path: str) -> tuple[int, int, float, float]:
    """(epoch, step, seconds, cpu seconds) to continue from: train_state.pt with resume, else a fresh run in an
    empty folder."""
    if not opts.resume:
        if os.path.exists(state_path):
            raise CertifyNetError(f"'{state_path}' exists; pass {{resume}} to continue it or choose another {{outdir}}",
                                  "resume", "outdir")
        return 0, 0, 0.0, 0.0
    if not os.path.isfile(state_path):
        return 0, 0, 0.0, 0.0
    from certifynet.models import read_checkpoint_file
    st = read_checkpoint_file(state_path)
    if st.get("config") != json.loads(json.dumps(unet_config(opts))):
        raise CertifyNetError(f"cannot resume '{state_path}': it trains another UNet ({st.get('config')})")
    unet.load_state_dict(st["model"])
    ema.load_state_dict(st["ema"])
    optimizer.load_state_dict(st["optimizer"])
    log.info("resuming %s at epoch %d", state_path, st["epoch"])
    return int(st["epoch"]), int(st["step"]), float(st.get("seconds", 0.0)), float(st.get("cpu_seconds", 0.0))


def _end_epoch(opts, unet, ema, optimizer, epoch, step, clock, loss, psnr) -> None:
    """Save the folder (EMA weights) and the training state, both atomically."""
    from certifynet.models import atomic_torch_save
    seconds, cpu = clock
    record = {"trained_by": "certifynet.denoise.diffusion.train_ddpm", "dataset": "mnist5k", "epoch": epoch,
              "steps": step, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "loss": loss,
              "ema": opts.ema, "psnr_at_eval_sigma": psnr, "eval_sigma": opts.eval_sigma,
              "prediction_type": "epsilon", "input_range": "-1,1", "seed": opts.seed}
    _save_folder(opts.outdir, ema, opts, record)
    atomic_torch_save({"epoch": epoch, "step": step, "seconds": seconds, "cpu_seconds": cpu,
                       "config": unet_config(opts), "model": unet.state_dict(), "ema": ema.state_dict(),
                       "optimizer": optimizer.state_dict()}, state_path(opts))


def _run_settings(opts: DDPMOptions) -> dict:
    """What makes two runs one (the folder's marker, records.guard): the UNet and the options that fix the run."""
    return json.loads(json.dumps({"unet": unet_config(opts), **{k: getattr(opts, k) for k in _RUN_KEYS}}))


def _older_run(entries: set) -> bool:
    """A folder written by the trainer before markers existed: its files only, with its record."""
    return "certifynet_diffusion.json" in entries and entries <= OWN_FILES


def state_path(opts: DDPMOptions) -> str:
    return os.path.join(opts.outdir, STATE_NAME)


def train_ddpm(opts: DDPMOptions, progress: bool = True) -> dict:
    """Train (or resume) the mnist5k DDPM; returns {"folder", "log", "history", "seconds", "cpu_seconds", "steps",
    "epochs"}."""
    import copy

    from certifynet.denoise.diffusion.folders import diffusers_lib
    from certifynet.paths import check_output_folder, default_path
    from certifynet.progress import progress as bar
    from certifynet.records import RowLog
    from certifynet.records.guard import check_folder, claim_folder
    opts = dataclasses.replace(opts.check(), outdir=opts.outdir or default_path("results/ddpm_mnist5k"))
    check_output_folder(opts.outdir, name="outdir")
    guard = dict(kind="ddpm", settings=_run_settings(opts), name="outdir", adopt=_older_run)  # records.guard
    check_folder(opts.outdir, **guard)  # a folder that is not ours (a downloaded model), or another run's
    torch.manual_seed(opts.seed)
    unet = diffusers_lib().UNet2DModel(**unet_config(opts))
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(unet.parameters(), lr=opts.lr)
    epoch0, step, seconds, cpu = _start(opts, unet, ema, optimizer, state_path(opts))
    ab = linear_schedule(opts.timesteps, opts.beta_start, opts.beta_end).alphas_cumprod
    roots = torch.tensor(ab ** 0.5, dtype=torch.float32), torch.tensor((1 - ab) ** 0.5, dtype=torch.float32)
    x_train, x_eval = _train_images(opts, "train", opts.train_subset), _train_images(opts, "test", opts.eval_subset)
    meta = {"kind": "ddpm_train_log", "dataset": "mnist5k", "unet": unet_config(opts),
            **{k: getattr(opts, k) for k in _RUN_KEYS}}
    history = []
    log_path = os.path.join(opts.outdir, LOG_NAME)
    with claim_folder(opts.outdir, **guard), RowLog(log_path, LOG_COLUMNS, meta, sep=",") as rows, \
            bar(opts.epochs - epoch0, "ddpm", "epoch", enabled=progress) as pbar:
        for epoch in range(epoch0 + 1, opts.epochs + 1):
            t0, c0 = time.time(), time.process_time()
            loss, step = _epoch(unet, ema, optimizer, x_train, *roots, opts, epoch, step)
            psnr = denoise_psnr(ema, x_eval, opts.eval_sigma, ab, opts.seed)
            seconds, cpu = seconds + time.time() - t0, cpu + time.process_time() - c0
            _end_epoch(opts, unet, ema, optimizer, epoch, step, (seconds, cpu), loss, psnr)
            row = {"epoch": epoch, "loss": round(loss, 5), "psnr": round(psnr, 3),
                   "seconds": round(time.time() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1)}
            rows.write(row)
            history.append(row)
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss:.4f}", psnr=f"{psnr:.2f}")
            if opts.max_minutes is not None and seconds > 60 * opts.max_minutes:
                log.info("stopping after epoch %d: %.1f minutes spent (max_minutes %s)", epoch, seconds / 60,
                         opts.max_minutes)
                break
    return {"folder": opts.outdir, "log": os.path.join(opts.outdir, LOG_NAME), "history": history,
            "seconds": seconds, "cpu_seconds": cpu, "steps": step, "epochs": epoch0 + len(history)}


__all__ = ["DDPMOptions", "SIZES", "train_ddpm", "unet_config", "denoise_psnr"]

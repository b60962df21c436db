"""train_ddpm.py: train a small diffusion model (DDPM, ε-prediction) on the bundled digits (mnist5k).

It writes a diffusers folder that every --denoiser flag reads like a downloaded one (config.json,
diffusion_pytorch_model.safetensors, scheduler_config.json), plus certifynet_diffusion.json (what trained it),
train_state.pt (for --resume) and log.csv (epoch, loss, psnr of one-shot denoising at --eval-sigma, seconds).

  python scripts/train_ddpm.py --outdir models/ddpm_mnist5k                 # the benchmark's model
  python scripts/train_ddpm.py --size quick --epochs 3 --outdir /tmp/ddpm   # about a minute
"""
from __future__ import annotations

import os

from certifynet.cli import CliParser, one_line_errors
from certifynet.denoise.diffusion.train import SIZES, DDPMOptions


def build_parser():
    d = DDPMOptions()
    p = CliParser(prog="train_ddpm.py", description=__doc__)
    p.add_argument("--outdir", help="output folder (default <project>/results/ddpm_mnist5k)")
    p.add_argument("--size", default=d.size, choices=tuple(SIZES), help="UNet size: " + "; ".join(
        f"{k} {v['block_out_channels']}" for k, v in SIZES.items()))
    p.add_argument("--epochs", type=int, default=d.epochs, help="total epochs (a resumed run continues up to this)")
    p.add_argument("--batch", type=int, default=d.batch, help="batch size")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--ema", type=float, default=d.ema, help="EMA decay of the saved weights")
    p.add_argument("--train-subset", type=int, help="use the first n training digits")
    p.add_argument("--eval-sigma", type=float, default=d.eval_sigma, help="σ of the psnr column")
    p.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this many minutes")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of init, shuffling, t and ε")
    p.add_argument("--resume", action="store_true", help="continue OUTDIR/train_state.pt")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


@one_line_errors
def main(argv=None):
    a = build_parser().parse_args(argv)
    opts = DDPMOptions(outdir=a.outdir, size=a.size, epochs=a.epochs, batch=a.batch, lr=a.lr, ema=a.ema,
                       train_subset=a.train_subset, eval_sigma=a.eval_sigma, max_minutes=a.max_minutes, seed=a.seed,
                       resume=a.resume).check()
    if a.threads:
        import torch
        torch.set_num_threads(max(1, min(a.threads, os.cpu_count() or 1)))
    from certifynet.denoise.diffusion.train import train_ddpm
    out = train_ddpm(opts, progress=a.progress)
    last = out["history"][-1] if out["history"] else {}
    print(f"diffusers folder: {out['folder']} ({out['epochs']} epochs, {out['steps']} steps, "
          f"{out['seconds']:.0f}s wall, {out['cpu_seconds']:.0f}s CPU"
          + (f", psnr {last['psnr']:.2f} dB at σ={opts.eval_sigma:g}" if last else "") + f")\nlog: {out['log']}")

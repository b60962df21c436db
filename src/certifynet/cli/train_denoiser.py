"""train_denoiser.py: train a denoiser D for denoised smoothing (mse, l1, stability, classification objectives).

Options: defaults < the JSON options file (--opt, KAIR style) < command-line flags. Example:

  python scripts/train_denoiser.py --opt denoiser/options/train_drunet_small_mnist_stab.json \\
      --classifier models/mnist5k_lenet_clean.pth --epochs 3 --outdir results/den_stab

Writes OUTDIR/denoiser.pth after every epoch (atomic; --resume continues it) and OUTDIR/log.csv
(epoch, lr, loss, psnr, denoised_acc, seconds) with its sidecar OUTDIR/log.csv.meta.json.
"""
from __future__ import annotations

import argparse

from certifynet.cli import CliParser, HelpFormatter, one_line_errors
from certifynet.denoise.options import CHOICES, OPTION_SPECS, coerce_option, read_options_file, resolve_options
from certifynet.denoise.train import train_denoiser


def build_parser():
    p = CliParser(prog="train_denoiser.py", description=__doc__, formatter_class=HelpFormatter,
                  argument_default=argparse.SUPPRESS)
    p.add_argument("--opt", help="JSON options file (keys as the flags below, with _ for -)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (without a terminal, progress is printed as plain lines every 30 s)")
    g = p.add_argument_group("options (override the --opt file)")
    for name, (kind, help_) in OPTION_SPECS.items():
        flag = "--" + name.replace("_", "-")
        if kind == "resume":
            g.add_argument(flag, nargs="?", const=True, metavar="CKPT", help=help_)
        elif kind == "switch":
            g.add_argument(flag, action="store_const", const=True, help=help_)
        else:
            g.add_argument(flag, choices=CHOICES.get(name), help=help_)
    return p


@one_line_errors
def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    opt_file, quiet = args.pop("opt", None), args.pop("no_progress", False)
    cli = {k: v if v is True else coerce_option(k, v) for k, v in args.items()}
    opts = resolve_options(read_options_file(opt_file) if opt_file else {}, cli)
    out = train_denoiser(opts, progress=not quiet)
    print(f"checkpoint: {out['checkpoint']}\nlog: {out['log']}")

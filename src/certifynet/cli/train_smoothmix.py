"""train_smoothmix.py: train a base classifier with SmoothMix (Jeong et al., NeurIPS 2021).

  python scripts/train_smoothmix.py cifar10 cifar_resnet110 --lr 0.1 --lr_step_size 50 --epochs 150 \\
      --noise_sd 0.5 --eta 5.00 --num-noise-vec 2 --num-steps 4 --alpha 1.0 --mix_step 1 --k 1530 --k-warmup 110

L = mean CE(f(x+δ_i), y) + η·w·mean[1(argmax p̂(x)=y)·KL(ŷ_mix ‖ softmax f(x_mix+δ_i))], with the adversarial
path of --num-steps normalised-gradient steps of size --alpha on the smoothed soft classifier (same δ_i
throughout), x_mix between its step --mix_step and its end, and the warm-up weight w = min(1, (epoch+1)/--warmup).
All other flags (noise, --k, optimiser, data, DDP, resume) are those of train.py.
"""
from __future__ import annotations

import argparse

from certifynet.cli import CliParser, one_line_errors, parse
from certifynet.cli.train import add_common_args, check_noise_flags, report_outputs


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="train_smoothmix.py", description=__doc__)
    add_common_args(p)
    s = p.add_argument_group("SmoothMix")
    s.add_argument("--eta", type=float, default=1.0, help="weight η of the mixup term")
    s.add_argument("--num-steps", "--num_steps", dest="num_steps", type=int, default=8,
                   help="steps T of the adversarial path")
    s.add_argument("--alpha", type=float, default=1.0, help="L2 step size α of the path")
    s.add_argument("--mix_step", "--mix-step", dest="mix_step", type=int, default=0,
                   help="path step used as x_init (0 = the clean input; 1 = the one-step adversary)")
    s.add_argument("--maxnorm_s", "--maxnorm-s", dest="maxnorm_s", type=float, default=None,
                   help="radius of x_init before the warm-up weight")
    s.add_argument("--maxnorm", type=float, default=None, help="L2 radius of the whole path")
    s.add_argument("--warmup", type=int, default=10,
                   help="epochs of the linear warm-up of the mixup weight")
    return p


@one_line_errors
def main(argv=None):
    from certifynet.training import TrainConfig, run_training
    args = parse(build_parser(), argv)
    check_noise_flags(args)
    report_outputs(run_training(TrainConfig.from_namespace(args, method="smoothmix")))
    return 0

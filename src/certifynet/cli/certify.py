"""certify.py: certificates from a counts file (--counts), or sample-and-certify in one go (--model).

  python scripts/certify.py --counts results/c10_np.csv --alpha 0.001                 # → results/c10_np.np.tsv
  python scripts/certify.py --counts results/c10_dsrs.csv                             # --method from the file: dsrs
  python scripts/certify.py --model CKPT --sigma 0.25 --N 100000 --out results/np.tsv # Cohen's one-step flow

Which --method reads which counts file: np ← plain counts (and the P draws of DSRS counts); dsrs ← counts
sampled with --q-dist; iss-np ← counts sampled with --iss (also ISS-DSRS counts); iss-dsrs ← --iss with
--q-dist. The default is the file's own kind. With --counts, σ, N, N0, k and the seed come from its
sidecar; --start/--end/--skip/--max/--shard select rows of the file.

Writes a tab-separated log whose first columns are Cohen's `idx label predict radius correct time`,
then `pA_lower n samples method` (and the P/Q interval ends for DSRS); abstain is predict = −1, radius 0.
--sequential --radii R… (with --model): sequential NP at fixed radii, each input sampled until the decision at
every radius is settled (default rule: calibrated group-sequential; --sequential-rule cs: the anytime-valid
confidence sequence), docs/sequential.md.
--estimate (with --model): a short pilot on this device projects the forward passes and the wall time of the
run, and with --time-limit the shards that fit and the sbatch command; nothing is written (docs/scaleout.md).
"""
from __future__ import annotations

import sys

from certifynet.certify.methods import COUNTS_METHODS
from certifynet.cli import one_line_errors, parse, text_arg
from certifynet.cli.base import per_input_parser
from certifynet.cli.sample import add_estimate_args, print_estimate
from certifynet.paths import shown
from certifynet.sampling.certify_stage import run_certify
from certifynet.sampling.config import CHOICES, SamplingConfig


def build_parser():
    p = per_input_parser("certify.py", __doc__,
                         "log file (default: <counts stem>.<method>.tsv, or <project>/results/certify_<method>.tsv)")
    d = SamplingConfig()
    p.add_argument("--counts", default=d.counts,
                   help="counts CSV written by sample.py (certify stored counts; no model needed)")
    p.add_argument("--method", default=d.method, choices=COUNTS_METHODS,
                   help="certificate (default: the counts file's kind, or what the sampling flags give)")
    p.add_argument("--label", default=d.label, type=text_arg,
                   help="display label for analyze.py (any text; kept in the sidecar)")
    g = p.add_argument_group("sequential certification at fixed radii (docs/sequential.md)")
    g.add_argument("--sequential", action="store_true",
                   help="sample until the decision at every --radii is sure (valid at α); --N is the cap")
    g.add_argument("--radii", nargs="+", type=float, default=d.radii, metavar="R",
                   help="radii to decide (with --sequential)")
    g.add_argument("--sequential-rule", default=d.sequential_rule, choices=CHOICES["sequential_rule"],
                   help="gs: group-sequential test calibrated exactly for the batch schedule, α and radii (fewest "
                        "draws); cs: confidence sequence (anytime-valid pA_lower, any data-dependent stop)")
    g.add_argument("--futility", default=d.futility, choices=CHOICES["futility"],
                   help="gs: give up at r (N: not certifiable within the cap) when the Clopper–Pearson upper bound "
                        "at --futility-level is below θ_r (upper), or when even at that rate the path would miss "
                        "every later boundary (projected); never costs validity, only a little power")
    g.add_argument("--futility-level", type=float, default=d.futility_level, metavar="γ",
                   help="level γ of the futility rule")
    add_estimate_args(p, d)
    return p


@one_line_errors
def main(argv=None):
    args = parse(build_parser(), argv)
    config = SamplingConfig.from_namespace(args)
    if config.counts:  # validated against the counts file; the options of sampling runs are refused here
        config.check_sequential_and_estimate("certify")
    if config.estimate:
        return print_estimate(config, "certify")
    out = run_certify(config, command=" ".join(sys.argv))
    if out:
        print(f"log: {shown(out)}")

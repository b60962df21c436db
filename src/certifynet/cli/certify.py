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
--sequential --radii R… (with --model): anytime-valid sequential NP at fixed radii, docs/sequential.md.
"""
from __future__ import annotations

import sys

from certifynet.certify.methods import COUNTS_METHODS
from certifynet.cli import one_line_errors, parse, text_arg
from certifynet.cli.base import per_input_parser
from certifynet.paths import shown
from certifynet.sampling.certify_stage import run_certify
from certifynet.sampling.config import SamplingConfig


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
                   help="sample until the decision at every --radii is sure (anytime-valid at α); --N is the cap")
    g.add_argument("--radii", nargs="+", type=float, default=d.radii, metavar="R",
                   help="radii to decide (with --sequential)")
    return p


@one_line_errors
def main(argv=None):
    args = parse(build_parser(), argv)
    out = run_certify(SamplingConfig.from_namespace(args), command=" ".join(sys.argv))
    if out:
        print(f"log: {shown(out)}")

"""sample.py: count the base model's predictions under noise (P, and optionally Q) → counts CSV + sidecar.

  python scripts/sample.py --model CKPT --sigma 0.25 --N0 100 --N 100000 --out results/c10_np.csv
  python scripts/sample.py --model CKPT --sigma 0.25 --N 50000 --q-dist truncated --out results/c10_dsrs.csv
  python scripts/sample.py --model CKPT --sigma 0.25 --N 100000 --iss absolute --out results/c10_iss.csv

Each row is flushed at once and carries a `check` digest bound to the sidecar's settings, so that certify.py
refuses an edited file. Rerun the same command to resume an interrupted run.
"""
from __future__ import annotations

import sys

from certifynet.cli import one_line_errors, parse
from certifynet.cli.base import per_input_parser
from certifynet.paths import shown
from certifynet.sampling.config import DEFAULT_OUT, SamplingConfig


def build_parser():
    return per_input_parser("sample.py", __doc__,
                            f"counts CSV (default <project>/{DEFAULT_OUT['sample']}; a shard i of n gets .shard<i>of<n>)")


@one_line_errors
def main(argv=None):
    from certifynet.sampling.stages import run_sample
    args = parse(build_parser(), argv)
    out = run_sample(SamplingConfig.from_namespace(args), command=" ".join(sys.argv))
    if out:
        print(f"counts: {shown(out)}")

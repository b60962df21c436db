"""sample.py: count the base model's predictions under noise (P, and optionally Q) → counts CSV + sidecar.

  python scripts/sample.py --model CKPT --sigma 0.25 --N0 100 --N 100000 --out results/c10_np.csv
  python scripts/sample.py --model CKPT --sigma 0.25 --N 50000 --q-dist truncated --out results/c10_dsrs.csv
  python scripts/sample.py --model CKPT --sigma 0.25 --N 100000 --iss absolute --out results/c10_iss.csv

Each row is flushed at once and carries a `check` digest bound to the sidecar's settings, so that certify.py
refuses an edited file. Rerun the same command to resume an interrupted run.
--estimate: a short pilot on this device projects the forward passes and the wall time of the run, and with
--time-limit the shards that fit and the sbatch command; nothing is written (docs/scaleout.md).
"""
from __future__ import annotations

import sys

from certifynet.cli import one_line_errors, parse
from certifynet.cli.base import per_input_parser
from certifynet.paths import shown
from certifynet.sampling.config import DEFAULT_OUT, SamplingConfig


def build_parser():
    p = per_input_parser("sample.py", __doc__,
                         f"counts CSV (default <project>/{DEFAULT_OUT['sample']}; a shard i of n gets .shard<i>of<n>)")
    add_estimate_args(p, SamplingConfig())
    return p


def add_estimate_args(p, d: SamplingConfig) -> None:
    """--estimate and --time-limit (sample.py, certify.py)."""
    g = p.add_argument_group("know the cost first (docs/scaleout.md)")
    g.add_argument("--estimate", action="store_true",
                   help="run a short pilot on this device and print the projected forward passes and wall time of "
                        "the whole selection; nothing is written")
    g.add_argument("--time-limit", default=d.time_limit, metavar="TIME",
                   help="with --estimate: one task's time limit (SLURM --time, e.g. 04:00:00): print the shard "
                        "count that fits and the sbatch command")


def print_estimate(config: SamplingConfig, mode: str) -> None:
    """The estimate's lines on stdout (`sampling.estimate.estimate_run`)."""
    from certifynet.sampling.estimate import estimate_run
    for line in estimate_run(config, mode).lines():
        print(line)


@one_line_errors
def main(argv=None):
    from certifynet.sampling.stages import run_sample
    args = parse(build_parser(), argv)
    config = SamplingConfig.from_namespace(args)
    if config.estimate:
        return print_estimate(config, "sample")
    out = run_sample(config, command=" ".join(sys.argv))
    if out:
        print(f"counts: {shown(out)}")

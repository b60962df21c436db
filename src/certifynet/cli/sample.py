"""sample.py: count the base model's predictions under noise (P, and optionally Q) → counts CSV + sidecar.

  python scripts/sample.py --model CKPT --sigma 0.25 --N0 100 --N 100000 --out results/c10_np.csv
  python scripts/sample.py --model CKPT --sigma 0.25 --N 50000 --q-dist truncated --out results/c10_dsrs.csv
  python scripts/sample.py --model CKPT --sigma 0.25 --N 100000 --iss absolute --out results/c10_iss.csv

Each row is flushed at once and carries a `check` digest bound to the sidecar's settings, so that certify.py
refuses an edited file. Rerun the same command to resume an interrupted run.
"""
from __future__ import annotations

from certifynet.cli import one_line_errors, parse
from certifynet.cli.runs import item, nothing_to_do, open_run, per_input_parser, run_rows
from certifynet.paths import default_path, shown
from certifynet.records import RowLog

DEFAULT_OUT = "results/counts.csv"


def build_parser():
    return per_input_parser("sample.py", __doc__,
                            f"counts CSV (default <project>/{DEFAULT_OUT}; a shard i of n gets .shard<i>of<n>)")


@one_line_errors
def main(argv=None):
    args = parse(build_parser(), argv)
    run = open_run(args, "sample", default_path(DEFAULT_OUT))
    if nothing_to_do(run.indices, run.shard):
        return 0
    s = run.sampler
    with RowLog(run.out, s.columns(), {**run.meta, "kind": "counts"}, sep=",", integrity=True) as log:
        run_rows(log, run.indices, lambda i: s.sample(i, *item(run.data, i)), "sampling", args.progress,
                 s.prefetcher(run.data, item))
    print(f"counts: {shown(run.out)}")

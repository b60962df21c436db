"""sample.py: count the base model's predictions under noise (P, and optionally Q) → counts CSV + sidecar."""
from __future__ import annotations

import argparse

from certifynet.cli import one_line_errors
from certifynet.cli.runs import open_run, output_path, run_rows
from certifynet.pipeline import add_common_run_args, add_noise_args
from certifynet.records import RowLog


def build_parser():
    p = argparse.ArgumentParser(prog="sample.py", description=__doc__)
    add_common_run_args(p)
    add_noise_args(p)
    p.add_argument("--out", help="counts CSV (default results/counts.csv; shards get .shardIofN)")
    return p


@one_line_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    sampler, data, indices, meta, shard = open_run(args)
    out = output_path(args, shard, "results/counts.csv")
    with RowLog(out, sampler.columns(), {**meta, "kind": "counts"}, sep=",") as log:
        run_rows(log, indices, lambda i: sampler.sample(i, *_item(data, i)), "sampling")
    print(f"counts: {out}")


def _item(data, i):
    x, y = data[i]
    return x, int(y)

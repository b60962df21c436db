"""sample.py: count the base model's predictions under noise (P, and optionally Q) → counts CSV + sidecar."""
from __future__ import annotations

from certifynet.cli import one_line_errors
from certifynet.cli.runs import open_run, output_path, per_input_parser, run_rows
from certifynet.records import RowLog


def build_parser():
    return per_input_parser("sample.py", __doc__, "counts CSV (default results/counts.csv; shards get .shardIofN)")


@one_line_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    sampler, data, indices, meta, shard = open_run(args)
    out = output_path(args, shard, "results/counts.csv")
    with RowLog(out, sampler.columns(), {**meta, "kind": "counts"}, sep=",") as log:
        run_rows(log, indices, lambda i: sampler.sample(i, *_item(data, i)), "sampling",
                 prefetch=sampler.prefetcher(data, _item))
    print(f"counts: {out}")


def _item(data, i):
    x, y = data[i]
    return x, int(y)

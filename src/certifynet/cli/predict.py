"""predict.py: Cohen's PREDICT — the smoothed classifier's prediction with a binomial abstention test.

Writes a tab-separated log `idx label predict correct time` (+ count1 count2 pvalue); predict = −1 abstains.
"""
from __future__ import annotations

import time

import numpy as np

from certifynet.certify import predict_pvalue
from certifynet.cli import one_line_errors
from certifynet.cli.runs import open_run, output_path, per_input_parser, run_rows
from certifynet.cli.sample import _item
from certifynet.errors import check_alpha
from certifynet.records import RowLog
from certifynet.sampling import STREAM_P

COLUMNS = ["idx", "label", "predict", "correct", "time", "count1", "count2", "pvalue"]


def build_parser():
    return per_input_parser("predict.py", __doc__, "log file (default results/predict.tsv)")


@one_line_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_alpha(args.alpha)
    args.N0 = 0  # PREDICT has no selection step
    sampler, data, indices, meta, shard = open_run(args)
    out = output_path(args, shard, "results/predict.tsv")

    def make(idx):
        t0 = time.time()
        x, label = _item(data, idx)
        counts = sampler.sampler.counts_np(x, sampler.p_noise, args.N, sampler._gen(idx, STREAM_P))
        top = np.argsort(counts, kind="stable")[::-1][:2]
        n1, n2 = int(counts[top[0]]), int(counts[top[1]])
        pv = predict_pvalue(n1, n2)
        pred = -1 if pv > args.alpha else int(top[0])
        return {"idx": idx, "label": label, "predict": pred, "correct": int(pred == label),
                "time": round(time.time() - t0, 4), "count1": n1, "count2": n2, "pvalue": pv}

    with RowLog(out, COLUMNS, {**meta, "kind": "predict_log"}) as log:
        run_rows(log, indices, make, "predict")
    print(f"log: {out}")

"""predict.py: Cohen's PREDICT — the smoothed classifier's prediction with a binomial abstention test.

  python scripts/predict.py --model CKPT --sigma 0.25 --N 1000 --alpha 0.001 --out results/predict.tsv

Writes a tab-separated log `idx label predict correct time` (+ count1 count2 pvalue); predict = −1 abstains.
PREDICT counts N draws of P; the selection, DSRS and ISS flags of sample.py do not apply here.
"""
from __future__ import annotations

import time

import numpy as np

from certifynet.certify import predict_pvalue
from certifynet.cli import one_line_errors, parse
from certifynet.cli.runs import item, nothing_to_do, open_run, per_input_parser, run_rows
from certifynet.paths import default_path, shown
from certifynet.records import RowLog

COLUMNS = ["idx", "label", "predict", "correct", "time", "count1", "count2", "pvalue"]
DEFAULT_OUT = "results/predict.tsv"


def build_parser():
    return per_input_parser("predict.py", __doc__, f"log file (default <project>/{DEFAULT_OUT})")


@one_line_errors
def main(argv=None):
    args = parse(build_parser(), argv)
    run = open_run(args, "predict", default_path(DEFAULT_OUT))
    if nothing_to_do(run.indices, run.shard):
        return 0
    meta = {k: v for k, v in run.meta.items() if k not in ("N0", "select", "q_mode", "q_param", "iss")}

    def make(idx):
        t0 = time.time()
        x, label = item(run.data, idx)
        counts = run.sampler.predict_counts(idx, x)
        top = np.argsort(counts, kind="stable")[::-1][:2]
        n1, n2 = int(counts[top[0]]), int(counts[top[1]])
        pv = predict_pvalue(n1, n2)
        pred = -1 if pv > args.alpha else int(top[0])
        return {"idx": idx, "label": label, "predict": pred, "correct": int(pred == label),
                "time": round(time.time() - t0, 4), "count1": n1, "count2": n2, "pvalue": pv}

    with RowLog(run.out, COLUMNS, {**meta, "kind": "predict_log"}) as log:
        run_rows(log, run.indices, make, "predict", args.progress)
    print(f"log: {shown(run.out)}")

"""predict.py: Cohen's PREDICT — the smoothed classifier's prediction with a binomial abstention test.

  python scripts/predict.py --model CKPT --sigma 0.25 --N 1000 --alpha 0.001 --out results/predict.tsv

Writes a tab-separated log `idx label predict correct time` (+ count1 count2 pvalue); predict = −1 abstains.
PREDICT counts N draws of P; the selection, DSRS and ISS flags of sample.py do not apply here.
"""
from __future__ import annotations

import sys

from certifynet.cli import one_line_errors, parse
from certifynet.cli.base import per_input_parser
from certifynet.paths import shown
from certifynet.sampling.config import DEFAULT_OUT, SamplingConfig


def build_parser():
    return per_input_parser("predict.py", __doc__, f"log file (default <project>/{DEFAULT_OUT['predict']})")


@one_line_errors
def main(argv=None):
    from certifynet.sampling.stages import run_predict
    args = parse(build_parser(), argv)
    out = run_predict(SamplingConfig.from_namespace(args), command=" ".join(sys.argv))
    if out:
        print(f"log: {shown(out)}")

"""merge.py OUT INPUT...: merge the shard outputs of one run (counts CSVs, certify/predict logs) by idx.

  python scripts/merge.py results/np.tsv results/np.shard0of4.tsv results/np.shard1of4.tsv ...
  python scripts/merge.py results/np.tsv 'results/np.shard*of4.tsv'        # quoted glob, expanded here

Inputs must agree on every non-volatile metadata field (model, σ, N, α, seed, method, ...). Missing
indices (against the selection the inputs' sidecars describe) are an error and nothing is written: rerun
the failed shard with its command (it resumes) and merge again, or pass --allow-missing. Duplicate rows
that agree on everything but time are kept once; conflicting duplicates are an error.
"""
from __future__ import annotations

from certifynet.cli import CliParser, one_line_errors
from certifynet.paths import shown
from certifynet.records.merge import merge_files


def build_parser():
    p = CliParser(prog="merge.py", description=__doc__)
    p.add_argument("out", metavar="OUT", help="merged file (its sidecar OUT.meta.json lists the inputs)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="shard files or glob patterns")
    p.add_argument("--allow-missing", action="store_true", help="write OUT even if some inputs are missing")
    p.add_argument("--force", action="store_true", help="replace OUT even if it is not an earlier merge output")
    return p


@one_line_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    rep = merge_files(args.out, args.inputs, allow_missing=args.allow_missing, force=args.force)
    extra = f", {rep.duplicates} duplicates dropped" if rep.duplicates else ""
    extra += f", {len(rep.missing)} missing" if rep.missing else ""
    print(f"merged {rep.rows} rows from {len(rep.inputs)} files into {shown(rep.out)} (+ .meta.json){extra}")
    return 0

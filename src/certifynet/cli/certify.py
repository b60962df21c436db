"""certify.py: certificates from a counts file (--counts), or sample-and-certify in one go (--model).

Writes a tab-separated log whose first columns are Cohen's `idx label predict radius correct time`,
then `pA_lower n samples method` (and the P/Q interval ends for DSRS); abstain is predict = −1, radius 0.
--sequential --radii R… (with --model): anytime-valid sequential NP at fixed radii, docs/sequential.md.
"""
from __future__ import annotations

import os
import time

from certifynet.certify.from_counts import METHODS, certify_row
from certifynet.cli import one_line_errors
from certifynet.cli.runs import open_run, output_path, per_input_parser, run_rows
from certifynet.cli.sample import _item
from certifynet.errors import CertifyNetError, check_alpha
from certifynet.records import RowLog, read_meta, read_rows

LOG_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "n", "samples", "method"]
DSRS_COLUMNS = ["pA_upper", "qA_lower", "qA_upper"]


def build_parser():
    p = per_input_parser("certify.py", __doc__, "log file (default: <counts>.<method>.tsv, or results/certify.tsv)")
    p.add_argument("--counts", help="counts CSV written by sample.py")
    p.add_argument("--method", default="np", choices=METHODS)
    p.add_argument("--label", help="display label for analyze.py")
    g = p.add_argument_group("sequential certification at fixed radii (docs/sequential.md)")
    g.add_argument("--sequential", action="store_true",
                   help="sample until the decision at every --radii is sure (anytime-valid at α); --N is the cap")
    g.add_argument("--radii", nargs="+", type=float, metavar="R", help="radii to decide (with --sequential)")
    return p


def _log_columns(method):
    return LOG_COLUMNS + (DSRS_COLUMNS if method.endswith("dsrs") else [])


def _log_meta(meta, args):
    keep = {k: v for k, v in meta.items() if k not in ("columns", "kind", "created", "version")}
    return {**keep, "kind": "certify_log", "method": args.method, "alpha": args.alpha, "label": args.label}


def _certify_counts_file(args):
    if not os.path.isfile(args.counts):
        raise CertifyNetError(f"counts file '{args.counts}' not found")
    meta = read_meta(args.counts)
    header, rows = read_rows(args.counts, sep=",")
    if meta.get("columns") and meta["columns"] != header:
        raise CertifyNetError(f"'{args.counts}' does not match its sidecar (columns differ); was it edited?")
    out = args.out or f"{os.path.splitext(args.counts)[0]}.{args.method}.tsv"
    by_idx = {int(r["idx"]): r for r in rows}
    with RowLog(out, _log_columns(args.method), _log_meta(meta, args)) as log:
        def make(idx):
            t0 = time.time()
            row = certify_row(by_idx[idx], meta, args.method, args.alpha)
            row["time"] = round(float(by_idx[idx].get("time") or 0) + time.time() - t0, 4)
            return row
        run_rows(log, list(by_idx), make, f"certify {args.method}")
    return out


def _sample_and_certify(args):
    if args.method.startswith("iss") != bool(args.iss):
        raise CertifyNetError(f"--method {args.method} needs {'--iss' if args.method.startswith('iss') else 'no --iss'}")
    if args.method.endswith("dsrs") and args.q_dist == "none":
        raise CertifyNetError("--method dsrs needs --q-dist truncated|rescaled")
    sampler, data, indices, meta, shard = open_run(args)
    out = output_path(args, shard, "results/certify.tsv")
    with RowLog(out, _log_columns(args.method), _log_meta(meta, args)) as log:
        def make(idx):
            counts = sampler.sample(idx, *_item(data, idx))
            row = certify_row(counts, meta, args.method, args.alpha)
            row["time"] = counts["time"]
            return row
        run_rows(log, indices, make, f"certify {args.method}")
    return out


@one_line_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_alpha(args.alpha)
    if bool(args.counts) == bool(args.model):
        raise CertifyNetError("give exactly one of --counts FILE (certify stored counts) or --model CKPT (sample and certify)")
    if args.sequential or args.radii:
        out = _sequential(args)
    else:
        out = _certify_counts_file(args) if args.counts else _sample_and_certify(args)
    print(f"log: {out}")


SEQUENTIAL_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "pA_upper", "n0", "n",
                      "hits", "samples", "decisions", "method"]


def _check_sequential_args(args):
    """Refuse what --sequential cannot combine with, before anything is loaded or written."""
    for bad, why in ((not args.sequential, "--radii needs --sequential"),
                     (not args.radii, "--sequential needs --radii R [R ...]"),
                     (bool(args.counts), "--sequential samples as it goes: give --model, not --counts"),
                     (bool(args.iss), "--sequential replaces ISS: drop --iss"),
                     (args.q_dist != "none", "--sequential certifies NP only (DSRS is not supported): drop --q-dist"),
                     (args.method != "np", "--sequential certifies NP only: drop --method")):
        if bad:
            raise CertifyNetError(why)
    from certifynet.certify.sequential import batch_schedule, check_radii
    check_radii(args.radii)
    batch_schedule(args.N, args.batch)


def _sequential(args):
    _check_sequential_args(args)
    from certifynet.pipeline import certify_sequential, sequential_certifier
    sampler, data, indices, meta, shard = open_run(args)
    certifier = sequential_certifier(sampler, args.radii)
    out = output_path(args, shard, "results/certify_sequential.tsv")
    log_meta = {**_log_meta(meta, args), "method": "sequential", **certifier.params()}
    with RowLog(out, SEQUENTIAL_COLUMNS, log_meta) as log:
        run_rows(log, indices, lambda idx: certify_sequential(sampler, certifier, idx, *_item(data, idx)),
                 "certify sequential")
    return out

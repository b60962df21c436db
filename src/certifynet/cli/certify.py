"""certify.py: certificates from a counts file (--counts), or sample-and-certify in one go (--model).

  python scripts/certify.py --counts results/c10_np.csv --alpha 0.001                 # → results/c10_np.np.tsv
  python scripts/certify.py --counts results/c10_dsrs.csv                             # --method from the file: dsrs
  python scripts/certify.py --model CKPT --sigma 0.25 --N 100000 --out results/np.tsv # Cohen's one-step flow

Which --method reads which counts file: np ← plain counts (and the P draws of DSRS counts); dsrs ← counts
sampled with --q-dist; iss-np ← counts sampled with --iss (also ISS-DSRS counts); iss-dsrs ← --iss with
--q-dist. The default is the file's own kind. With --counts, σ, N, N0, k and the seed come from its
sidecar; --start/--end/--skip/--max/--shard select rows of the file.

Writes a tab-separated log whose first columns are Cohen's `idx label predict radius correct time`,
then `pA_lower n samples method` (and the P/Q interval ends for DSRS); abstain is predict = −1, radius 0.
--sequential --radii R… (with --model): anytime-valid sequential NP at fixed radii, docs/sequential.md.
"""
from __future__ import annotations

import os
import sys
import time

from certifynet.certify.from_counts import METHODS, certify_row, check_method
from certifynet.certify.methods import counts_kind
from certifynet.cli import one_line_errors, parse
from certifynet.cli.base import nothing_to_do, per_input_parser, run_rows
from certifynet.errors import CertifyNetError, check_alpha
from certifynet.paths import check_output_file, default_path, shown
from certifynet.records import RowLog, parse_shard, read_counts, select_rows, shard_part, shard_path
from certifynet.records.merge import to_ranges

LOG_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "n", "samples", "method"]
DSRS_COLUMNS = ["pA_upper", "qA_lower", "qA_upper"]
# With --counts: flags that must agree with the sidecar field they would set, and flags that do not apply.
SIDECAR_FLAGS = {"sigma": "sigma", "N": "N", "N0": "N0", "k": "k", "seed": "seed", "select": "select",
                 "iss": "iss", "iss_decline": "iss_decline", "iss_n0": "iss_n0", "batch": "batch"}
SAMPLING_ONLY = ("arch", "dataset", "normalization", "split", "data_dir", "denoiser", "image", "image_label", "device",
                 "amp", "optimize", "channels_last", "dist", "q_dist", "q_sigma", "q_percentile")


def build_parser():
    p = per_input_parser("certify.py", __doc__,
                         "log file (default: <counts stem>.<method>.tsv, or <project>/results/certify_<method>.tsv)")
    p.add_argument("--counts", help="counts CSV written by sample.py (certify stored counts; no model needed)")
    p.add_argument("--method", default=None, choices=METHODS,
                   help="certificate (default: the counts file's kind, or what the sampling flags give)")
    p.add_argument("--label", help="display label for analyze.py (any text; kept in the sidecar)")
    g = p.add_argument_group("sequential certification at fixed radii (docs/sequential.md)")
    g.add_argument("--sequential", action="store_true",
                   help="sample until the decision at every --radii is sure (anytime-valid at α); --N is the cap")
    g.add_argument("--radii", nargs="+", type=float, metavar="R", help="radii to decide (with --sequential)")
    return p


def _log_columns(method):
    return LOG_COLUMNS + (DSRS_COLUMNS if method.endswith("dsrs") else [])


def _log_meta(meta, args):
    keep = {k: v for k, v in meta.items() if k not in ("columns", "kind", "created", "version", "integrity")}
    return {**keep, "kind": "certify_log", "method": args.method, "alpha": args.alpha, "label": args.label,
            "command": " ".join(sys.argv)}


def _check_counts_flags(args, meta, path):
    """With --counts nothing is sampled: sampling flags must agree with the sidecar or are refused."""
    for dest, key in SIDECAR_FLAGS.items():
        if dest in args.given and getattr(args, dest) != meta.get(key):
            raise CertifyNetError(f"--{dest.replace('_', '-')} {getattr(args, dest)} disagrees with the counts file "
                                  f"'{path}' (its sidecar has {key}={meta.get(key)!r}); with --counts it comes from "
                                  f"the sidecar: drop the flag")
    for dest in SAMPLING_ONLY:
        if dest in args.given:
            raise CertifyNetError(f"--{dest.replace('_', '-')} does not apply with --counts (nothing is sampled; "
                                  f"the counts file's sidecar fixes how it was sampled)")


def _certify_counts_file(args):
    meta, _, rows = read_counts(args.counts)
    _check_counts_flags(args, meta, args.counts)
    args.method = check_method(args.method, counts_kind(meta), f"'{args.counts}'")
    shard = parse_shard(args.shard)
    selected = select_rows(rows, args.start, args.end, args.skip, args.max)
    mine = shard_part(selected, shard)
    out = check_output_file(shard_path(args.out or f"{os.path.splitext(args.counts)[0]}.{args.method}.tsv", shard))
    if nothing_to_do(mine, shard):
        return None
    log_meta = {**_log_meta(meta, args), "counts": os.path.abspath(args.counts), "shard": list(shard),
                "indices": to_ranges(int(r["idx"]) for r in selected)}
    by_idx = {int(r["idx"]): r for r in mine}
    with RowLog(out, _log_columns(args.method), log_meta) as log:
        def make(idx):
            t0 = time.time()
            row = certify_row(by_idx[idx], meta, args.method, args.alpha)
            row["time"] = round(float(by_idx[idx].get("time") or 0) + time.time() - t0, 4)
            return row
        run_rows(log, list(by_idx), make, f"certify {args.method}", args.progress)
    return out


def _sampling_method(args) -> str:
    """The method the sampling flags imply; an explicit --method must agree with them."""
    implied = ("iss-" if args.iss else "") + ("dsrs" if args.q_dist != "none" else "np")
    if args.method is not None and args.method != implied:
        if args.method.startswith("iss") != bool(args.iss):
            need = "--iss absolute|relative" if args.method.startswith("iss") else "no --iss"
        else:
            need = "--q-dist truncated|rescaled" if args.method.endswith("dsrs") else "no --q-dist"
        raise CertifyNetError(f"--method {args.method} needs {need} (these flags sample for --method {implied})")
    return implied


def _sample_and_certify(args):
    from certifynet.cli.runs import item, open_run
    args.method = _sampling_method(args)
    run = open_run(args, "certify", default_path(f"results/certify_{args.method}.tsv"))
    if nothing_to_do(run.indices, run.shard):
        return None
    with RowLog(run.out, _log_columns(args.method), _log_meta(run.meta, args)) as log:
        def make(idx):
            counts = run.sampler.sample(idx, *item(run.data, idx))
            row = certify_row(counts, run.meta, args.method, args.alpha)
            row["time"] = counts["time"]
            return row
        run_rows(log, run.indices, make, f"certify {args.method}", args.progress,
                 run.sampler.prefetcher(run.data, item))
    return run.out


@one_line_errors
def main(argv=None):
    args = parse(build_parser(), argv)
    check_alpha(args.alpha)
    if bool(args.counts) == bool(args.model):
        raise CertifyNetError("give exactly one of --counts FILE (certify stored counts) or --model CKPT (sample and certify)")
    if args.sequential or args.radii:
        out = _sequential(args)
    else:
        out = _certify_counts_file(args) if args.counts else _sample_and_certify(args)
    if out:
        print(f"log: {shown(out)}")


SEQUENTIAL_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "pA_upper", "n0", "n",
                      "hits", "samples", "decisions", "method"]


def _check_sequential_args(args):
    """Refuse what --sequential cannot combine with, before anything is loaded or written."""
    for bad, why in ((not args.sequential, "--radii needs --sequential"),
                     (not args.radii, "--sequential needs --radii R [R ...]"),
                     (bool(args.counts), "--sequential samples as it goes: give --model, not --counts"),
                     (bool(args.iss), "--sequential replaces ISS: drop --iss"),
                     (args.q_dist != "none", "--sequential certifies NP only (DSRS is not supported): drop --q-dist"),
                     (args.method not in (None, "np"), "--sequential certifies NP only: drop --method")):
        if bad:
            raise CertifyNetError(why)
    from certifynet.certify.sequential import batch_schedule, check_radii
    check_radii(args.radii)
    batch_schedule(args.N, args.batch)


def _sequential(args):
    _check_sequential_args(args)
    from certifynet.cli.runs import item, open_run
    from certifynet.pipeline import certify_sequential, sequential_certifier
    args.method = "np"
    run = open_run(args, "certify", default_path("results/certify_sequential.tsv"))
    if nothing_to_do(run.indices, run.shard):
        return None
    certifier = sequential_certifier(run.sampler, args.radii)
    log_meta = {**_log_meta(run.meta, args), "method": "sequential", **certifier.params()}
    with RowLog(run.out, SEQUENTIAL_COLUMNS, log_meta) as log:
        run_rows(log, run.indices, lambda idx: certify_sequential(run.sampler, certifier, idx, *item(run.data, idx)),
                 "certify sequential", args.progress, run.sampler.prefetcher(run.data, item))
    return run.out

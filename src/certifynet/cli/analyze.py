"""`analyze.py LOG [LOG ...]`: certified accuracy per radius, then ACR and cost (Markdown table on stdout) and,
with --out, table.md/.tex/.csv, certified_accuracy.png/.pdf, cost.png/.pdf, pA_lower.png/.pdf (the distribution
of p̲_A, for logs that record it) and report.md (+ envelope files with --envelope)."""
from __future__ import annotations

import argparse
import sys

from certifynet import analysis
from certifynet.analysis.report import check_output, claim_output
from certifynet.cli import CliParser, one_line_errors, text_arg
from certifynet.errors import CertifyNetError, check_alpha
from certifynet.records import read_meta

ATTACK_KINDS = {"attack_audit": "an attack.py audit", "attack_curve": "an attack.py curve (give it with --empirical)"}


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="analyze.py",
        description="Summarise certify logs (ours or Cohen et al.'s): certified accuracy at given radii, ACR, "
                    "clean accuracy (r=0), abstain rate, samples and seconds per input; tables and plots.")
    p.add_argument("logs", nargs="+", metavar="LOG",
                   help="tab-separated certify log(s); sidecar <LOG>.meta.json optional")
    p.add_argument("--label", nargs="+", action="extend", metavar="L", type=text_arg,
                   help="display label, one per log in order (default: sidecar label, else method σ model)")
    p.add_argument("--radii", nargs="+", type=float, default=list(analysis.DEFAULT_RADII), metavar="R",
                   help="radius grid for certified accuracy")
    p.add_argument("--out", metavar="DIR", help="write table.md/.tex/.csv, certified_accuracy.png/.pdf, "
                                                "pA_lower.png/.pdf, report.md here (a new or empty folder, or an "
                                                "earlier analysis of the same logs)")
    p.add_argument("--force", action="store_true", help="replace an analysis of other logs in --out")
    p.add_argument("--title", type=text_arg, help="title of the plots, LaTeX caption and report")
    p.add_argument("--envelope", action="store_true",
                   help="also the envelope over σ: per (dataset, method) and radius, the max certified accuracy "
                        "(dataset/method from the sidecar, else the file name <dataset>_..._sigma_<σ>)")
    p.add_argument("--baseline", metavar="LABEL", type=text_arg,
                   help="label of the fixed-N run; adds the samples/input speed-up")
    p.add_argument("--hp-rho", type=float, metavar="RHO",
                   help="report high-probability certified accuracy, holding with prob. >= 1-RHO")
    p.add_argument("--alpha", type=float, help="α of the runs for --hp-rho (default: from each sidecar)")
    p.add_argument("--empirical", metavar="CURVE",
                   help="attack.py --eps log: print and (with --out) plot the empirical robust accuracy beside the "
                        "certified accuracy of the same inputs (certified_vs_empirical.png/.pdf)")
    return p


def _certify_logs(paths):
    """The paths minus attack.py's logs (a glob such as results/*.tsv also matches them), each skip noted."""
    keep = []
    for path in paths:
        kind = read_meta(path, required=False).get("kind")
        if kind in ATTACK_KINDS:
            print(f"note: skipping {path}: {ATTACK_KINDS[kind]}, not a certify log", file=sys.stderr)
        else:
            keep.append(path)
    if paths and not keep:
        raise CertifyNetError("no certify log among the files given (only attack.py logs)")
    return keep


@one_line_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.alpha is not None:
        check_alpha(args.alpha)
    paths = _certify_logs(args.logs)
    if args.out:  # before anything is read: a folder that is not an analysis of these logs
        check_output(args.out, paths, args.force)
    elif args.force:
        raise CertifyNetError("{force} does not apply without {out}", "force", "out")
    logs = analysis.read_logs(paths, args.label)
    versus = [analysis.certified_vs_empirical(log, args.empirical) for log in logs] if args.empirical else None
    opts = dict(hp_rho=args.hp_rho, alpha=args.alpha)
    summary = analysis.summarize(logs, args.radii, baseline=args.baseline, **opts)
    env = analysis.envelope(logs, args.radii, **opts) if args.envelope else None
    print(analysis.to_markdown(summary), end="")
    if env is not None:
        print("\nEnvelope over σ (max certified accuracy over the logs of each dataset and method):\n")
        print(analysis.to_markdown(env, bold_best=False), end="")
    if args.out:
        with claim_output(args.out, paths, args.force):  # held for the --empirical figure too
            out = analysis.write_outputs(args.out, logs, summary, env, title=args.title, baseline=args.baseline,
                                         **opts)
            print(f"wrote tables, plots and report.md to {out}", file=sys.stderr)
            if versus is not None:
                _empirical(logs, versus, args)
    elif versus is not None:
        _empirical(logs, versus, args)
    return 0


def _empirical(logs, tables, args):
    """Print certified vs empirical robust accuracy per log (analysis.certified_vs_empirical); plot with --out."""
    for log, table in zip(logs, tables):
        print(f"\n{log.label} vs the attack ({args.empirical}):\n")
        shown = table.assign(eps=table["eps"].map("{:g}".format), empirical=table["empirical"].map("{:.3f}".format),
                             certified=table["certified"].map("{:.3f}".format))
        print(analysis.to_markdown(shown, bold_best=False), end="")
    if args.out:
        paths = analysis.plot_certified_vs_empirical(logs, args.empirical, f"{args.out}/certified_vs_empirical",
                                                     title=args.title)
        print(f"wrote {paths[0]}", file=sys.stderr)

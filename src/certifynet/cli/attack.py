"""attack.py: attack the smoothed classifier with SmoothAdv's L2 PGD (Salman et al. 2019).

Audit (--log or --counts): every certified input (radius R > 0) is attacked away from its certified class c
within ε = R·--eps-scale, then PREDICT runs at x+δ with --N fresh draws at --alpha. A violation is PREDICT
returning a class other than c (an abstain is not one). Sound certificates allow at most α_cert + α_predict
violations per input; the verdict is a one-sided binomial test at --level. σ, k and the noise come from the
log's sidecar, and a log made with another model, denoiser or σ is refused.

  python scripts/attack.py --log results/np.tsv --model M.pth --m 32 --steps 20 --N 10000

Curve (--eps E [E ...]): for each ε, attack the label, then PREDICT at x+δ: the empirical robust accuracy.

  python scripts/attack.py --model M.pth --sigma 0.25 --eps 0 0.25 0.5 0.75 1 --max 100 --out results/curve.tsv
  python scripts/analyze.py results/np.tsv --empirical results/curve.tsv --out results/analysis

Each attack step is one forward/backward pass of --m noisy copies of --batch // --m inputs (PREDICT: --batch
noisy copies per forward). Rows are flushed one by one; the same command resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import os
import sys

import torch

from certifynet.attack import AuditSummary, SmoothedPGD, attack_and_predict, audited_rows, certified_targets
from certifynet.bounds import check_batch_memory, input_dim
from certifynet.certify.from_counts import certify_row
from certifynet.certify.methods import COUNTS_METHODS
from certifynet.certify.outcome import ABSTAIN, is_correct
from certifynet.cli import one_line_errors, parse
from certifynet.cli.base import per_input_parser
from certifynet.errors import CertifyNetError, check_alpha, refuse
from certifynet.models import file_sha256
from certifynet.paths import default_path, shown
from certifynet.records import RowLog, read_counts, read_meta, read_rows, select_indices
from certifynet.records.guard import write_beside
from certifynet.sampling.config import ATTACK_DEFAULTS, SamplingConfig
from certifynet.sampling.rows import nothing_to_do, run_batches
from certifynet.sampling.run import item, open_run

AUDIT_COLUMNS = ["idx", "label", "certified", "radius", "eps", "adv_norm", "base_flip", "soft_p", "predict", "p_hat",
                 "count1", "count2", "pvalue", "violation", "time"]
CURVE_FIELDS = ["predict", "correct", "p_hat", "adv_norm"]  # one column each per ε: predict@0.5, ...
EPS_MARGIN = 1e-6  # audit radius R·scale·(1 − 1e-6): float32 rounding in the projection never leaves the ball
# What a log's sidecar and this run must agree on (key, the flag that sets it here).
SAME_MODEL = (("model_sha256", "--model"), ("denoiser_sha256", "--denoiser"), ("dataset", "--dataset"),
              ("normalization", "--normalization"), ("split", "--split"), ("sigma", "--sigma"), ("k", "--k"),
              ("dist", "--dist"))


def build_parser():
    p = per_input_parser("attack.py", __doc__,
                         "TSV log (default: <log>.audit.tsv, <counts>.<method>.audit.tsv, or results/attack_curve.tsv)")
    p.set_defaults(**ATTACK_DEFAULTS)
    g = p.add_argument_group("attack (L2 PGD on the smoothed soft classifier; --N/--alpha: PREDICT at x+δ)")
    g.add_argument("--m", type=int, default=32, help="noise draws per gradient, in one batched pass (default 32)")
    g.add_argument("--steps", type=int, default=20, help="PGD steps T, each of size 2ε/T (default 20)")
    g.add_argument("--restarts", type=int, default=1,
                   help="restarts: the first from x, the others from random points of the ε-ball (default 1)")
    g.add_argument("--eps", type=float, nargs="+", metavar="E", help="curve mode: L2 radii ε in [0,1] pixel units")
    g = p.add_argument_group("audit mode")
    g.add_argument("--log", help="certify log to audit (its sidecar names the model, σ, k and α)")
    g.add_argument("--counts", help="or a counts file, certified here with --method at --alpha")
    g.add_argument("--method", default="np", choices=COUNTS_METHODS,
                   help="certification method for --counts (default np)")
    g.add_argument("--eps-scale", type=float, default=1.0,
                   help="attack within ε = R·scale (< 1 leaves a margin; > 1 attacks beyond the certificate)")
    g.add_argument("--level", type=float, default=0.01,
                   help="level of the binomial test and of the Clopper–Pearson bound (default 0.01)")
    return p


def check_args(args):
    check_alpha(args.alpha)
    if not 0 < args.level < 1:
        raise CertifyNetError(f"--level must be in (0, 1), got {args.level}")
    for name in ("m", "steps", "restarts"):
        if getattr(args, name) < 1:
            raise CertifyNetError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.log and args.counts:
        raise CertifyNetError("give one of --log and --counts")
    audit = bool(args.log or args.counts)
    if not audit:
        refuse(args, ["eps_scale", "level", "method"], "in curve mode (--eps): they belong to the audit (--log/--counts)")
    elif args.log:
        refuse(args, ["method"], "with --log (the log's own method is audited; --method is for --counts)")
    if audit == bool(args.eps):
        raise CertifyNetError("give --log LOG or --counts FILE (audit), or --eps E [E ...] (curve), not both")
    if args.eps and not all(math.isfinite(e) and e >= 0 for e in args.eps):
        raise CertifyNetError(f"--eps values must be finite and >= 0, got {args.eps}")
    if args.eps and len({f"{e:g}" for e in args.eps}) != len(args.eps):
        raise CertifyNetError(f"--eps values must be distinct, got {args.eps}")
    if args.eps and args.image and args.image_label < 0:
        raise CertifyNetError("--eps (curve mode) attacks the label: give the image's --image-label")
    check_batch_memory(_chunk(args) * args.m, input_dim(args.dataset), ("m", "batch"), "noisy copies (m per input)")
    return audit


def _audit_source(args):
    """(certify-log rows, the source's sidecar, α of its certificates) from --log or --counts."""
    path = args.log or args.counts
    if not os.path.isfile(path):
        raise CertifyNetError(f"{'certify log' if args.log else 'counts file'} '{path}' not found")
    meta = read_meta(path)
    header, rows = read_rows(path, sep=None if args.log else ",")
    if args.log:
        missing = [c for c in ("idx", "label", "predict", "radius") if c not in header]
        if missing or meta.get("kind") != "certify_log":
            raise CertifyNetError(f"'{path}' is not a certify log (kind {meta.get('kind')!r}, "
                                  f"missing {', '.join(missing) or 'nothing'})")
        return rows, meta, float(meta["alpha"])
    if meta.get("kind") != "counts":
        raise CertifyNetError(f"'{path}' is not a counts file (kind {meta.get('kind')!r})")
    meta, _, rows = read_counts(path)  # every check certify.py --counts makes: digests, completion record
    return [certify_row(r, meta, args.method, args.alpha) for r in rows], meta, args.alpha


def _adopt_noise(config, src):
    """σ, k and P from the audited run's sidecar (a different value given here is refused later)."""
    if config.sigma is None:
        config.sigma = src.get("sigma")
    if config.k is None:
        config.k = int(src.get("k") or 0)
    if config.dist is None:
        config.dist = (src.get("dist") or {}).get("dist", "gaussian")


def _check_same_model(path, src, run):
    for key, flag in SAME_MODEL:
        if src.get(key) != run.get(key):
            raise CertifyNetError(f"'{path}' was made with {key} {src.get(key)!r}, this run has {run.get(key)!r} "
                                  f"({flag}); audit a log with the model that produced it")


def _pick(items, args, shard):
    """--start/--end (on idx), then --skip/--max/--shard (on the list) of the certified inputs."""
    items = [t for t in items if t[0] >= args.start and (args.end is None or t[0] < args.end)]
    return [items[i] for i in select_indices(len(items), 0, None, args.skip, args.max, shard)]


def _stack(data, idxs):
    return torch.stack([item(data, i)[0] for i in idxs])


def _attack_meta(args, attacker):
    return {"attack": {"algorithm": "smoothadv_pgd_l2", "m": attacker.m, "steps": attacker.steps,
                       "restarts": attacker.restarts, "step_size": "2*eps/steps", "batch_inputs": _chunk(args)},
            "predict_n": args.N, "predict_alpha": args.alpha}


def _chunk(args):
    return max(1, args.batch // args.m)


def _audit(args, config):
    src_rows, src, alpha_cert = _audit_source(args)
    path = args.log or args.counts
    items = certified_targets(src_rows, args.eps_scale)
    _adopt_noise(config, src)
    default = (f"{os.path.splitext(path)[0]}.audit.tsv" if args.log
               else f"{os.path.splitext(path)[0]}.{args.method}.audit.tsv")
    run = open_run(config, "attack", default, " ".join(sys.argv))
    sampler, data, meta, shard, out = run.sampler, run.data, run.meta, run.shard, run.out
    _check_same_model(path, src, meta)
    items = _pick(items, args, shard)
    if nothing_to_do(items, shard):
        return
    attacker = SmoothedPGD(sampler.sampler.model, sampler.p_noise, args.m, args.steps, args.restarts, args.seed,
                           sampler.device)
    meta = {**meta, **_attack_meta(args, attacker), "kind": "attack_audit", "audited": os.path.abspath(path),
            "audited_sha256": file_sha256(path), "alpha_cert": alpha_cert, "eps_scale": args.eps_scale,
            "eps_margin": EPS_MARGIN, "method": src.get("method", args.method)}

    by_idx = {t[0]: t for t in items}

    def process(idxs):
        batch = [by_idx[i] for i in idxs]
        classes = torch.tensor([t[2] for t in batch])
        eps = [t[4] * (1 - EPS_MARGIN) for t in batch]
        rows = attack_and_predict(attacker, sampler.sampler, sampler.p_noise, _stack(data, idxs), classes, eps, idxs,
                                  args.N, args.alpha)
        return [{"idx": i, "label": label, "certified": c, "radius": radius, **r,
                 "violation": int(r["predict"] not in (c, ABSTAIN))} for (i, label, c, radius, _), r in zip(batch, rows)]

    with RowLog(out, AUDIT_COLUMNS, meta) as log:
        run_batches(log, list(by_idx), process, _chunk(args), "audit", args.progress)
    _, rows = read_rows(out)
    summary = AuditSummary(len(rows), sum(int(r["violation"]) for r in rows), alpha_cert, args.alpha, args.level,
                           rows=audited_rows(src_rows, args.start, args.end))
    write_beside(out, ".summary.json", lambda f: json.dump(summary.as_dict(), f, indent=1, sort_keys=True))
    print(summary.report())
    print(f"log: {shown(out)}")


def curve_columns(eps):
    return ["idx", "label"] + [f"{f}@{e:g}" for e in eps for f in CURVE_FIELDS] + ["time"]


def _curve(args, config):
    config.k = 0 if config.k is None else config.k
    config.dist = config.dist or "gaussian"
    run = open_run(config, "attack", default_path("results/attack_curve.tsv"), " ".join(sys.argv))
    sampler, data, indices, meta, shard, out = run.sampler, run.data, run.indices, run.meta, run.shard, run.out
    if nothing_to_do(indices, shard):
        return
    attacker = SmoothedPGD(sampler.sampler.model, sampler.p_noise, args.m, args.steps, args.restarts, args.seed,
                           sampler.device)
    meta = {**meta, **_attack_meta(args, attacker), "kind": "attack_curve", "eps": list(args.eps)}
    labels = {i: int(item(data, i)[1]) for i in indices}

    def process(idxs):
        x, y = _stack(data, idxs), torch.tensor([labels[i] for i in idxs])
        rows = [{"idx": i, "label": labels[i], "time": 0.0} for i in idxs]
        for e in args.eps:
            for row, r in zip(rows, attack_and_predict(attacker, sampler.sampler, sampler.p_noise, x, y, e, idxs,
                                                       args.N, args.alpha)):
                row.update({f"predict@{e:g}": r["predict"], f"correct@{e:g}": is_correct(r["predict"], row["label"]),
                            f"p_hat@{e:g}": r["p_hat"], f"adv_norm@{e:g}": r["adv_norm"]})
                row["time"] = round(row["time"] + r["time"], 4)
        return rows

    with RowLog(out, curve_columns(args.eps), meta) as log:
        run_batches(log, indices, process, _chunk(args), "attack curve", args.progress)
    _, rows = read_rows(out)
    print(f"empirical robust accuracy of the smoothed classifier ({len(rows)} inputs; PREDICT n={args.N}, "
          f"α={args.alpha:g}; abstain counts as wrong):")
    for e in args.eps:
        acc = sum(int(r[f"correct@{e:g}"]) for r in rows) / max(len(rows), 1)
        print(f"  ε={e:g}: {acc:.3f}")
    print(f"log: {shown(out)}")


@one_line_errors
def main(argv=None):
    args = parse(build_parser(), argv)
    audit = check_args(args)
    (_audit if audit else _curve)(args, SamplingConfig.from_namespace(args))
    return 0

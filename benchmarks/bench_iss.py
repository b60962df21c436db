#!/usr/bin/env python
"""Sample efficiency of ISS: the same mnist5k test digits certified four ways with a Gaussian-trained LeNet.

  fixed-N NP  vs  ISS-NP (absolute ε)      and      fixed-budget DSRS  vs  ISS-DSRS (absolute ε)

Prints mean forward passes per input, wall time, ACR, the ACR loss and the forward-pass ratio.
Trains the model first if --model is not given (σ=0.5, a few epochs on the 4,000 train digits).
The paper setting is N=100,000 on 200 digits; on a 2-core CPU use e.g. --N 20000 --digits 100 (≈15 min).

  python benchmarks/bench_iss.py --N 20000 --digits 100 [--model CKPT] [--out results/bench_iss]

It also prints the HEADROOM of the ISS rule on this model, from the fixed-N counts p̂ = count/N: the
oracle mean n*(p̂) (p known, no pilot) and E[n_ISS] for several pilot sizes n0 (free pilot, then + n0).
--np-counts reuses an existing fixed-N counts file of the same digits (e.g. from a longer run).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from certifynet.analysis import read_logs, summarize
from certifynet.certify.iss import dsrs_expected_radius_fn, iss_dsrs_oracle_size, iss_headroom
from certifynet.cli import certify, sample, train
from certifynet.models import file_sha256
from certifynet.records import read_meta, read_rows


def run(mod, argv):
    rc = mod.main([str(a) for a in argv])
    if rc:
        raise SystemExit(rc)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--N", type=int, default=20000)
    p.add_argument("--digits", type=int, default=100)
    p.add_argument("--decline", type=float, default=0.05)
    p.add_argument("--iss-n0", type=int, default=200)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--out", default="results/bench_iss")
    p.add_argument("--np-counts", help="existing fixed-N NP counts CSV of the same model and digits (skips that run)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    model = a.model
    if model is None:
        mdir = os.path.join(a.out, "lenet_gaussian")
        run(train, ["mnist5k", "lenet", "--noise", a.sigma, "--epochs", 10, "--batch", 64, "--lr", 0.01,
                    "--lr_step_size", 7, "--workers", 0, "--outdir", mdir, "--resume", "--no-progress"])
        model = os.path.join(mdir, "checkpoint.pth")
    common = ["--model", model, "--sigma", a.sigma, "--max", a.digits, "--batch", a.batch, "--alpha", a.alpha]
    iss = ["--iss", "absolute", "--iss-decline", a.decline, "--iss-n0", a.iss_n0]
    half = a.N // 2
    runs = [  # label, method, extra sample args
        (f"NP N={a.N}", "np", ["--N0", 100, "--N", a.N]),
        (f"ISS-NP ε={a.decline}", "iss-np", ["--N", a.N, *iss]),
        (f"DSRS N={half}+{half}", "dsrs", ["--N0", 100, "--N", half, "--q-dist", "truncated", "--q-percentile", "x"]),
        (f"ISS-DSRS ε={a.decline}", "iss-dsrs", ["--N", half, *iss, "--q-dist", "truncated", "--q-percentile", "x"]),
    ]
    logs, walls = [], {}
    for label, method, extra in runs:
        counts = os.path.join(a.out, f"counts_{method}.csv")
        log = os.path.join(a.out, f"{method}.tsv")
        t = time.time()
        if method == "np" and a.np_counts:
            counts = a.np_counts
            t -= check_np_counts(counts, model, a)  # its sampling time, as recorded per input
        else:
            run(sample, [*common, *extra, "--out", counts])
        run(certify, ["--counts", counts, "--method", method, "--alpha", a.alpha, "--out", log, "--label", label])
        walls[label] = time.time() - t
        logs.append(log)
    df = summarize(read_logs(logs), (0.0,)).set_index("log")
    print(f"\nmnist5k, LeNet σ={a.sigma}, {a.digits} digits, N={a.N}, α={a.alpha}, ISS n0={a.iss_n0}, "
          f"absolute ε={a.decline}")
    print(f"{'run':<22} {'passes/input':>13} {'wall s':>8} {'ACR':>7} {'ACR loss':>9} {'pass ratio':>11}")
    for base, fast in ((runs[0][0], runs[1][0]), (runs[2][0], runs[3][0])):
        for label in (base, fast):
            row = df.loc[label]
            loss = df.loc[base, "ACR"] - row["ACR"]
            ratio = df.loc[base, "samples/input"] / row["samples/input"]
            print(f"{label:<22} {row['samples/input']:>13,.0f} {walls[label]:>8.1f} {row['ACR']:>7.3f} "
                  f"{loss:>9.3f} {ratio:>10.2f}x")
    print_headroom(a.np_counts or os.path.join(a.out, "counts_np.csv"), a)
    print_dsrs_oracle(os.path.join(a.out, "counts_dsrs.csv"), a)


def print_dsrs_oracle(dsrs_counts, a):
    """Forward-pass ratio of ISS-DSRS if each input's (p_A, q_A) were known: the fixed run's (p̂, q̂)."""
    rows, meta = read_rows(dsrs_counts)[1], read_meta(dsrs_counts)
    budget, total = meta["N"], 0
    for r in rows:
        radius_fn = dsrs_expected_radius_fn(a.sigma, meta["d"], int(meta.get("k") or 0), meta["q_mode"],
                                            float(r["q_param"]), a.alpha)
        n = iss_dsrs_oracle_size(int(r["count"]) / int(r["n"]), int(r["count_q"]) / int(r["n_q"]), budget,
                                 min(a.batch, budget), a.decline, "absolute", radius_fn)
        total += 2 * n
    print(f"  ISS-DSRS oracle (p̂, q̂ known, no pilots): {(2 * budget + meta['N0']) * len(rows) / total:.2f}x")


def check_np_counts(path, model, a):
    """The reused fixed-N run must match this benchmark's model, σ, N, α and digit count; returns its seconds."""
    meta, rows = read_meta(path), read_rows(path)[1]
    n_rows = len(rows)
    for key, want in (("model_sha256", file_sha256(model)), ("sigma", a.sigma), ("N", a.N), ("alpha", a.alpha)):
        if meta.get(key) != want:
            raise SystemExit(f"error: --np-counts {path} has {key}={meta.get(key)}, this benchmark {want}")
    if n_rows != a.digits or meta.get("start", 0) != 0:
        raise SystemExit(f"error: --np-counts {path} must hold the first {a.digits} digits, has {n_rows} rows")
    return sum(float(r["time"]) for r in rows)


def print_headroom(np_counts, a):
    """Forward-pass ratios the ISS-NP rule could reach on these inputs, from the fixed-N run's p̂."""
    rows, meta = read_rows(np_counts)[1], read_meta(np_counts)
    p_hat = [int(r["count"]) / int(r["n"]) for r in rows]
    base = meta["N"] + meta["N0"]
    step = min(a.batch, a.N)
    head = iss_headroom(p_hat, a.N, step, a.sigma, a.alpha, a.decline, "absolute",
                        pilot_sizes=sorted({200, 500, 1000, 2000, 4000, a.iss_n0}))
    print(f"\nISS-NP headroom on these {len(p_hat)} inputs (p̂ = count/N of the fixed-N run; "
          f"{sum(v >= 0.999 for v in p_hat) / len(p_hat):.0%} have p̂ ≥ 0.999):")
    print(f"  oracle n*(p̂), no pilot: {base / head.pop('oracle'):.2f}x")
    for n0, (free, paid) in head.items():
        print(f"  n0={n0:<5} E[n_ISS] {free:>8,.0f}: free pilot {base / free:.2f}x, "
              f"paying the pilot {base / paid:.2f}x")


if __name__ == "__main__":
    main()

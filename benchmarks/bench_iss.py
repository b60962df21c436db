#!/usr/bin/env python
"""Sample efficiency of ISS: the same mnist5k test digits certified four ways with a Gaussian-trained LeNet.

  fixed-N NP  vs  ISS-NP (absolute ε)      and      fixed-budget DSRS  vs  ISS-DSRS (absolute ε)

Prints mean forward passes per input, wall time, ACR, the ACR loss and the forward-pass ratio.
Trains the model first if --model is not given (σ=0.5, a few epochs on the 4,000 train digits).
The paper setting is N=100,000 on 200 digits; on a 2-core CPU use e.g. --N 20000 --digits 100 (≈15 min).

  python benchmarks/bench_iss.py --N 20000 --digits 100 [--model CKPT] [--out results/bench_iss]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from certifynet.analysis import read_logs, summarize  # noqa: E402
from certifynet.cli import certify, sample, train  # noqa: E402


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


if __name__ == "__main__":
    main()

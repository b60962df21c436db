#!/usr/bin/env python
"""Soundness and power of the certificate audit on real models (mnist5k, Gaussian-trained LeNets).

For each σ: train a LeNet with the quickstart recipe (10 epochs; skipped when its checkpoint exists), certify
the first --digits test digits with NP (N draws) and DSRS (N/2 from P, N/2 from a truncated Q, heuristic x+),
then audit each log with `attack.py`: at ε = R (soundness: violations within α_c + α_p plus binomial slack),
and at ε = s·R for each --scales s > 1, i.e. certificates whose radii are deliberately inflated by s (power).
Every command is printed before it runs; the table at the end is what docs/benchmarks.md quotes.

  python benchmarks/audit_mnist5k.py                       # 200 digits, σ = 0.25 and 0.5 (~1–2 h on 2 cores)
  python benchmarks/audit_mnist5k.py --digits 20 --N 2000  # a quick look
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *argv):
    argv = [str(a) for a in argv]
    print(f"$ python scripts/{script}.py {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    t = time.time()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", f"{script}.py"), *argv], cwd=ROOT,
                       stdout=subprocess.PIPE, text=True)
    print(r.stdout.rstrip(), flush=True)
    if r.returncode:
        raise SystemExit(f"{script}.py failed (exit {r.returncode})")
    return time.time() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/audit_mnist5k")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--digits", type=int, default=200)
    p.add_argument("--N", type=int, default=10_000, help="certification draws (DSRS: N/2 + N/2)")
    p.add_argument("--alpha", type=float, default=0.001, help="α of the certificates and of PREDICT")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.25, 1.5, 2.0], help="ε = scale·R")
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--predict-N", type=int, default=2000, help="PREDICT draws at x+δ")
    p.add_argument("--epochs", type=int, default=10)
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    table = []
    for s in a.sigmas:
        model_dir = os.path.join(a.out, f"lenet_{s:g}")
        run("train", "mnist5k", "lenet", "--noise", s, "--epochs", a.epochs, "--batch", 64, "--lr", 0.01,
            "--lr_step_size", max(1, a.epochs * 2 // 3), "--workers", 0, "--outdir", model_dir, "--resume",
            "--no-progress")
        model = os.path.join(model_dir, "checkpoint.pth")
        common = ["--model", model, "--sigma", s, "--max", a.digits, "--batch", 1000, "--N0", 100]
        logs = {}
        dsrs_flags = ["--q-dist", "truncated", "--q-percentile", "x+"]
        for method, extra, n in (("np", [], a.N), ("dsrs", dsrs_flags, a.N // 2)):
            counts = os.path.join(a.out, f"counts_{method}_{s:g}.csv")
            run("sample", *common, "--N", n, *extra, "--out", counts)
            logs[method] = os.path.join(a.out, f"{method}_{s:g}.tsv")
            run("certify", "--counts", counts, "--method", method, "--alpha", a.alpha, "--out", logs[method])
        for method, log in logs.items():
            for scale in a.scales:
                out = os.path.join(a.out, f"audit_{method}_{s:g}_x{scale:g}.tsv")
                run("attack", "--log", log, "--model", model, "--eps-scale", scale, "--m", a.m,
                           "--steps", a.steps, "--N", a.predict_N, "--alpha", a.alpha, "--batch", 1000,
                           "--out", out)
                summary = json.load(open(out + ".summary.json"))
                with open(out) as f:
                    rows = list(csv.DictReader(f, delimiter="\t"))
                stats = {"abstain": sum(int(r["predict"]) == -1 for r in rows),
                         "p_hat": sum(float(r["p_hat"]) for r in rows) / max(len(rows), 1),
                         "secs": sum(float(r["time"]) for r in rows) / max(len(rows), 1)}
                table.append((s, method, scale, summary, stats))
    print(f"\n{a.digits} mnist5k test digits, certificates at N={a.N} (DSRS {a.N // 2}+{a.N // 2}), α={a.alpha:g}; "
          f"attack m={a.m}, T={a.steps}; PREDICT n={a.predict_N} at α={a.alpha:g}\n")
    print("| σ | log | ε | certified inputs attacked | violations | rate | CP 99% upper | p (H0: rate ≤ α_c+α_p) "
          "| verdict | abstains | mean p̂_c at x+δ | s/input |")
    print("|---:|:---|:---|---:|---:|---:|---:|---:|:---|---:|---:|---:|")
    for s, method, scale, r, st in table:
        verdict = "**flagged**" if r["flagged"] else "consistent"
        eps = "R" if scale == 1 else f"{scale:g}·R"
        print(f"| {s:g} | {method.upper()} | {eps} | {r['attacked']} | {r['violations']} | {r['rate']:.4f} | "
              f"{r['upper']:.4f} | {r['p_value']:.3g} | {verdict} | {st['abstain']} | {st['p_hat']:.3f} | "
              f"{st['secs']:.2f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""SmoothAdv vs Gaussian augmentation on mnist5k: empirical robust accuracy under the attack, and certified accuracy.

Trains LeNets at σ with the quickstart recipe (10 epochs, SGD lr 0.01, StepLR at 2/3, batch 64): Gaussian
augmentation; Gaussian with --num-noise-vec copies, which makes as many optimizer steps as SmoothAdv (the
references' batching turns each loader batch into m steps) without the attack; and SmoothAdv (`--method smoothadv`,
training attack of --train-eps, --attack-steps steps on --num-noise-vec draws, ε warm-up over --warmup epochs).
All are attacked on the same first --digits test digits (attack.py --eps grid: empirical robust accuracy, PREDICT
at x+δ), certified with NP at N, and compared digit by digit.  Existing checkpoints and logs are reused.

  python benchmarks/smoothadv_mnist5k.py          # σ=0.25, 100 digits (~1 h of CPU on 1 thread)
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from audit_mnist5k import run  # prints each command, then runs it

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/smoothadv_mnist5k")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--digits", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-eps", type=float, default=0.5)
    p.add_argument("--attack-steps", type=int, default=4)
    p.add_argument("--num-noise-vec", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--N", type=int, default=5000, help="NP certification draws")
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--predict-N", type=int, default=2000)
    a = p.parse_args(argv)
    s = a.sigma
    recipe = ["mnist5k", "lenet", "--noise", s, "--epochs", a.epochs, "--batch", 64, "--lr", 0.01,
              "--lr_step_size", max(1, a.epochs * 2 // 3), "--workers", 0, "--resume", "--no-progress"]
    models = {"Gaussian": (os.path.join(a.out, f"lenet_gaussian_{s:g}"), []),
              # the same number of optimizer steps as SmoothAdv (the m-chunk batching), without the attack
              f"Gaussian m={a.num_noise_vec}": (os.path.join(a.out, f"lenet_gaussian_m{a.num_noise_vec}_{s:g}"),
                                                ["--num-noise-vec", a.num_noise_vec]),
              f"SmoothAdv ε={a.train_eps:g}": (os.path.join(a.out, f"lenet_smoothadv_{s:g}"),
                                               ["--method", "smoothadv", "--eps", a.train_eps, "--attack-steps",
                                                a.attack_steps, "--num-noise-vec", a.num_noise_vec,
                                                "--warmup", a.warmup])}
    results = {}
    for name, (outdir, extra) in models.items():
        run("train", *recipe, *extra, "--outdir", outdir)
        ckpt = os.path.join(outdir, "checkpoint.pth")
        log, curve = os.path.join(outdir, "np.tsv"), os.path.join(outdir, "curve.tsv")
        run("certify", "--model", ckpt, "--sigma", s, "--N0", 100, "--N", a.N, "--max", a.digits, "--batch", 1000,
            "--out", log)
        run("attack", "--model", ckpt, "--sigma", s, "--eps", *GRID, "--max", a.digits, "--m", a.m,
            "--steps", a.steps, "--N", a.predict_N, "--batch", 1000, "--out", curve)
        run("analyze", log, "--empirical", curve, "--out", os.path.join(outdir, "analysis"))
        with open(log) as f:
            cert = list(csv.DictReader(f, delimiter="\t"))
        with open(curve) as f:
            emp = list(csv.DictReader(f, delimiter="\t"))
        results[name] = {
            "robust": {e: {r["idx"] for r in emp if int(r[f"correct@{e:g}"])} for e in GRID},
            "empirical": [sum(int(r[f"correct@{e:g}"]) for r in emp) / len(emp) for e in GRID],
            "certified": [sum(int(r["correct"]) and float(r["radius"]) >= e for r in cert) / len(cert) for e in GRID],
            "acr": sum(float(r["radius"]) * int(r["correct"]) for r in cert) / len(cert)}
    print(f"\nmnist5k LeNet σ={s:g}, first {a.digits} test digits; attack m={a.m}, T={a.steps}, "
          f"PREDICT n={a.predict_N}; NP certificates at N={a.N}, α=0.001\n")
    print("| model | " + " | ".join(f"empirical ε={e:g}" for e in GRID) + " | "
          + " | ".join(f"certified r={e:g}" for e in GRID) + " | ACR |")
    print("|:---|" + "---:|" * (2 * len(GRID) + 1))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r["empirical"] + r["certified"]) + f" | {r['acr']:.3f} |")
    names = list(results)
    for base, name in [(names[i], names[j]) for j in range(len(names)) for i in range(j)]:
        pairs = ", ".join(f"ε={e:g}: {len(results[name]['robust'][e] - results[base]['robust'][e])} vs "
                          f"{len(results[base]['robust'][e] - results[name]['robust'][e])}" for e in GRID[1:])
        print(f"\npaired, {name} vs {base} (digits robust only under the first vs only under the second): {pairs}")


if __name__ == "__main__":
    main()

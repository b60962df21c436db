#!/usr/bin/env python
"""Forward passes of sequential certification at fixed radii against fixed-N NP (Cohen) and ISS-NP.

For each σ: a Gaussian-trained LeNet on mnist5k (trained first unless --models gives one), the first
--digits test digits certified by
  NP N=100,000 (N0 = 100)  |  ISS-NP (absolute ε, pilot --iss-n0)  |  sequential, every radius at once
  |  sequential, one run per radius (the question "certified at r?" asked alone),
and the same comparison simulated on Cohen's published CIFAR-10 σ=0.5 p_A distribution (reference_data.py),
where the confidence-sequence (CS) rule also meets the calibrated group-sequential rule (with and without
futility) and an oracle that knows p_A, every rule on the same draws.
Prints mean forward passes per input, certified accuracy at each radius, and the pass ratio fixed ÷ run.

  python benchmarks/bench_sequential.py                    # σ = 0.25 and 0.5, 100 digits, N = 100,000
  python benchmarks/bench_sequential.py --sigmas 0.5 --digits 20 --N 20000 --out results/bench_seq_small
  python benchmarks/bench_sequential.py --simulation-only   # the CIFAR-10 simulation alone (~1 min, no model)

Every stage resumes: rerunning the same command samples only inputs missing from its files under --out.
--np-counts reuses fixed-N counts files (one per σ, in --sigmas order) of the same model and digits.
The fixed N = 100,000 runs dominate: about 15 min per σ on 2 free cores (hours on a busy machine).
"""
import argparse
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
from scipy.stats import binom

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
from certifynet.analysis import read_logs, summarize  # noqa: E402
from certifynet.certify.group_sequential import GroupSequentialCertifier  # noqa: E402
from certifynet.certify.gs_boundaries import calibrated_design, first_true  # noqa: E402
from certifynet.certify.iss import IssPlanner  # noqa: E402
from certifynet.certify.neyman_pearson import cp_lower, np_radius  # noqa: E402
from certifynet.certify.sequential import SequentialCertifier  # noqa: E402
from certifynet.cli import certify, sample, train  # noqa: E402

from bench_iss import check_np_counts, run  # noqa: E402  (benchmarks/, the script's folder)
from reference_data import cohen_cifar10_population  # noqa: E402

N0 = 100
REFERENCE_ORACLE = 3182   # the oracle's mean draws in the review of issue 26 (its own population draw)


def run_on_table(cert, table):
    """Run a sequential certifier on a fixed table of hits per input and batch (the same draws for every rule)."""
    batches = iter(range(table.shape[1]))
    return cert.run(lambda size, active: table[:, next(batches)], m=table.shape[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--models", nargs="+", help="checkpoints, one per σ (default: train a LeNet per σ)")
    p.add_argument("--np-counts", nargs="+", help="fixed-N counts CSVs, one per σ (skips those runs)")
    p.add_argument("--digits", type=int, default=100)
    p.add_argument("--N", type=int, default=100_000, help="fixed sample size, and the sequential cap")
    p.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--iss-n0", type=int, default=2000)
    p.add_argument("--iss-decline", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--cifar-sim", type=int, default=4000, help="inputs of the CIFAR-10 simulation (0: skip)")
    p.add_argument("--futility", type=float, default=0.05, help="γ of the calibrated rule's 'upper' futility row")
    p.add_argument("--projected-futility", type=float, default=0.001, help="γ of its 'projected' futility row")
    p.add_argument("--simulation-only", action="store_true", help="only the CIFAR-10 simulation (no CLI runs)")
    p.add_argument("--out", default="results/bench_sequential")
    a = p.parse_args(argv)
    for name in ("models", "np_counts"):
        if getattr(a, name) and len(getattr(a, name)) != len(a.sigmas):
            raise SystemExit(f"error: --{name.replace('_', '-')} needs one path per σ ({len(a.sigmas)})")
    for i, sigma in enumerate([] if a.simulation_only else a.sigmas):
        bench_sigma(a, sigma, (a.models or [None] * len(a.sigmas))[i], (a.np_counts or [None] * len(a.sigmas))[i])
    if a.cifar_sim:
        cifar_simulation(a)


def bench_sigma(a, sigma, model, np_counts):
    out = os.path.join(a.out, f"sigma_{sigma:g}")
    os.makedirs(out, exist_ok=True)
    if model is None:
        mdir = os.path.join(out, "lenet_gaussian")
        run(train, ["mnist5k", "lenet", "--noise", sigma, "--epochs", a.epochs, "--batch", 64, "--lr", 0.01,
                    "--lr_step_size", max(1, a.epochs * 7 // 10), "--workers", 0, "--outdir", mdir, "--resume",
                    "--no-progress"])
        model = os.path.join(mdir, "checkpoint.pth")
    common = ["--model", model, "--sigma", sigma, "--max", a.digits, "--batch", a.batch, "--alpha", a.alpha]
    radii = [float(r) for r in a.radii]
    runs = []  # (label, log), cheapest first so that partial results come early
    for label, rs in [("sequential, all radii", radii)] + [(f"sequential r={r:g} only", [r]) for r in radii]:
        log = os.path.join(out, "sequential_" + ("all" if len(rs) > 1 else f"r{rs[0]:g}") + ".tsv")
        run(certify, [*common, "--N0", N0, "--N", a.N, "--sequential", "--radii", *rs, "--out", log, "--label", label])
        runs.append((label, log))
    for label, method, extra, counts in (
            (f"ISS-NP ε={a.iss_decline} n0={a.iss_n0}", "iss-np",
             ["--N", a.N, "--iss", "absolute", "--iss-decline", a.iss_decline, "--iss-n0", a.iss_n0], None),
            (f"NP N={a.N}", "np", ["--N0", N0, "--N", a.N], np_counts)):
        if counts:
            check_np_counts(counts, model, SimpleNamespace(sigma=sigma, N=a.N, alpha=a.alpha, digits=a.digits))
        else:
            counts = os.path.join(out, f"counts_{method.replace('-', '_')}.csv")
            run(sample, [*common, *extra, "--out", counts])
        log = os.path.join(out, f"{method}.tsv")
        run(certify, ["--counts", counts, "--method", method, "--alpha", a.alpha, "--out", log, "--label", label])
        runs.append((label, log))
    df = summarize(read_logs([log for _, log in runs]), radii).set_index("log")
    passes = {label: df.loc[label, "samples/input"] for label, _ in runs}
    acc = {label: [df.loc[label, f"r={r:g}"] for r in radii] for label, _ in runs}
    print(f"\nmnist5k, Gaussian LeNet σ={sigma:g}, {a.digits} digits, α={a.alpha}, N={a.N:,} "
          f"(sequential: cap N, batches 32 → {a.batch})")
    print_tables(radii, passes, acc, f"NP N={a.N}", runs[-2][0], [r[0] for r in runs[:len(radii) + 1]],
                 {label: df.loc[label, "sec/input"] for label, _ in runs})


def print_tables(radii, passes, acc, fixed, iss, seq_runs, seconds=None):
    """The run table (passes, certified accuracy, [seconds per input, as logged: machine-dependent]) and the
    per-radius table of pass ratios."""
    cols = " | ".join(f"r={r:g}" for r in radii)
    sec_head, sec_rule = (" | s/input", "---:|") if seconds else ("", "")
    print(f"\n| run | passes/input | {cols} | fixed ÷ run{sec_head} |\n|:---|---:|" + "---:|" * len(radii)
          + f"---:|{sec_rule}")
    for label in (fixed, iss, seq_runs[0]):
        secs = f" | {seconds[label]:.2f}" if seconds else ""
        print(f"| {label} | {passes[label]:,.0f} | " + " | ".join(f"{v:.3f}" for v in acc[label])
              + f" | {passes[fixed] / passes[label]:.1f}×{secs} |")
    print("\n| radius | cert. acc. fixed / ISS / sequential | passes: sequential (this radius only) | "
          "fixed ÷ sequential | ISS ÷ sequential |\n|---:|:---:|---:|---:|---:|")
    for i, r in enumerate(radii):
        one = seq_runs[1 + i]
        print(f"| {r:g} | {acc[fixed][i]:.3f} / {acc[iss][i]:.3f} / {acc[one][-1 if len(acc[one]) == 1 else i]:.3f} "
              f"| {passes[one]:,.0f} | {passes[fixed] / passes[one]:.1f}× | {passes[iss] / passes[one]:.1f}× |")
    every = seq_runs[0]
    print(f"| all {len(radii)} at once | see above | {passes[every]:,.0f} | {passes[fixed] / passes[every]:.1f}× "
          f"| {passes[iss] / passes[every]:.1f}× |")


def cifar_simulation(a, sigma=0.5, seed=7):
    """The same comparison on Bernoulli draws at Cohen's published CIFAR-10 σ=0.5 p_A (as tests/test_iss.py).
    Every sequential rule and fixed N read the same table of hits per input and batch."""
    rng = np.random.default_rng(seed)
    radii = [float(r) for r in a.radii]
    p_top, correct = cohen_cifar10_population(a.cifar_sim, rng)
    schedule = SequentialCertifier(radii, sigma, a.alpha, a.N, a.batch).schedule
    table = rng.binomial(schedule[None, :], p_top[:, None])

    def accuracy(radius):
        return [float(np.mean(correct & (radius >= r))) for r in radii]

    fixed, iss = f"NP N={a.N}", f"ISS-NP ε={a.iss_decline} n0={a.iss_n0}"
    passes = {fixed: N0 + a.N}
    acc = {fixed: accuracy(np_radius(cp_lower(table.sum(axis=1), a.N, a.alpha), sigma))}
    planner = IssPlanner(a.N, min(a.batch, a.N), sigma, a.alpha, a.iss_decline, "absolute", a.iss_n0)
    n_iss = np.array([planner.sample_size(k) for k in range(a.iss_n0 + 1)])[rng.binomial(a.iss_n0, p_top)]
    count = rng.binomial(n_iss, p_top)
    passes[iss] = a.iss_n0 + float(n_iss.mean())
    acc[iss] = accuracy(np.where(n_iss > 0, np_radius(cp_lower(count, np.maximum(n_iss, 1), a.alpha), sigma), 0.0))
    seq_runs = []
    for label, rs in [("sequential, all radii", radii)] + [(f"sequential r={r:g} only", [r]) for r in radii]:
        cert = SequentialCertifier(rs, sigma, a.alpha, a.N, a.batch)
        state = run_on_table(cert, table)
        passes[label] = N0 + float(state.draws.mean())
        radius = cert.certified_radius(state)
        acc[label] = [float(np.mean(correct & (radius >= r))) for r in rs]
        seq_runs.append(label)
    print(f"\nSimulated: Cohen's published CIFAR-10 σ=0.5 p_A distribution, {a.cifar_sim} inputs, α={a.alpha}, "
          f"N={a.N:,} (ĉ_A taken as correct where Cohen's was); the confidence-sequence (CS) rule")
    print_tables(radii, passes, acc, fixed, iss, seq_runs)
    rules = rule_comparison(p_top, correct, table, radii, sigma, a.alpha, a.N, a.batch, a.futility,
                            a.projected_futility)
    power_near_threshold(rules, radii[1], sigma, a.alpha, a.N, a.batch, rng)


def oracle_draws(p_top, thresholds, alpha, n_max):
    """Draws of an oracle that knows p_A: for the hardest radius r* with θ_r* < p_A (none: 0 draws), the fixed
    n at which one-sided Clopper–Pearson at α certifies r* with probability ½ (n_max where no n ≤ n_max does).
    n is found by bisection on n ≥ 1 (the power P_{p_A}(S_n ≥ b_n), b_n = min{s : P_θ(S_n ≥ s) ≤ α}, is
    nearly monotone in n)."""
    n_all = np.arange(1, n_max + 1)
    cost = np.zeros(p_top.size)
    hardest = np.sum(p_top[:, None] > np.asarray(thresholds)[None, :], axis=1) - 1
    for i, theta in enumerate(thresholds):
        rows = np.flatnonzero(hardest == i)
        if not rows.size:
            continue
        b = first_true(lambda s, th=theta: binom.sf(s - 1, n_all, th) <= alpha, np.zeros_like(n_all), n_all)
        p = p_top[rows]
        n = first_true(lambda k, b=b, p=p: binom.sf(b[k - 1] - 1, k, p) >= 0.5, np.ones(p.size, np.int64),
                       np.full(p.size, n_max))
        cost[rows] = np.minimum(n, n_max)
    return cost


def rule_comparison(p_top, correct, table, radii, sigma, alpha, n_max, batch, futility, projected):
    """The CS rule, the calibrated group-sequential rule (without futility, with the 'upper' and the 'projected'
    futility rules, and with the calibrated mixture boundary), fixed N and the oracle, on one table of draws:
    mean/median draws and certified accuracy."""
    def accuracy(radius):
        return [float(np.mean(correct & (radius >= r))) for r in radii]

    calibrated_design.cache_clear()
    t0 = time.perf_counter()
    default = GroupSequentialCertifier(radii, sigma, alpha, n_max, batch)
    seconds = time.perf_counter() - t0
    rules = {"CS rule: Beta(1, 0.1) mixture, Ville": SequentialCertifier(radii, sigma, alpha, n_max, batch),
             "calibrated mixture boundary + closure": GroupSequentialCertifier(radii, sigma, alpha, n_max, batch,
                                                                               boundary="mixture"),
             "calibrated CP ∪ CS boundary + closure (default)": default,
             f"the same + futility 'upper', γ={futility:g}": GroupSequentialCertifier(
                 radii, sigma, alpha, n_max, batch, futility=futility),
             f"the same + futility 'projected', γ={projected:g}": GroupSequentialCertifier(
                 radii, sigma, alpha, n_max, batch, futility=projected, futility_rule="projected")}
    rows = {f"fixed N={n_max:,}": (np.full(p_top.size, float(n_max)),
                                   accuracy(np_radius(cp_lower(table.sum(axis=1), n_max, alpha), sigma)))}
    for label, cert in rules.items():
        state = run_on_table(cert, table)
        rows[label] = (state.draws.astype(float), accuracy(cert.certified_radius(state)))
    oracle = oracle_draws(p_top, default.thresholds, alpha, n_max)
    rows["oracle: fixed n knowing p_A, power ½ at the hardest certifiable radius"] = (oracle, None)
    cols = " | ".join(f"r={r:g}" for r in radii)
    print(f"\nRules on the same draws (sequential draws per input, without the N0={N0} selection draws; "
          f"batches {int(default.schedule[0])} → {batch}, cap {n_max:,}):\n\n| rule | mean draws | median | "
          f"fixed ÷ rule | rule ÷ oracle | {cols} |\n|:---|---:|---:|---:|---:|" + "---:|" * len(radii))
    for label, (draws, acc) in rows.items():
        cells = " | ".join(f"{v:.3f}" for v in acc) if acc else " | ".join("—" for _ in radii)
        print(f"| {label} | {draws.mean():,.0f} | {np.median(draws):,.0f} | {n_max / draws.mean():.1f}× | "
              f"{draws.mean() / oracle.mean():.2f}× | {cells} |")
    print(f"\nCalibrated levels λ* (certify) per radius: {default.params()['levels']}; refute: "
          f"{default.params()['refute_levels']}; calibration {seconds:.1f} s for {len(radii)} radii "
          f"({default.schedule.size} checks; this machine, uncached).")
    if (n_max, alpha, batch, tuple(radii)) == (100_000, 0.001, 500, (0.25, 0.5, 0.75, 1.0)):
        print(f"The review's oracle at these settings: {REFERENCE_ORACLE:,} draws (its own population draw); the "
              "futility rows ÷ that: " + ", ".join(f"{rows[k][0].mean() / REFERENCE_ORACLE:.2f}×" for k in rows
                                                    if "futility" in k) + ".")
    return {label: cert for label, cert in rules.items() if "mixture boundary" not in label}


def power_near_threshold(rules, radius, sigma, alpha, n_max, batch, rng, m=1000, gaps=(0.004, 0.008, 0.02)):
    """P(C) and mean draws for inputs at p_A = θ_r + gap, radius r asked alone: what futility costs in power."""
    print(f"\nPower near the threshold, r={radius:g} asked alone ({m} inputs per p_A, the same draws for every "
          f"rule):\n\n| rule | " + " | ".join(f"p_A = θ+{g:g}: P(C), draws" for g in gaps) + " |\n|:---|"
          + "---:|" * len(gaps))
    tables = {}
    for label, cert in rules.items():
        alone = type(cert)([radius], sigma, alpha, n_max, batch, **_options(cert))
        cells = []
        for gap in gaps:
            if gap not in tables:
                p = np.full(m, alone.thresholds[0] + gap)
                tables[gap] = rng.binomial(alone.schedule[None, :], p[:, None])
            state = run_on_table(alone, tables[gap])
            cells.append(f"{np.mean(alone.decisions(state)[:, 0] == 2):.3f}, {state.draws.mean():,.0f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


def _options(cert):
    """Keyword options of a certifier, to rebuild it with other radii."""
    if isinstance(cert, GroupSequentialCertifier):
        return {"boundary": cert.boundary, "futility": cert.futility, "futility_rule": cert.futility_rule}
    return {}


if __name__ == "__main__":
    main()

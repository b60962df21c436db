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
from certifynet.certify.group_sequential import GroupSequentialCertifier  # noqa: E402
from certifynet.certify.gs_boundaries import calibrated_design, first_true  # noqa: E402
from certifynet.certify.iss import IssPlanner  # noqa: E402
from certifynet.certify.neyman_pearson import cp_lower, np_radius  # noqa: E402
from certifynet.certify.sequential import SequentialCertifier, radius_threshold  # noqa: E402
from certifynet.cli import certify, sample, train  # noqa: E402
from certifynet.records import read_rows  # noqa: E402

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
    p.add_argument("--iss", action="store_true", help="also run ISS-NP on mnist5k (CPU-heavy: ~30k passes per digit)")
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


def sequential_runs(a):
    """(label, certify.py flags) of the sequential rules compared on mnist5k, the CLI default last."""
    return [("CS rule (confidence sequence)", ["--sequential-rule", "cs"]),
            ("calibrated, no futility", ["--futility", "none"]),
            (f"calibrated + futility 'upper' γ={a.futility:g}",
             ["--futility", "upper", "--futility-level", a.futility]),
            (f"calibrated + futility 'projected' γ={a.projected_futility:g} (default)",
             [] if a.projected_futility == 0.001 else ["--futility-level", a.projected_futility])]


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
    fixed = f"NP N={a.N:,}"
    logs, estimates = {}, {}
    if np_counts:
        check_np_counts(np_counts, model, SimpleNamespace(sigma=sigma, N=a.N, alpha=a.alpha, digits=a.digits))
    else:
        np_counts = os.path.join(out, "counts_np.csv")
        run(sample, [*common, "--N0", N0, "--N", a.N, "--out", np_counts])
    logs[fixed] = os.path.join(out, "np.tsv")
    run(certify, ["--counts", np_counts, "--method", "np", "--alpha", a.alpha, "--out", logs[fixed], "--label", fixed])
    if a.iss:
        label, counts = f"ISS-NP ε={a.iss_decline} n0={a.iss_n0}", os.path.join(out, "counts_iss_np.csv")
        run(sample, [*common, "--N", a.N, "--iss", "absolute", "--iss-decline", a.iss_decline, "--iss-n0", a.iss_n0,
                     "--out", counts])
        logs[label] = os.path.join(out, "iss-np.tsv")
        run(certify, ["--counts", counts, "--method", "iss-np", "--alpha", a.alpha, "--out", logs[label], "--label",
                      label])
    for i, (label, flags) in enumerate(sequential_runs(a)):
        argv = [*common, "--N0", N0, "--N", a.N, "--sequential", "--radii", *radii, *flags]
        estimates[label] = estimate_of(argv)
        logs[label] = os.path.join(out, f"sequential_{i}.tsv")
        run(certify, [*argv, "--out", logs[label], "--label", label])
    rows = {label: read_rows(log)[1] for label, log in logs.items()}
    p_hat = np.array([int(r["count"]) / int(r["n"]) for r in read_rows(np_counts)[1]])
    print(f"\nmnist5k, Gaussian LeNet σ={sigma:g}, {a.digits} digits, α={a.alpha}, N={a.N:,} (sequential: cap N, "
          f"batches 32 → {a.batch}; N0={N0} selection draws in every passes column)")
    thresholds = [radius_threshold(r, sigma) for r in radii]
    print_mnist_rules(rows, radii, fixed, oracle_draws(p_hat, thresholds, a.alpha, a.N, within_cap=True))
    seq = [label for label, _ in sequential_runs(a)]
    print_dominance(rows, seq, p_hat, thresholds, a.N)
    print_estimates(rows, estimates, fixed, a.N + N0)


def estimate_of(argv):
    """certify.py --estimate for this argv, from the library (what it would print), as an Estimate."""
    from certifynet.cli import parse
    from certifynet.sampling.config import SamplingConfig
    from certifynet.sampling.estimate import estimate_run
    return estimate_run(SamplingConfig.from_namespace(parse(certify.build_parser(), [str(v) for v in argv])))


def _draws(rows, column="samples"):
    return np.array([float(r[column]) for r in rows])


def _accuracy(rows, radii):
    radius, correct = _draws(rows, "radius"), _draws(rows, "correct").astype(bool)
    return [float(np.mean(correct & (radius >= r))) for r in radii]


def print_mnist_rules(rows, radii, fixed, oracle):
    """Passes per input (mean, median), fixed ÷ run, sequential draws ÷ the oracle's, certified accuracy."""
    cols = " | ".join(f"r={r:g}" for r in radii)
    print(f"\n| run | passes/input | median | fixed ÷ run | draws ÷ oracle | {cols} |\n|:---|---:|---:|---:|---:|"
          + "---:|" * len(radii))
    base = _draws(rows[fixed]).mean()
    for label, rs in rows.items():
        passes = _draws(rs)
        ratio = f"{_draws(rs, 'n').mean() / oracle.mean():.2f}×" if "n0" in rs[0] and "pilot" not in label else "—"
        print(f"| {label} | {passes.mean():,.0f} | {np.median(passes):,.0f} | {base / passes.mean():.1f}× | {ratio} | "
              + " | ".join(f"{v:.3f}" for v in _accuracy(rs, radii)) + " |")
    print(f"| oracle: fixed n knowing p_A (p̂ of the fixed-N run), power ½ at the hardest radius certifiable within "
          f"the cap | {oracle.mean() + N0:,.0f} | {np.median(oracle) + N0:,.0f} | {base / (oracle.mean() + N0):.1f}× | "
          f"1.00× | " + " | ".join("—" for _ in radii) + " |")


def print_dominance(rows, seq, p_hat, thresholds, n_max):
    """Sequential draws per input class (from the fixed-N run's p̂): every calibrated rule against the CS rule on
    the same draws; 'max excess' is the largest (calibrated − CS) over the inputs, ≤ 0 when it never costs more."""
    th = np.asarray(thresholds)
    near = np.min(np.abs(p_hat[:, None] - th[None, :]), axis=1) <= 0.01
    groups = {"all hits (p̂ = 1)": p_hat == 1.0, "near a threshold (|p̂ − θ_r| ≤ 0.01)": near & (p_hat < 1.0),
              "below every threshold (p̂ < θ_min)": (p_hat < th.min()) & ~near,
              "the others": (p_hat < 1.0) & ~near & (p_hat >= th.min()), "all": np.ones(p_hat.size, dtype=bool)}
    cs = _draws(rows[seq[0]], "n")
    print("\nSequential draws per input by input class, the same draws for every rule (mean draws; max excess over "
          "the CS rule):\n\n| inputs | count | " + " | ".join(seq) + " |\n|:---|---:|" + "---:|" * len(seq))
    for name, mask in groups.items():
        cells = []
        for label in seq:
            n = _draws(rows[label], "n")
            excess = f"; max excess {np.max(n[mask] - cs[mask]):+,.0f}" if label != seq[0] and mask.any() else ""
            cells.append(f"{n[mask].mean():,.0f}{excess}" if mask.any() else "—")
        print(f"| {name} | {int(mask.sum())} | " + " | ".join(cells) + " |")


def print_estimates(rows, estimates, fixed, fixed_passes):
    """certify.py --estimate (pilot) against the passes the run then spent."""
    print("\nEstimate (certify.py --estimate, pilot of ≤ 16 inputs) against the run:\n\n"
          "| run | projected passes/input | spent | projected ÷ spent |\n|:---|---:|---:|---:|")
    print(f"| {fixed} | {fixed_passes:,.0f} (exact) | {_draws(rows[fixed]).mean():,.0f} | "
          f"{fixed_passes / _draws(rows[fixed]).mean():.2f} |")
    for label, est in estimates.items():
        spent = _draws(rows[label]).mean()
        print(f"| {label} | {est.passes_per_input:,.0f} | {spent:,.0f} | {est.passes_per_input / spent:.2f} |")


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
    print(f"\nSimulated: Cohen's published CIFAR-10 σ=0.5 p_A distribution, {a.cifar_sim} inputs, α={a.alpha}, "
          f"N={a.N:,} (ĉ_A taken as correct where Cohen's was). {iss}: {passes[iss]:,.0f} passes per input "
          f"({passes[fixed] / passes[iss]:.1f}× fewer than fixed N), certified accuracy "
          + "/".join(f"{v:.3f}" for v in acc[iss]) + " (fixed N: " + "/".join(f"{v:.3f}" for v in acc[fixed]) + ").")
    rules = rule_comparison(p_top, correct, table, radii, sigma, a.alpha, a.N, a.batch, a.futility,
                            a.projected_futility)
    power_near_threshold(rules, radii[1], sigma, a.alpha, a.N, a.batch, rng)


def oracle_draws(p_top, thresholds, alpha, n_max, within_cap=False):
    """Draws of an oracle that knows p_A: for the hardest radius r* with θ_r* < p_A (none: 0 draws), the fixed
    n at which one-sided Clopper–Pearson at α certifies r* with probability ½ (n_max where no n ≤ n_max does).
    With `within_cap`, r* is the hardest such radius that some n ≤ n_max certifies with probability ½ (none: 0
    draws): the oracle does not pay the cap for a radius out of reach (mnist5k at σ = 0.25, where p̂ = 1 puts
    r = 4σ below p_A). n is found by bisection on n ≥ 1 (the power P_{p_A}(S_n ≥ b_n), b_n = min{s : P_θ(S_n ≥
    s) ≤ α}, is nearly monotone in n)."""
    n_all = np.arange(1, n_max + 1)
    cost = np.zeros(p_top.size)
    done = np.zeros(p_top.size, dtype=bool)
    for i in range(len(thresholds) - 1, -1, -1):  # hardest radius first
        theta = thresholds[i]
        rows = np.flatnonzero(~done & (p_top > theta))
        if not rows.size:
            continue
        b = first_true(lambda s, th=theta: binom.sf(s - 1, n_all, th) <= alpha, np.zeros_like(n_all), n_all)
        p = p_top[rows]
        n = first_true(lambda k, b=b, p=p: binom.sf(b[k - 1] - 1, k, p) >= 0.5, np.ones(p.size, np.int64),
                       np.full(p.size, n_max))
        fits = n <= n_max if within_cap else np.ones(rows.size, dtype=bool)
        cost[rows[fits]] = np.minimum(n[fits], n_max)
        done[rows[fits]] = True
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
             "calibrated CP ∪ CS boundary + closure, no futility": default,
             f"the same + futility 'upper', γ={futility:g}": GroupSequentialCertifier(
                 radii, sigma, alpha, n_max, batch, futility=futility),
             f"the same + futility 'projected', γ={projected:g}" + (" (CLI default)" if projected == 0.001 else ""):
                 GroupSequentialCertifier(radii, sigma, alpha, n_max, batch, futility=projected,
                                          futility_rule="projected")}
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
    within = oracle_draws(p_top, default.thresholds, alpha, n_max, within_cap=True)
    print(f"\nThe oracle aiming only at radii it can certify within the cap (as on mnist5k): {within.mean():,.0f} "
          f"draws; the rules ÷ that: " + ", ".join(f"{rows[k][0].mean() / within.mean():.2f}×" for k in rows
                                                   if k in rules) + ".")
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

"""Benchmark of the DSRS certification math on one thread: NP radius and DSRS radius, per input.

Run from the repository root: python benchmarks/bench_dsrs.py
It prints median seconds per input at the MNIST, CIFAR-10 and ImageNet settings. DSRS runs with truncated Q
(heuristic x) and with rescaled Q (σ_Q = 0.8σ). It also times the reference vectors of
tests/data/reference/dsrs_vectors.csv (vendored; see its README) and reports the speed-up over their sec_np /
sec_dsrs columns.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"              # before numpy is imported

import csv  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from certifynet.certify.dsrs import (  # noqa: E402
    dsrs_intervals,
    dsrs_radius,
    generalized_np_radius,
    truncation_percentile,
)

from reference_data import reference_file  # noqa: E402  (benchmarks/, the script's folder)

SETTINGS = [("mnist", 784, 380), ("cifar10", 3072, 1530), ("imagenet", 150528, 75260)]
SIGMA, N, ALPHA = 0.5, 50000, 0.001
# counts of the true label out of N under P; Q's error rate is 40% of P's
COUNTS_P = [40000, 45000, 47500, 49000, 49750, 49950]


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def _inputs():
    for cp in COUNTS_P:
        cq = N - round(0.4 * (N - cp))
        yield dsrs_intervals(cp, N, cq, N, ALPHA)


def bench_settings():
    print(f"median seconds per input over {len(COUNTS_P)} inputs (σ = {SIGMA}, N = {N} per run, α = {ALPHA})")
    print(f"{'setting':10s} {'NP':>9s} {'DSRS trunc':>11s} {'DSRS resc':>10s}   mean radius NP / trunc / resc")
    medians = {}
    for name, d, k in SETTINGS:
        generalized_np_radius(0.9, SIGMA, d, k)                 # builds the cached rule for (d, k)
        times = {"np": [], "truncated": [], "rescaled": []}
        radii = {"np": [], "truncated": [], "rescaled": []}
        for pl, pu, ql, qu in _inputs():
            for key, fn, args in (
                    ("np", generalized_np_radius, (pl, SIGMA, d, k)),
                    ("truncated", dsrs_radius, (pl, pu, ql, qu, SIGMA, d, k, "truncated", truncation_percentile(pl))),
                    ("rescaled", dsrs_radius, (pl, pu, ql, qu, SIGMA, d, k, "rescaled", 0.8 * SIGMA))):
                sec, r = _timed(fn, *args)
                times[key].append(sec)
                radii[key].append(r)
        med = {key: statistics.median(v) for key, v in times.items()}
        medians[name] = med
        print(f"{name:10s} {med['np']:9.4f} {med['truncated']:11.4f} {med['rescaled']:10.4f}   "
              + " / ".join(f"{statistics.mean(radii[key]):.4f}" for key in ("np", "truncated", "rescaled")))
    return medians


def bench_vectors():
    with open(reference_file("dsrs_vectors.csv")) as fh:   # part of the repository: missing is an error
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    print("\nreference vectors (reference seconds from the csv, same inputs):")
    print(f"{'id':4s} {'dataset':9s} {'mode':9s} {'NP s':>8s} {'ref NP s':>9s} {'speed-up':>9s} "
          f"{'DSRS s':>8s} {'ref DSRS s':>10s} {'speed-up':>9s}")
    ours_np, ours_dsrs, ref_np, ref_dsrs = [], [], [], []
    for row in rows:
        d, k, sigma, pl = int(row["d"]), int(row["k"]), float(row["sigma"]), float(row["pA_lower"])
        mode, qp = ("truncated", truncation_percentile(pl)) if row["q_mode"] == "th" else \
            ("rescaled", float(row["q_param"]))
        t_np, _ = _timed(generalized_np_radius, pl, sigma, d, k)
        t_ds, _ = _timed(dsrs_radius, pl, float(row["pA_upper"]), float(row["qA_lower"]), float(row["qA_upper"]),
                         sigma, d, k, mode, qp)
        r_np, r_ds = float(row["sec_np"]), float(row["sec_dsrs"])
        ours_np.append(t_np), ours_dsrs.append(t_ds), ref_np.append(r_np), ref_dsrs.append(r_ds)
        print(f"{row['id']:4s} {row['dataset']:9s} {mode:9s} {t_np:8.4f} {r_np:9.1f} {r_np / t_np:8.0f}x "
              f"{t_ds:8.4f} {r_ds:10.1f} {r_ds / t_ds:8.0f}x")
    print(f"median speed-up: NP {statistics.median(ref_np) / statistics.median(ours_np):.0f}x, "
          f"DSRS {statistics.median(ref_dsrs) / statistics.median(ours_dsrs):.0f}x "
          "(our DSRS time includes its own NP radius)")


if __name__ == "__main__":
    bench_settings()
    bench_vectors()

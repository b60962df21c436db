"""Benchmarks stay runnable: bench_iss end to end at toy size (timings are printed, never asserted)."""
import os
import re
import subprocess
import sys

import pytest

from helpers import untrained_lenet

pytestmark = pytest.mark.e2e   # every test here runs scripts as subprocesses

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_bench_iss_smoke(tmp_path):
    model = str(tmp_path / "lenet.pth")  # random init
    untrained_lenet(model, sigma=0.5)
    out = tmp_path / "bench"
    argv = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_iss.py"), "--model", model, "--N", "400",
            "--digits", "2", "--iss-n0", "100", "--batch", "100", "--out", str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-1500:]
    for fragment in ("ISS-NP ε=0.05", "ISS-DSRS ε=0.05", "oracle n*(p̂)", "n0=100", "ISS-DSRS oracle"):
        assert fragment in r.stdout, r.stdout[-1500:]
    # reuse the fixed-N counts: the same numbers come out without sampling them again
    r2 = subprocess.run([*argv, "--np-counts", str(out / "counts_np.csv")], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)
    assert r2.returncode == 0, r2.stderr[-1500:]
    assert r.stdout.split("oracle n*(p̂)")[1] == r2.stdout.split("oracle n*(p̂)")[1]
    bad = subprocess.run([*argv, "--digits", "3", "--np-counts", str(out / "counts_np.csv")], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert bad.returncode != 0 and "must hold the first 3 digits" in bad.stderr
    other = str(tmp_path / "other.pth")
    untrained_lenet(other, sigma=0.5, seed=1)
    argv[argv.index(model)] = other
    bad = subprocess.run([*argv, "--np-counts", str(out / "counts_np.csv")], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert bad.returncode != 0 and "model_sha256" in bad.stderr


def test_bench_fidelity_smoke(tmp_path):
    """NP vs DSRS (truncated, rescaled) at toy size, also at a second N: table, per-digit comparison, figures."""
    model = str(tmp_path / "lenet.pth")
    untrained_lenet(model, sigma=1.0)
    out = tmp_path / "bench"
    argv = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_fidelity.py"), "--model", model, "--N", "400",
            "--demo-N", "200", "--digits", "2", "--batch", "200", "--out", str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-1500:]
    for fragment in ("== N = 400", "== N = 200", "NP N=400", "DSRS truncated N=200+200", "DSRS rescaled N=100+100",
                     "digits both certify", "sign test", "by NP radius", "R=2: 35.6 → 41.9",
                     "ACR gain of DSRS over NP"):
        assert fragment in r.stdout, (fragment, r.stdout[-2000:])
    for name in ("fidelity_N400.png", "fidelity_N200.pdf", "table_N400.md", "table_N200.tex"):
        assert (out / name).stat().st_size > 0, name


def test_bench_sequential_smoke(tmp_path):
    model = str(tmp_path / "lenet.pth")
    untrained_lenet(model, sigma=0.5)
    argv = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_sequential.py"), "--models", model, "--sigmas",
            "0.5", "--digits", "2", "--N", "400", "--iss-n0", "100", "--batch", "100", "--cifar-sim", "200",
            "--out", str(tmp_path / "bench")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-1500:]
    for fragment in ("| NP N=400 | 500 |", "ISS-NP ε=0.05 n0=100", "| CS rule (confidence sequence) |",
                     "| calibrated + futility 'projected' γ=0.001 (default) |", "| all | 2 |", "projected ÷ spent",
                     "Simulated: Cohen's published CIFAR-10", "futility 'projected', γ=0.001 (CLI default)"):
        assert fragment in r.stdout, r.stdout[-1500:]
    excess = [int(v.replace(",", "")) for v in re.findall(r"max excess ([+-][\d,]+)", r.stdout)]
    assert excess and max(excess) <= 0, excess  # the calibrated rules never draw more than the CS rule
    # every stage resumes: the same command again samples nothing and prints the same mnist5k tables
    r2 = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r2.returncode == 0 and "resuming: 2 of 2" in r2.stderr
    table = lambda out: out.split("(sequential: cap N")[1].split("Simulated")[0]  # noqa: E731
    assert table(r.stdout) == table(r2.stdout)

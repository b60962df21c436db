"""One certificate through every entry point (issue #25): the same counts certified by `certify.py --counts`, by the
Python API (`Smooth.certify`, fed the same counts, and the `certifynet.certify` functions) and by the web app's job
stage (the web form's settings → `web.plan.build_stages` → `web.worker.run_job`, what the app's worker process runs)
give the same radius, for Gaussian noise and for the generalized Gaussian (d = 784, k = 380).

The counts are made by sample.py, then set to chosen values and resealed (digests recomputed), so that the rows
cover a certified input with every draw a hit, fewer hits, and an abstain. The radii are also checked against a
computation independent of the code under test (Clopper–Pearson by scipy, σΦ⁻¹) and the issue's vector (n = 2000
hits of 2000, α = 0.001, σ = 0.25, k = 380: R = 0.6574, where the Gaussian formula gives 0.6755).
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from scipy.stats import beta, norm

import certifynet.sampling.smooth as smooth_module
from certifynet.cli import certify, sample
from certifynet.noise import GaussianNoise, GeneralizedGaussianNoise
from certifynet.sampling.smooth import Smooth
from fuzz_workspace import _read, _write, reseal

from helpers import untrained_lenet

SIGMA, ALPHA, N, N0, D = 0.25, 0.001, 2000, 10, 784
COUNTS = [2000, 1900, 1500, 900]    # hits of N per input: all, most, some, too few (abstain)


@pytest.fixture(scope="module")
def counts_files(tmp_path_factory):
    """{k: counts file} for k = 0 and 380, each with the rows COUNTS (class 4), sampled then resealed."""
    w = tmp_path_factory.mktemp("entry")
    model = untrained_lenet(w / "m.pth", sigma=SIGMA)
    out = {}
    for k in (0, 380):
        path = w / f"c{k}.csv"
        noise = ["--dist", "general_gaussian", "--k", str(k)] if k else []
        argv = ["--model", model, "--sigma", str(SIGMA), "--N0", str(N0), "--N", "16", "--batch", "16",
                "--max", str(len(COUNTS)), "--data-dir", str(w / "data"), "--no-progress", *noise, "--out", str(path)]
        assert sample.main(argv) == 0
        meta, header, rows = _read(path)
        meta = {**meta, "N": N}
        for row, count in zip(rows, COUNTS):
            row.update(pred="4", n=str(N), count=str(count))
        _write(path, reseal(meta, header, rows), header, rows)
        out[k] = path
    return out


def _radii(log: Path) -> list[float]:
    with open(log) as f:
        return [float(r["radius"]) for r in csv.DictReader(f, delimiter="\t")]


def via_cli(counts: Path, out: Path) -> list[float]:
    assert certify.main(["--counts", str(counts), "--alpha", str(ALPHA), "--out", str(out)]) == 0
    return _radii(out)


class _CountsSampler:
    """Stands in for `Smooth`'s sampler: returns the counts of a row (selection draws: all on class `pred`)."""
    device, batch = "cpu", 1000

    def __init__(self, pred: int, count: int):
        self.pred, self.count = pred, count

    def counts(self, x, noise, n, generator):
        c = torch.zeros(10, dtype=torch.long)
        c[self.pred] = n if n == N0 else self.count
        return c


def via_smooth(k: int, monkeypatch) -> list[float]:
    noise = GeneralizedGaussianNoise(SIGMA, k, D) if k else GaussianNoise(SIGMA)
    smooth = Smooth(torch.nn.Identity(), 10, noise=noise)
    radii = []
    for count in COUNTS:   # Smooth builds its sampler on first use: this one returns the row's counts
        monkeypatch.setattr(smooth_module, "Sampler", lambda *a, c=count, **kw: _CountsSampler(4, c))
        smooth._sampler = None
        c_hat, radius = smooth.certify(torch.zeros(1, 28, 28), N0, N, ALPHA)
        assert c_hat in (4, Smooth.ABSTAIN)
        radii.append(radius)
    return radii


def via_web(counts: Path, k: int, root: Path, monkeypatch) -> list[float]:
    """The web form's settings → the job's certify stage (`web.plan.build_stages`) → the worker's `run_job`, run
    from the app's root."""
    from types import SimpleNamespace

    from certifynet.web.forms import InputChoice, input_source, parse_settings
    from certifynet.web.plan import build_stages
    from certifynet.web.worker import run_job
    form = {"method": "np", "sigma": str(SIGMA), "k": str(k), "N0": str(N0), "N": str(N), "alpha": str(ALPHA)}
    settings = parse_settings(form, D)
    job_dir = f"results/web/job{k}"
    (root / job_dir).mkdir(parents=True)
    choice = InputChoice("batch", "mnist5k", count=len(COUNTS))
    source = input_source(SimpleNamespace(path="m.pth", arch=None), None, choice, job_dir, "data")
    stages, runs = build_stages(source, settings, job_dir, batch=True)
    certify_stage = next(s for s in stages if s["stage"] == "certify")
    counts_path = root / certify_stage["options"]["counts"]
    shutil.copy(counts, counts_path)
    shutil.copy(f"{counts}.meta.json", f"{counts_path}.meta.json")
    monkeypatch.chdir(root)
    assert run_job(job_dir, {"stages": [certify_stage], "runs": runs}) == 0
    return _radii(root / certify_stage["options"]["out"])


def independent_gaussian_radius(count: int) -> float:
    """σΦ⁻¹(p̲), p̲ the one-sided Clopper–Pearson lower bound (scipy), 0 when p̲ < ½."""
    p = 0.0 if count == 0 else float(beta.ppf(ALPHA, count, N - count + 1))
    return SIGMA * float(norm.ppf(p)) if p >= 0.5 else 0.0


@pytest.mark.parametrize("k", [0, 380])
def test_same_radius_through_cli_python_and_web(counts_files, tmp_path, monkeypatch, k):
    cli = via_cli(counts_files[k], tmp_path / "cli.tsv")
    api = via_smooth(k, monkeypatch)
    web = via_web(counts_files[k], k, tmp_path / "app", monkeypatch)
    assert len(cli) == len(COUNTS)
    assert api == pytest.approx(cli, rel=1e-12, abs=0) and web == cli, (cli, api, web)
    assert cli[-1] == 0.0 and all(r > 0 for r in cli[:-1])   # the abstain, and three certified inputs
    gaussian = [independent_gaussian_radius(c) for c in COUNTS]
    if k == 0:
        assert cli == pytest.approx(gaussian, rel=1e-9)
    else:   # the vector, and a control: the Gaussian formula is 2.7% larger on the same counts
        assert cli[0] == pytest.approx(0.6574, abs=5e-5)
        assert gaussian[0] == pytest.approx(0.6755, abs=5e-5)
        assert all(g > r for g, r in zip(gaussian[:-1], cli[:-1]))


def test_smooth_refuses_a_sigma_that_disagrees_with_its_noise():
    from certifynet.errors import CertifyNetError
    with pytest.raises(CertifyNetError, match="disagrees"):
        Smooth(torch.nn.Identity(), 10, sigma=1.0, noise=GaussianNoise(0.25))
    assert json.dumps(Smooth(torch.nn.Identity(), 10, sigma=0.25, noise=GaussianNoise(0.25)).sigma) == "0.25"

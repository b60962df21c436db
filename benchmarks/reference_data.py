"""The vendored reference data (tests/data/reference/) and Cohen's published CIFAR-10 p_A population.

The one place that knows where the reference files live, for benchmarks and tests alike: benchmarks import it
as a sibling module (their folder is on sys.path when run as scripts); tests load it by path through
tests/helpers.py, so neither folder puts the other on sys.path. Standard library and numpy/scipy only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import norm

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference"


def reference_file(name: str) -> Path:
    """tests/data/reference/<name>; FileNotFoundError (naming the file and the README) when it is missing."""
    path = REFERENCE / name
    if not path.exists():
        raise FileNotFoundError(f"reference data {path} is missing: it is part of the repository "
                                f"(see {REFERENCE / 'README.md'}); restore it with git checkout")
    return path


# σ⁻¹·radius quantiles (0, 5, …, 100 %) of the inputs certified in Cohen's published CIFAR-10 σ=0.5 log
# (peer-logs/cifar10_resnet110_noise_0.50_test_sigma_0.50.tsv; N=100k, α=0.001): 16.6 % abstain, 78 % of the
# rest correct. Used as a realistic p_A distribution.
COHEN_C10_S050_Z = [0.002, 0.12, 0.222, 0.338, 0.458, 0.6, 0.715, 0.82, 0.916, 1.034, 1.212, 1.338, 1.572,
                    1.753, 1.944, 2.18, 2.416, 2.72, 3.048, 3.62, 3.92]


def cohen_cifar10_population(m, rng):
    """(p_top, correct) for m simulated inputs following Cohen's published CIFAR-10 σ=0.5 log.

    p_top = Φ(R/σ) at the radius quantiles (1 above 3.81σ, the top of Cohen's range: every draw correct);
    abstaining inputs get p_top ~ U(0.3, 0.52); `correct` marks inputs whose top class is the label.
    """
    z = np.interp(rng.uniform(size=m), np.linspace(0, 1, 21), COHEN_C10_S050_Z)
    p_top = np.where(z >= 3.81, 1.0, norm.cdf(z))
    abstains = rng.uniform(size=m) < 0.166
    p_top = np.where(abstains, rng.uniform(0.3, 0.52, m), p_top)
    correct = ~abstains & (rng.uniform(size=m) < 0.78)
    return p_top, correct

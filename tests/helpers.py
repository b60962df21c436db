"""Shared test fixtures: a linear binary classifier whose smoothed robust radius is known exactly, and the
location of the shared reference facts."""
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import norm


def _reference_dir() -> Path:
    """$CERTIFYNET_REFERENCE, else ../shared/reference beside the checkout, else /work/shared/reference."""
    env = os.environ.get("CERTIFYNET_REFERENCE")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "reference", Path("/work/shared/reference")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


REFERENCE = _reference_dir()


class LinearBinary(nn.Module):
    """f(x) = 1[w·x > 0] with ‖w‖ = 1, as 2-class logits [0, w·x]. Under any radially symmetric noise the
    smoothed classifier at x = δ·w has true robust radius δ (the distance to the hyperplane)."""

    def __init__(self, d: int, seed: int = 0):
        super().__init__()
        w = torch.randn(d, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("w", w / w.norm())

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([torch.zeros_like(s), s], 1)

    def point_at(self, dist: float, shape):
        return (dist * self.w).reshape(shape)


def cuda_test(fn):
    """Mark a test `cuda` (benchmarks/gpu_check.sh runs these) and skip it, with the reason, without CUDA."""
    import pytest
    reason = "needs a CUDA device (benchmarks/gpu_check.sh runs the cuda-marked tests on a GPU)"
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason=reason)(fn))


# σ⁻¹·radius quantiles (0, 5, …, 100 %) of the inputs certified in Cohen's published CIFAR-10 σ=0.5 log
# (N=100k, α=0.001): 16.6 % abstain, 78 % of the rest correct. Used as a realistic p_A distribution.
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


def untrained_lenet(path, sigma=0.25, seed=0) -> str:
    """Save an untrained mnist5k LeNet checkpoint (weights from torch seed `seed`, trained-σ `sigma`) at `path`;
    returns the path. Another seed gives another model (another SHA-256)."""
    from certifynet.models import get_architecture, save_checkpoint
    torch.manual_seed(seed)
    save_checkpoint(str(path), get_architecture("lenet", "mnist5k"), arch="lenet", dataset="mnist5k", num_classes=10,
                    sigma=sigma)
    return str(path)

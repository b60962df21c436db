"""Shared test fixtures: a linear binary classifier whose smoothed robust radius is known exactly, and the
location of the shared reference facts."""
import os
from pathlib import Path

import torch
import torch.nn as nn


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

"""Warm-up schedules: generalized-Gaussian k (DSRS ``--k-warmup``) and the SmoothMix weight w."""

import math


def k_at(t: int, k: int, k_warmup: int) -> int:
    """Generalized-Gaussian shape parameter at epoch (or global step) t.

    k_t = ⌈k·(1 − k^(−t/k_warmup))⌉ for t ≤ k_warmup, else k.  So k_0 = 0 and k_{k_warmup} = k − 1
    (the formula, taken literally: k·(1 − 1/k) = k − 1); k is reached at t = k_warmup + 1.
    k_warmup ≤ 0 disables the warm-up (always k); k ∈ {0, 1} gives 0 throughout the warm-up.
    """
    if t < 0 or k < 0:
        raise ValueError(f"need t >= 0 and k >= 0, got t={t}, k={k}")
    if k == 0 or k_warmup <= 0 or t > k_warmup:
        return int(k)
    # Same float evaluation as the DSRS reference (k·exp(−t·ln k / k_warmup)), so values match it bit for bit.
    return int(math.ceil(k - k * math.exp(-t * math.log(k) / k_warmup)))


def smoothmix_warmup_weight(epoch: int, warmup: int) -> float:
    """SmoothMix warm-up weight w = min(1, (epoch+1)/warmup), epoch counted from 0; warmup ≤ 0 → 1."""
    if warmup <= 0:
        return 1.0
    return min(1.0, (epoch + 1) / warmup)

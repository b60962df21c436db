"""User-facing errors. Scripts print these as one line and exit non-zero, never a traceback."""
import math

# Largest σ whose noise stays finite in float32 (and bf16, same exponent range): |z| < 40 for every
# Gaussian draw ever made, so 40·σ must be below float32's max 3.4e38.
SIGMA_MAX = 3.4028234e38 / 40.0
# More draws per input than this cannot finish (at 10⁶ forward passes/s it is about 3 hours per input).
MAX_SAMPLES = 10 ** 10


class CertifyNetError(Exception):
    """Bad input or environment that the user can fix (missing file, wrong flag, corrupt checkpoint ...)."""


def check_alpha(alpha: float) -> float:
    """α must lie in the open interval (0, 1)."""
    if not (0.0 < float(alpha) < 1.0):
        raise CertifyNetError(f"--alpha must be in (0, 1), got {alpha}")
    return float(alpha)


def check_sigma(sigma: float, flag: str = "--sigma") -> float:
    """σ must be a positive number whose noise is finite in float32 (σ ≤ SIGMA_MAX)."""
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise CertifyNetError(f"{flag} must be a number, got {sigma!r}") from None
    if not s > 0.0:
        raise CertifyNetError(f"{flag} must be > 0, got {sigma}")
    if not (math.isfinite(s) and s <= SIGMA_MAX):
        raise CertifyNetError(f"{flag} {sigma} is too large: its noise overflows float32 (σ ≤ {SIGMA_MAX:.1e})")
    return s


def check_sample_sizes(n0: int, n: int, select_draws: bool = False) -> None:
    """Require 0 < N ≤ MAX_SAMPLES and 0 ≤ N0 ≤ N (N0 ≥ 1 when N0 draws select the class)."""
    if n <= 0:
        raise CertifyNetError(f"--N must be > 0, got {n}")
    if n > MAX_SAMPLES:
        raise CertifyNetError(f"--N {n} cannot finish: more than {MAX_SAMPLES:.0e} draws per input")
    if n0 < 0 or n0 > n:
        raise CertifyNetError(f"--N0 must be in [0, N={n}], got {n0}")
    if select_draws and n0 < 1:
        raise CertifyNetError("--N0 must be >= 1: the class is the top class of the N0 selection draws "
                              "(use --select label to count the true label instead)")


def check_seed(seed: int) -> int:
    """Seeds are non-negative integers (numpy's SeedSequence takes no negative entropy)."""
    if int(seed) < 0:
        raise CertifyNetError(f"--seed must be >= 0, got {seed}")
    return int(seed)

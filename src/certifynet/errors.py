"""User-facing errors. Scripts print these as one line and exit non-zero, never a traceback."""


class CertifyNetError(Exception):
    """Bad input or environment that the user can fix (missing file, wrong flag, corrupt checkpoint ...)."""


def check_alpha(alpha: float) -> float:
    """α must lie in the open interval (0, 1)."""
    if not (0.0 < float(alpha) < 1.0):
        raise CertifyNetError(f"--alpha must be in (0, 1), got {alpha}")
    return float(alpha)


def check_sigma(sigma: float) -> float:
    """σ must be a positive finite number."""
    s = float(sigma)
    if not (s > 0.0 and s < float("inf")):
        raise CertifyNetError(f"--sigma must be > 0, got {sigma}")
    return s


def check_sample_sizes(n0: int, n: int) -> None:
    """Require 0 < N and 0 <= N0 <= N (N0 selection samples, N estimation samples)."""
    if n <= 0:
        raise CertifyNetError(f"--N must be > 0, got {n}")
    if n0 < 0 or n0 > n:
        raise CertifyNetError(f"--N0 must be in [0, N={n}], got {n0}")

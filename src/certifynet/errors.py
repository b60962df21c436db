"""User-facing diagnostics: one error type and one warning type, each naming arguments the caller's way.

- `CertifyNetError`: bad input or environment that the user can fix. Scripts print it as one line
  `error: ...` and exit 2, never a traceback (`certifynet.cli.one_line_errors`).
- A message names the arguments it is about as `{name}` fields, given after the message:
  `CertifyNetError("{alpha} must be in (0, 1), got 2", "alpha")`. From Python it reads
  "alpha must be in (0, 1), got 2"; the CLI renders the same error with the flag, "--alpha must be ...".
  A field can be mapped to an argument name by keyword: `CertifyNetError("{n} must be > 0", n="N")`
  reads "N must be > 0" in Python and "--N must be > 0" on the command line. Checks shared by the CLI and
  the Python API take the argument names as a parameter (`check_sample_sizes(..., names=("n0", "n"))`).
- `CertifyNetWarning` / `warn`: the library warns through `warnings`, never by printing; a Python user can
  filter or capture them, and the CLI prints each as one line `warning: ...`.
"""
from __future__ import annotations

import math
import warnings

# Largest σ whose noise stays finite in float32 (and bf16, same exponent range): |z| < 40 for every
# Gaussian draw ever made, so 40·σ must be below float32's max 3.4e38.
SIGMA_MAX = 3.4028234e38 / 40.0
# More draws per input than this cannot finish (at 10⁶ forward passes/s it is about 3 hours per input).
MAX_SAMPLES = 10 ** 10


def flag(name: str) -> str:
    """The command-line option of argument `name` (an argparse dest): N0 → --N0, q_sigma → --q-sigma."""
    return "--" + name.replace("_", "-")


class CertifyNetError(Exception):
    """Bad input or environment that the user can fix (missing file, wrong argument, corrupt checkpoint ...).

    `names` are `{field}` placeholders of `message` that are arguments: `str(e)` spells them as Python
    arguments, `e.render(cli=True)` as command-line options. `renamed` maps a field to the argument it
    stands for (`CertifyNetError("{n} ...", n="N")`). Other text, braces included, is left as it is."""

    def __init__(self, message: str, *names: str, **renamed: str):
        self.template = str(message)
        self.fields = {**{n: n for n in names}, **renamed}
        super().__init__(self.render())

    def render(self, cli: bool = False) -> str:
        """The message with every argument field spelled for Python (`alpha`) or the CLI (`--alpha`)."""
        text = self.template
        for field, arg in self.fields.items():
            text = text.replace("{" + field + "}", flag(arg) if cli else arg)
        return text


class CertifyNetWarning(UserWarning):
    """A warning of certifynet's (filter with `warnings.filterwarnings(..., category=CertifyNetWarning)`)."""


def warn(message: str, stacklevel: int = 2) -> None:
    """Warn through `warnings` (the CLI prints it as one line `warning: ...`)."""
    warnings.warn(message, CertifyNetWarning, stacklevel=stacklevel + 1)


def refuse(options, names, why: str, *fields: str) -> None:
    """One-line error for the first option among `names` that was given explicitly but does not apply:
    `{name} does not apply <why>`. `options.given` (a parsed command line or a `SamplingConfig`) holds the
    names given explicitly; `why` may name other arguments as `{field}`s listed in `fields`."""
    given = getattr(options, "given", options)
    for name in names:
        if name in given:
            raise CertifyNetError(f"{{{name}}} does not apply {why}", name, *fields)


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """α must lie in the open interval (0, 1)."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise CertifyNetError(f"{{{name}}} must be a number in (0, 1), got {alpha!r}", name) from None
    if not 0.0 < a < 1.0:
        raise CertifyNetError(f"{{{name}}} must be in (0, 1), got {alpha}", name)
    return a


def check_sigma(sigma: float, name: str = "sigma") -> float:
    """σ must be a positive number whose noise is finite in float32 (σ ≤ SIGMA_MAX)."""
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise CertifyNetError(f"{{{name}}} must be a number, got {sigma!r}", name) from None
    if not s > 0.0:
        raise CertifyNetError(f"{{{name}}} must be > 0, got {sigma}", name)
    if not (math.isfinite(s) and s <= SIGMA_MAX):
        raise CertifyNetError(f"{{{name}}} {sigma} is too large: its noise overflows float32 "
                              f"(σ ≤ {SIGMA_MAX:.1e})", name)
    return s


def check_sample_sizes(n0: int, n: int, select_draws: bool = False, names: tuple[str, str] = ("N0", "N")) -> None:
    """Require 0 < N ≤ MAX_SAMPLES and 0 ≤ N0 ≤ N (N0 ≥ 1 when N0 draws select the class).
    `names`: the arguments' names, ("N0", "N") for the CLI's dests, ("n0", "n") for `Smooth`."""
    f = {"n0": names[0], "n": names[1]}
    if n <= 0:
        raise CertifyNetError(f"{{n}} must be > 0, got {n}", **f)
    if n > MAX_SAMPLES:
        raise CertifyNetError(f"{{n}} {n} cannot finish: more than {MAX_SAMPLES:.0e} draws per input", **f)
    if n0 < 0 or n0 > n:
        raise CertifyNetError(f"{{n0}} must be in [0, {names[1]}={n}], got {n0}", **f)
    if select_draws and n0 < 1:
        raise CertifyNetError("{n0} must be >= 1: the class is the top class of the N0 selection draws "
                              "(use {select} label to count the true label instead)", "select", **f)


def check_seed(seed: int, name: str = "seed") -> int:
    """Seeds are non-negative integers (numpy's SeedSequence takes no negative entropy)."""
    if int(seed) < 0:
        raise CertifyNetError(f"{{{name}}} must be >= 0, got {seed}", name)
    return int(seed)

"""The numbers of a log: certified accuracy per radius (the primary result), ACR, abstain rate, cost, the
high-probability correction, Cohen's envelope over σ and the distribution of p̲_A.

For m inputs with radius R_i and correct_i ∈ {0, 1}:

- certified accuracy  acc(r) = (1/m) Σ [correct_i ∧ R_i ≥ r]   (acc(0) = clean accuracy: abstains have correct 0)
- ACR                 = (1/m) Σ R_i · correct_i   (secondary: a trivial classifier can make it arbitrarily large,
                        Sun et al., ICML 2025)
- abstain rate        = (1/m) Σ [predict_i = −1]
- samples/input       = mean(samples), else mean(n) + N0, else N + N0 (N0, N from the sidecar, if known), else NaN
- sec/input           = mean(time)
- speed-up            = samples/input of the baseline run ÷ samples/input of this run
- high-probability certified accuracy (Cohen et al., optional):
  acc(r) − [α + sqrt(α(1−α)·ln(1/ρ)/m) + ln(1/ρ)/(3m)]
- p̲_A quantiles: of the `pA_lower` column (the lower confidence bound on the top class's probability under
  noise; below ½ the smoothed classifier abstains)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from certifynet.analysis.logs import CertifyLog
from certifynet.certify.outcome import ABSTAIN
from certifynet.errors import CertifyNetError

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
PA_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
PA_QUANTILE_COLUMNS = tuple(f"{q:.0%}" for q in PA_QUANTILES)  # "10%", "25%", ...
PA_BELOW_HALF = "p̲_A < ½"


def certified_accuracy(radius, correct, radii) -> np.ndarray:
    """acc(r) = mean(correct ∧ radius ≥ r) for each r in `radii` (exact step function)."""
    radius = np.asarray(radius, dtype=float)
    good = np.sort(radius[np.asarray(correct).astype(bool)])
    return (good.size - np.searchsorted(good, np.asarray(radii, dtype=float), side="left")) / radius.size


def hp_correction(alpha: float, rho: float, m: int) -> float:
    """Cohen et al.'s high-probability margin: α + sqrt(α(1−α)·ln(1/ρ)/m) + ln(1/ρ)/(3m)."""
    inv = 1.0 / rho
    lr = math.log(inv) if math.isfinite(inv) else -math.log(rho)   # ρ < 1/DBL_MAX: 1/ρ overflows, ln(1/ρ) does not
    return alpha + math.sqrt(alpha * (1.0 - alpha) * lr / m) + lr / (3.0 * m)


def samples_per_input(log: CertifyLog) -> np.ndarray | None:
    """Forward passes spent on each input: `samples`, else n + N0 (sidecar), else N + N0 (sidecar), else None."""
    d, n0 = log.data, log._get("N0", float) or 0.0
    if "samples" in d:
        return d["samples"].to_numpy(float)
    if "n" in d:
        return d["n"].to_numpy(float) + n0
    n = log._get("N", float)
    return np.full(len(d), n + n0) if n is not None else None


def mean_samples(log: CertifyLog) -> float:
    """Forward passes per input: mean(samples), else mean(n) + N0 (sidecar), else N + N0 (sidecar), else NaN."""
    per_input = samples_per_input(log)
    return float(per_input.mean()) if per_input is not None else math.nan


def _radius_columns(radii) -> list[str]:
    return [f"r={r:g}" for r in radii]


def check_radii(radii) -> tuple:
    """Sorted, distinct, finite, non-negative radii; 0 (clean accuracy) is always included."""
    radii = [float(r) for r in radii]
    if not all(math.isfinite(r) and r >= 0 for r in radii):
        raise CertifyNetError(f"{{radii}} must be finite numbers >= 0, got {radii}", "radii")
    return tuple(sorted(set(radii) | {0.0}))


def _accuracies(logs, radii, hp_rho=None, alpha=None) -> list[np.ndarray]:
    """Per log, certified accuracy at `radii`, minus the HP margin when hp_rho is set (α: `alpha`, else sidecar)."""
    if hp_rho is not None and not (0.0 < hp_rho < 1.0):
        raise CertifyNetError(f"{{hp_rho}} must be in (0, 1), got {hp_rho}", "hp_rho")
    out = []
    for log in logs:
        acc = certified_accuracy(log.data["radius"], log.data["correct"], radii)
        if hp_rho is not None:
            a = alpha if alpha is not None else log.alpha
            if a is None:
                raise CertifyNetError(f"{log.path}: α unknown (no sidecar); pass {{alpha}} for {{hp_rho}}",
                                      "alpha", "hp_rho")
            acc = acc - hp_correction(a, hp_rho, len(log.data))
        out.append(acc)
    return out


def summarize(logs: Sequence[CertifyLog], radii=DEFAULT_RADII, *, hp_rho: float | None = None,
              alpha: float | None = None, baseline: str | None = None) -> pd.DataFrame:
    """One row per log: log, dataset, method, sigma, alpha, m, r=<radius>…, ACR, abstain, samples/input,
    sec/input, [speed-up], file.  With `hp_rho`, certified accuracies are high-probability (see module doc)."""
    radii = check_radii(radii)
    rows = []
    for log, acc in zip(logs, _accuracies(logs, radii, hp_rho, alpha)):
        d = log.data
        rows.append({
            "log": log.label, "dataset": log.dataset, "method": log.method, "sigma": log.sigma, "alpha": log.alpha,
            "m": len(d), **dict(zip(_radius_columns(radii), acc)),
            "ACR": float((d["radius"] * d["correct"]).mean()),
            "abstain": float((d["predict"] == ABSTAIN).mean()),
            "samples/input": mean_samples(log),
            "sec/input": float(d["time"].mean()),
            "file": str(log.path),
        })
    df = pd.DataFrame(rows)
    if baseline is not None:
        _add_speed_up(df, baseline)
    return df


def _add_speed_up(df: pd.DataFrame, baseline: str) -> None:
    """Insert speed-up = samples/input of the run labelled `baseline` ÷ samples/input, before `file`."""
    if baseline not in set(df["log"]):
        raise CertifyNetError(f"{{baseline}} {baseline!r} is not a log label; labels: {', '.join(df['log'])}",
                              "baseline")
    base = df.loc[df["log"] == baseline, "samples/input"].iloc[0]
    if not (base > 0):
        raise CertifyNetError(f"{{baseline}} {baseline!r} has no sample counts (needs a samples or n column)",
                              "baseline")
    df.insert(df.columns.get_loc("file"), "speed-up", base / df["samples/input"])


def envelope_group(log: CertifyLog) -> tuple:
    """(dataset, method) used to group logs of different σ; dataset from the sidecar or the file-name prefix."""
    return (log.dataset or "?", log.method or "?")


def envelope(logs: Sequence[CertifyLog], radii=DEFAULT_RADII, *, hp_rho=None, alpha=None) -> pd.DataFrame:
    """Cohen's envelope over σ: per (dataset, method) and radius, the max certified accuracy over its logs."""
    radii = check_radii(radii)
    groups = {}
    for log, acc in zip(logs, _accuracies(logs, radii, hp_rho, alpha)):
        groups.setdefault(envelope_group(log), []).append((log, acc))
    rows = []
    for (dataset, method), members in groups.items():
        sigmas = sorted({m.sigma for m, _ in members if m.sigma is not None})
        rows.append({"envelope": f"{dataset} {method}", "dataset": dataset, "method": method,
                     "σ": ", ".join(f"{s:g}" for s in sigmas), "logs": len(members),
                     **dict(zip(_radius_columns(radii), np.max([a for _, a in members], axis=0)))})
    return pd.DataFrame(rows)


def pa_lower(log: CertifyLog) -> np.ndarray | None:
    """The finite p̲_A values of the log (column `pA_lower`), or None when it has none (Cohen's logs)."""
    if "pA_lower" not in log.data:
        return None
    values = pd.to_numeric(log.data["pA_lower"], errors="coerce").to_numpy(float)
    values = values[np.isfinite(values)]
    return values if values.size else None


def pa_lower_quantiles(logs: Sequence[CertifyLog], quantiles=PA_QUANTILES) -> pd.DataFrame:
    """One row per log that records p̲_A: log, dataset, sigma, m (inputs with p̲_A), its quantiles (columns
    "10%", ...; numpy's linear interpolation) and the share of inputs with p̲_A < ½ (the abstains)."""
    rows = []
    for log in logs:
        values = pa_lower(log)
        if values is None:
            continue
        rows.append({"log": log.label, "dataset": log.dataset, "sigma": log.sigma, "m": int(values.size),
                     **{f"{q:.0%}": float(v) for q, v in zip(quantiles, np.quantile(values, quantiles))},
                     PA_BELOW_HALF: float((values < 0.5).mean())})
    return pd.DataFrame(rows)

"""Certify one stored counts row with a chosen method. Pure numpy/scipy (no torch, no files: reading a
counts file is `certifynet.records.read_counts`).

Methods (`certify.methods`):
- `np`: Cohen's bound p̲_A = CP_lower(count; n, α) on the estimation draws; R = σΦ⁻¹(p̲_A) for Gaussian P,
  the generalized-Gaussian NP radius for k > 0. Abstain when p̲_A < ½.
- `iss-np`: the same on the fresh ISS draws (the pilot only chose ĉ_A and n; it is never reused).
- `dsrs` / `iss-dsrs`: two-sided CP intervals for P and Q at α/2 each; R = max(NP from P, DSRS).
  Rows where heuristic x+ re-sampled P instead of Q (`q_kind == 'P'`) pool both P runs: NP on
  (count + count_q)/(n + n_q) at α/4 (`certify.dsrs.pooled_np_alpha`: x+ is then sound at α overall).
"""
from __future__ import annotations

import math

from certifynet.certify.dsrs import dsrs_intervals, dsrs_radius, generalized_np_radius, pooled_np_alpha
from certifynet.certify.methods import COUNTS_METHODS, counts_kind
from certifynet.certify.methods import METHODS as METHOD_TABLE
from certifynet.certify.neyman_pearson import cp_lower
from certifynet.certify.outcome import ABSTAIN, is_correct
from certifynet.errors import CertifyNetError

# The methods `certify_row` runs (the `--method` choices with --counts); the same tuple as
# `certify.methods.COUNTS_METHODS`, kept under this name for this module's importers.
METHODS = COUNTS_METHODS

__all__ = ["METHODS", "certify_row", "check_method", "counts_kind", "readers_of"]


def readers_of(kind: str) -> tuple[str, ...]:
    """The methods that can certify counts of `kind` (the kind's own method first)."""
    readers = [m for m in COUNTS_METHODS if kind in METHOD_TABLE[m].reads]
    return tuple(sorted(readers, key=lambda m: m != kind))


def check_method(method: str | None, kind: str, where: str) -> str:
    """The method to run on counts of `kind` (default: the kind itself); a method that cannot read them is
    an error naming the sampling flags it needs."""
    if method is None:
        return kind
    if method not in COUNTS_METHODS:
        raise CertifyNetError(f"unknown {{method}} '{method}'; choose from {', '.join(COUNTS_METHODS)}", "method")
    readers = readers_of(kind)
    if method not in readers:
        raise CertifyNetError(f"{{method}} {method} needs counts sampled with {METHOD_TABLE[method].sampling}; "
                              f"{where} holds {kind} counts: use {{method}} {' or '.join(readers)}", "method")
    return method


def _np_radius_for(p_lower: float, meta: dict) -> float:
    """NP radius of the run's P: σΦ⁻¹(p̲) for the Gaussian, the generalized-Gaussian radius for k > 0."""
    return generalized_np_radius(p_lower, meta["sigma"], meta["d"], int(meta.get("k") or 0))


def _int(row: dict, key: str) -> int:
    v = row.get(key, "")
    return int(v) if v not in ("", None) else 0


def _dsrs_bound(row: dict, meta: dict, alpha: float, out: dict) -> tuple[float, float]:
    """(p̲_A, R) of DSRS: CP intervals for P and Q at α/2 each (their ends go into `out`); a row whose Q draws
    were replaced by P draws (heuristic x+, q_kind 'P') pools both P runs into NP at α/4 (`pooled_np_alpha`)."""
    n, count, n_q, count_q = _int(row, "n"), _int(row, "count"), _int(row, "n_q"), _int(row, "count_q")
    if "n_q" not in row or n_q <= 0:
        raise CertifyNetError("{method} dsrs needs a counts file with Q counts (sample.py --q-dist ...)", "method")
    if row.get("q_kind") == "P":  # heuristic x+: all P draws hit; pool the two P runs
        p_low = cp_lower(count + count_q, n + n_q, pooled_np_alpha(alpha))
        return p_low, (_np_radius_for(p_low, meta) if p_low >= 0.5 else 0.0)
    p_low, p_up, q_low, q_up = dsrs_intervals(count, n, count_q, n_q, alpha)
    q_param = float(row["q_param"]) if row.get("q_param") not in (None, "") else float(meta["q_param"])
    radius = (dsrs_radius(p_low, p_up, q_low, q_up, meta["sigma"], meta["d"], int(meta.get("k") or 0),
                          meta["q_mode"], q_param) if p_low >= 0.5 else 0.0)
    out.update(pA_upper=p_up, qA_lower=q_low, qA_upper=q_up)
    return p_low, radius


def certify_row(row: dict, meta: dict, method: str, alpha: float) -> dict:
    """Certificate for one counts row: {idx, label, predict, radius, correct, pA_lower, n, samples, ...}.

    Abstains (predict = −1, R = 0) when no class was selected or p̲_A < ½; `correct` is `outcome.is_correct`
    (never for an abstain or a label of −1)."""
    if method not in COUNTS_METHODS:
        raise CertifyNetError(f"unknown {{method}} '{method}'; choose from {', '.join(COUNTS_METHODS)}", "method")
    idx, label, pred = _int(row, "idx"), _int(row, "label"), int(row["pred"])
    n, count, n0 = _int(row, "n"), _int(row, "count"), _int(row, "n0")
    if count > n or _int(row, "count_q") > _int(row, "n_q") or count < 0:
        raise CertifyNetError(f"counts row idx={idx}: count exceeds its sample size")
    out = {"idx": idx, "label": label, "n": n, "samples": n0 + n + _int(row, "n_q") + _int(row, "pilot_n_q")}
    p_low = radius = 0.0
    if pred >= 0 and n > 0:
        if method.endswith("dsrs"):
            p_low, radius = _dsrs_bound(row, meta, alpha, out)
        else:
            p_low = cp_lower(count, n, alpha)
            radius = _np_radius_for(p_low, meta) if p_low >= 0.5 else 0.0
    abstain = pred < 0 or p_low < 0.5
    if abstain or not math.isfinite(radius):
        radius = 0.0
    predict = ABSTAIN if abstain else pred
    out.update(predict=predict, radius=float(radius), correct=is_correct(predict, label),
               pA_lower=float(p_low), method=method)
    return out

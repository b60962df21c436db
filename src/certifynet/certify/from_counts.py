"""Certify one stored counts row with a chosen method. Pure numpy/scipy (no torch).

Methods:
- `np`: Cohen's bound p̲_A = CP_lower(count; n, α) on the estimation draws; R = σΦ⁻¹(p̲_A) for Gaussian P,
  the generalized-Gaussian NP radius for k > 0. Abstain when p̲_A < ½.
- `iss-np`: the same on the fresh ISS draws (the pilot only chose ĉ_A and n; it is never reused).
- `dsrs` / `iss-dsrs`: two-sided CP intervals for P and Q at α/2 each; R = max(NP from P, DSRS).
  Rows where heuristic x+ re-sampled P instead of Q (`q_kind == 'P'`) pool both P runs: NP on
  (count + count_q)/(n + n_q) at α.
"""
from __future__ import annotations

import math

from certifynet.certify.dsrs import generalized_np_radius
from certifynet.certify.neyman_pearson import cp_lower
from certifynet.errors import CertifyNetError

METHODS = ("np", "dsrs", "iss-np", "iss-dsrs")


def _np_radius_for(p_lower: float, meta: dict) -> float:
    """NP radius of the run's P: σΦ⁻¹(p̲) for the Gaussian, the generalized-Gaussian radius for k > 0."""
    return generalized_np_radius(p_lower, meta["sigma"], meta["d"], int(meta.get("k") or 0))


def _int(row, key):
    v = row.get(key, "")
    return int(float(v)) if v not in ("", None, "nan") else 0


def certify_row(row: dict, meta: dict, method: str, alpha: float) -> dict:
    """Certificate for one counts row: {idx, label, predict, radius, correct, pA_lower, n, samples, ...}."""
    if method not in METHODS:
        raise CertifyNetError(f"unknown --method '{method}'; choose from {', '.join(METHODS)}")
    idx, label, pred = _int(row, "idx"), _int(row, "label"), int(float(row["pred"]))
    n, count, n0 = _int(row, "n"), _int(row, "count"), _int(row, "n0")
    n_q, count_q = _int(row, "n_q"), _int(row, "count_q")
    if count > n or count_q > n_q or count < 0:
        raise CertifyNetError(f"counts row idx={idx}: count exceeds its sample size")
    out = {"idx": idx, "label": label, "n": n, "samples": n0 + n + n_q + _int(row, "pilot_n_q")}
    p_low = radius = 0.0
    if pred >= 0 and n > 0:
        if method.endswith("dsrs"):
            if "n_q" not in row or n_q <= 0:
                raise CertifyNetError("--method dsrs needs a counts file with Q counts (sample.py --q-dist ...)")
            if row.get("q_kind") == "P":  # heuristic x+: all P draws hit; pool the two P runs
                p_low = cp_lower(count + count_q, n + n_q, alpha)
                radius = _np_radius_for(p_low, meta) if p_low >= 0.5 else 0.0
            else:
                from certifynet.certify.dsrs import dsrs_intervals, dsrs_radius
                p_low, p_up, q_low, q_up = dsrs_intervals(count, n, count_q, n_q, alpha)
                q_mode = meta["q_mode"]
                q_param = float(row["q_param"]) if row.get("q_param") not in (None, "") else float(meta["q_param"])
                radius = (dsrs_radius(p_low, p_up, q_low, q_up, meta["sigma"], meta["d"], int(meta.get("k") or 0),
                                      q_mode, q_param) if p_low >= 0.5 else 0.0)
                out.update(pA_upper=p_up, qA_lower=q_low, qA_upper=q_up)
        else:
            p_low = cp_lower(count, n, alpha)
            radius = _np_radius_for(p_low, meta) if p_low >= 0.5 else 0.0
    abstain = pred < 0 or p_low < 0.5
    if abstain or not math.isfinite(radius):
        radius = 0.0
    predict = -1 if abstain else pred
    out.update(predict=predict, radius=float(radius), correct=int(predict == label and predict >= 0),
               pA_lower=float(p_low), method=method)
    return out

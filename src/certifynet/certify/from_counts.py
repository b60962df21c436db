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
import os

from certifynet.certify.dsrs import generalized_np_radius
from certifynet.certify.neyman_pearson import cp_lower
from certifynet.errors import SIGMA_MAX, CertifyNetError
from certifynet.records import CHECK_COLUMN, read_rows, read_meta, row_check, verify_settings, writer_active

METHODS = ("np", "dsrs", "iss-np", "iss-dsrs")
# Which --method may read which kind of counts file (NP on the P draws of a DSRS run is valid too).
METHODS_FOR_KIND = {"np": ("np",), "dsrs": ("dsrs", "np"), "iss-np": ("iss-np",), "iss-dsrs": ("iss-dsrs", "iss-np")}
SAMPLING_FLAGS = {"np": "no --q-dist, no --iss", "dsrs": "--q-dist truncated|rescaled",
                  "iss-np": "--iss absolute|relative", "iss-dsrs": "--iss ... --q-dist ..."}


def counts_kind(meta: dict) -> str:
    """'np', 'dsrs', 'iss-np' or 'iss-dsrs': what a counts file holds, from its sidecar."""
    return ("iss-" if meta.get("iss") else "") + ("dsrs" if meta.get("q_mode") else "np")


def check_method(method: str, kind: str, where: str) -> str:
    """The method to run on counts of `kind` (default: the kind itself); a method that cannot read them is
    an error naming the sampling flags it needs."""
    if method is None:
        return kind
    if method not in METHODS:
        raise CertifyNetError(f"unknown --method '{method}'; choose from {', '.join(METHODS)}")
    if method not in METHODS_FOR_KIND[kind]:
        raise CertifyNetError(f"--method {method} needs counts sampled with {SAMPLING_FLAGS[method]}; {where} holds "
                              f"{kind} counts: use --method {' or '.join(METHODS_FOR_KIND[kind])}")
    return method


def _field(meta, key, kind, where, lo=None, optional=False):
    """meta[key] checked to be an int/float/str/None as `kind` says, and >= lo; one-line error naming it."""
    if key not in meta:
        if optional:
            return None
        raise CertifyNetError(f"{where} lacks '{key}' (was it edited?)")
    v = meta[key]
    ok = {"int": isinstance(v, int) and not isinstance(v, bool),
          "num": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          "opt_str": v is None or isinstance(v, str)}[kind]
    if not ok or (lo is not None and v < lo):
        want = {"int": "an integer", "num": "a finite number", "opt_str": "a string or null"}[kind]
        raise CertifyNetError(f"{where}: '{key}' must be {want}" + (f" >= {lo}" if lo is not None else "")
                              + f", got {v!r}")
    return v


def validate_counts_meta(meta: dict, where: str) -> None:
    """The sidecar fields certification reads, with their types and ranges."""
    sigma = _field(meta, "sigma", "num", where)
    if not 0 < sigma <= SIGMA_MAX:
        raise CertifyNetError(f"{where}: 'sigma' must be in (0, {SIGMA_MAX:.1e}], got {sigma!r}")
    d = _field(meta, "d", "int", where, 1)
    k = _field(meta, "k", "int", where, 0)
    if 2 * k > d - 2:
        raise CertifyNetError(f"{where}: 'k' = {k} is out of range for d = {d}")
    _field(meta, "N", "int", where, 1)
    _field(meta, "N0", "int", where, 0)
    _field(meta, "num_classes", "int", where, 2)
    for key in ("q_mode", "iss"):
        _field(meta, key, "opt_str", where, optional=True)
    if meta.get("q_mode") not in (None, "truncated", "rescaled"):
        raise CertifyNetError(f"{where}: 'q_mode' must be truncated, rescaled or null, got {meta['q_mode']!r}")
    if meta.get("iss") not in (None, "absolute", "relative"):
        raise CertifyNetError(f"{where}: 'iss' must be absolute, relative or null, got {meta['iss']!r}")
    if meta.get("q_mode") == "rescaled":
        _field(meta, "q_param", "num", where, 0)
    if not isinstance(meta.get("columns"), list) or not all(isinstance(c, str) for c in meta["columns"]):
        raise CertifyNetError(f"{where}: 'columns' must be the list of the file's column names")


def _row_int(row, key, lineno, where, lo=None, hi=None):
    text = row.get(key, "")
    try:
        v = int(text)
    except ValueError:
        raise CertifyNetError(f"{where} line {lineno}: {key} {text!r} is not an integer") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise CertifyNetError(f"{where} line {lineno}: {key} = {v} is outside {rng}")
    return v


def validate_counts_rows(header, rows, meta: dict, where: str) -> None:
    """Every row against its sidecar: integer fields, 0 ≤ count ≤ n, n = N (≤ N under ISS), n0 = N0, the Q and
    pilot counts alike, and the `check` digest that binds the row to the sidecar's settings."""
    iss, dsrs = bool(meta.get("iss")), bool(meta.get("q_mode"))
    big_n, n0_meta, classes = meta["N"], meta["N0"], meta["num_classes"]
    settings = verify_settings(meta, f"sidecar '{where}.meta.json'")
    has_check = CHECK_COLUMN in header
    if settings and not has_check:
        raise CertifyNetError(f"'{where}' lacks its '{CHECK_COLUMN}' column (the sidecar records a digest)")
    if has_check and not settings:
        raise CertifyNetError(f"sidecar '{where}.meta.json' lacks the digest its rows are checked against "
                              f"(was its 'integrity' entry removed?)")
    for lineno, r in enumerate(rows, start=2):
        _row_int(r, "idx", lineno, where, 0)
        _row_int(r, "label", lineno, where, -1, classes - 1)  # -1: an image of unknown label (--image)
        _row_int(r, "pred", lineno, where, 0, classes - 1)
        n = _row_int(r, "n", lineno, where, 0, big_n)
        if not iss and n != big_n:
            raise CertifyNetError(f"{where} line {lineno}: n = {n}, but the sidecar's N is {big_n} (was it edited?)")
        _row_int(r, "count", lineno, where, 0, n)
        n0 = _row_int(r, "n0", lineno, where, 0)
        if n0 != n0_meta:
            raise CertifyNetError(f"{where} line {lineno}: n0 = {n0}, but the sidecar's N0 is {n0_meta}")
        if dsrs:
            n_q = _row_int(r, "n_q", lineno, where, 0, big_n)
            if n_q != n:
                raise CertifyNetError(f"{where} line {lineno}: n_q = {n_q} differs from n = {n}")
            _row_int(r, "count_q", lineno, where, 0, n_q)
            if r.get("q_kind") not in ("Q", "P"):
                raise CertifyNetError(f"{where} line {lineno}: q_kind must be Q or P, got {r.get('q_kind')!r}")
        if iss:
            pilot = _row_int(r, "pilot_n", lineno, where, 0)
            _row_int(r, "pilot_count", lineno, where, 0, pilot)
            if dsrs:
                _row_int(r, "pilot_count_q", lineno, where, 0, _row_int(r, "pilot_n_q", lineno, where, 0))
        if has_check and settings:
            values = [r[c] for c in header if c != CHECK_COLUMN]
            if r[CHECK_COLUMN] != row_check(settings, values):
                raise CertifyNetError(f"{where} line {lineno} (idx {r['idx']}) was edited after sampling: its "
                                      f"'{CHECK_COLUMN}' digest does not match its values and the sidecar's settings")


def read_counts(path: str):
    """(sidecar, header, rows) of a counts file, refused with a one-line error unless every check passes:
    not being written, a valid sidecar, matching columns, no incomplete row, every row valid (see above)."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"counts file '{path}' not found")
    holder = writer_active(path)
    if holder:
        raise CertifyNetError(f"counts file '{path}' is still being written by {holder}; certify it when sampling ends")
    meta = read_meta(path)
    if meta.get("kind") not in ("counts", None):
        raise CertifyNetError(f"'{path}' is a {meta.get('kind')}, not a counts file written by sample.py")
    validate_counts_meta(meta, f"sidecar '{path}.meta.json'")
    header, rows = read_rows(path, sep=",")
    if meta["columns"] != header:
        raise CertifyNetError(f"'{path}' does not match its sidecar (columns differ); was it edited?")
    validate_counts_rows(header, rows, meta, path)
    return meta, header, rows


def _np_radius_for(p_lower: float, meta: dict) -> float:
    """NP radius of the run's P: σΦ⁻¹(p̲) for the Gaussian, the generalized-Gaussian radius for k > 0."""
    return generalized_np_radius(p_lower, meta["sigma"], meta["d"], int(meta.get("k") or 0))


def _int(row, key):
    v = row.get(key, "")
    return int(v) if v not in ("", None) else 0


def certify_row(row: dict, meta: dict, method: str, alpha: float) -> dict:
    """Certificate for one counts row: {idx, label, predict, radius, correct, pA_lower, n, samples, ...}."""
    if method not in METHODS:
        raise CertifyNetError(f"unknown --method '{method}'; choose from {', '.join(METHODS)}")
    idx, label, pred = _int(row, "idx"), _int(row, "label"), int(row["pred"])
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

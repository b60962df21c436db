"""Reading a counts file written by sample.py, refused with a one-line error unless every check passes.

`read_counts` = not being written (`lock.writer_active`) + a valid sidecar (`validate_counts_meta`) +
matching columns + no incomplete row + every row valid against its sidecar (`validate_counts_rows`,
including the digests of `records.integrity`: settings, each row's `check`, and the completion record that
fixes the rows and their order). A file without digests is refused; an incomplete one (no completion record,
a shard, a merge with missing inputs) is read with a warning. Certifying a row is
`certify.from_counts.certify_row` (pure math).
"""
from __future__ import annotations

import math
import os

from certifynet.certify.dsrs.family import check_k
from certifynet.errors import SIGMA_MAX, CertifyNetError, warn
from certifynet.records.integrity import CHECK_COLUMN, check_completion, file_digester, verify_row, verify_settings
from certifynet.records.lock import writer_active
from certifynet.records.rowlog import read_rows
from certifynet.records.sidecar import read_meta

_WANT = {"int": "an integer", "num": "a finite number", "opt_str": "a string or null"}


def _is(kind: str, v) -> bool:
    """v is an int / a finite number / a string or None, as `kind` says (bool is none of them)."""
    if kind == "opt_str":
        return v is None or isinstance(v, str)
    if isinstance(v, bool):
        return False
    if kind == "int":
        return isinstance(v, int)
    return isinstance(v, (int, float)) and math.isfinite(v)


def _field(meta: dict, key: str, kind: str, where: str, lo=None, optional: bool = False):
    """meta[key] checked to be an int/float/str/None as `kind` says, and >= lo; one-line error naming it."""
    if key not in meta:
        if optional:
            return None
        raise CertifyNetError(f"{where} lacks '{key}' (was it edited?)")
    v = meta[key]
    if not _is(kind, v) or (lo is not None and v < lo):
        raise CertifyNetError(f"{where}: '{key}' must be {_WANT[kind]}" + (f" >= {lo}" if lo is not None else "")
                              + f", got {v!r}")
    return v


def validate_counts_meta(meta: dict, where: str) -> None:
    """The sidecar fields certification reads, with their types and ranges."""
    sigma = _field(meta, "sigma", "num", where)
    if not 0 < sigma <= SIGMA_MAX:
        raise CertifyNetError(f"{where}: 'sigma' must be in (0, {SIGMA_MAX:.1e}], got {sigma!r}")
    d = _field(meta, "d", "int", where, 1)
    k = _field(meta, "k", "int", where, 0)
    try:
        check_k(d, k)  # the one range of the generalized Gaussian: 0 ≤ 2k < d
    except CertifyNetError:
        raise CertifyNetError(f"{where}: 'k' = {k} is out of range for d = {d}") from None
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


def _row_int(row: dict, key: str, lineno: int, where: str, lo=None, hi=None) -> int:
    text = row.get(key, "")
    try:
        v = int(text)
    except ValueError:
        raise CertifyNetError(f"{where} line {lineno}: {key} {text!r} is not an integer") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise CertifyNetError(f"{where} line {lineno}: {key} = {v} is outside {rng}")
    return v


def _check_p_counts(r: dict, lineno: int, meta: dict, where: str) -> int:
    """idx, label, pred, and the P counts: 0 ≤ count ≤ n, n = N (≤ N under ISS), n0 = N0. Returns n."""
    big_n, classes = meta["N"], meta["num_classes"]
    _row_int(r, "idx", lineno, where, 0)
    _row_int(r, "label", lineno, where, -1, classes - 1)  # -1: an image of unknown label (--image)
    _row_int(r, "pred", lineno, where, 0, classes - 1)
    n = _row_int(r, "n", lineno, where, 0, big_n)
    if not meta.get("iss") and n != big_n:
        raise CertifyNetError(f"{where} line {lineno}: n = {n}, but the sidecar's N is {big_n} (was it edited?)")
    _row_int(r, "count", lineno, where, 0, n)
    n0 = _row_int(r, "n0", lineno, where, 0)
    if n0 != meta["N0"]:
        raise CertifyNetError(f"{where} line {lineno}: n0 = {n0}, but the sidecar's N0 is {meta['N0']}")
    return n


def _check_q_and_pilot(r: dict, lineno: int, n: int, meta: dict, where: str) -> None:
    """DSRS: n_q = n, 0 ≤ count_q ≤ n_q, q_kind Q or P. ISS: the pilot counts within their draws."""
    dsrs = bool(meta.get("q_mode"))
    if dsrs:
        n_q = _row_int(r, "n_q", lineno, where, 0, meta["N"])
        if n_q != n:
            raise CertifyNetError(f"{where} line {lineno}: n_q = {n_q} differs from n = {n}")
        _row_int(r, "count_q", lineno, where, 0, n_q)
        if r.get("q_kind") not in ("Q", "P"):
            raise CertifyNetError(f"{where} line {lineno}: q_kind must be Q or P, got {r.get('q_kind')!r}")
    if meta.get("iss"):
        pilot = _row_int(r, "pilot_n", lineno, where, 0)
        _row_int(r, "pilot_count", lineno, where, 0, pilot)
        if dsrs:
            _row_int(r, "pilot_count_q", lineno, where, 0, _row_int(r, "pilot_n_q", lineno, where, 0))


def validate_counts_rows(header: list[str], rows: list[dict], meta: dict, where: str) -> str | None:
    """Every row against its sidecar: integer fields, 0 ≤ count ≤ n, n = N (≤ N under ISS), n0 = N0, the Q and
    pilot counts alike, the `check` digest that binds the row to the sidecar's settings, then the completion
    record over all rows in order. Returns the warning for an incomplete file (`integrity.check_completion`)."""
    sidecar = f"sidecar '{where}.meta.json'"
    digester = file_digester(meta, sidecar)  # no digests, or the wrong key: refused
    settings = verify_settings(meta, sidecar, digester)
    if CHECK_COLUMN not in header:
        raise CertifyNetError(f"'{where}' lacks its '{CHECK_COLUMN}' column (the sidecar records a digest)")
    for lineno, r in enumerate(rows, start=2):
        n = _check_p_counts(r, lineno, meta, where)
        _check_q_and_pilot(r, lineno, n, meta, where)
        verify_row(r, header, settings, f"{where} line {lineno} (idx {r['idx']})", digester)
    return check_completion(meta, [r[CHECK_COLUMN] for r in rows], where, digester)


def read_counts(path: str) -> tuple[dict, list[str], list[dict]]:
    """(sidecar, header, rows) of a counts file, refused with a one-line error unless every check passes:
    not being written, a valid sidecar, matching columns, no incomplete row, every row valid and the digests
    matching (see above). An incomplete file is read with a warning that says so."""
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
    incomplete = validate_counts_rows(header, rows, meta, path)
    if incomplete:
        warn(incomplete)
    return meta, header, rows

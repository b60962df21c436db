"""Reading certification logs: ours (`certify.py`, with a `<log>.meta.json` sidecar) and Cohen et al.'s.

- Every line of the tab-separated file is read verbatim (`_read_table`); the first offending line is named in a
  one-line `CertifyNetError` (empty file, missing or duplicate columns, wrong field count, a value that is not
  a number, `correct` ≠ `is_correct(predict, label)`, duplicate `idx`).
- `correct` is checked against `certifynet.certify.outcome.is_correct`: a class prediction equal to a known
  label. An abstain and any row of unknown label (−1, an image certified without its label) have correct 0.
- Metadata: the sidecar (`certifynet.records.read_meta`), else dataset / model / σ from Cohen's file names;
  a log without sidecar or `method` column is Neyman–Pearson (Cohen's `certify.py`).
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from certifynet.certify.outcome import UNKNOWN_LABEL, is_correct
from certifynet.errors import CertifyNetError, warn
from certifynet.records import meta_path, read_meta

REQUIRED_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
_INT_COLUMNS = ("idx", "label", "predict", "correct", "n", "samples")

# Cohen's file names: <dataset>_<model>_..._sigma_<σ>.tsv, e.g. cifar10_resnet110_noise_0.12_test_sigma_0.12.tsv
_NAME_RE = re.compile(r"^(?P<dataset>[A-Za-z0-9]+)_(?P<model>[^_]+)_")
_SIGMA_RE = re.compile(r"sigma_(?P<sigma>\d+(?:\.\d*)?|\.\d+)")
# str(datetime.timedelta): "H:MM:SS[.ffffff]", optionally preceded by "D day(s), "
_TIMEDELTA_RE = re.compile(r"^(?:(?P<d>-?\d+) days?, )?(?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d(?:\.\d+)?)$")


@dataclass
class CertifyLog:
    """One certification log: its rows, sidecar metadata (possibly inferred from the file name) and display label."""

    path: Path
    data: pd.DataFrame
    meta: dict = field(default_factory=dict)
    label: str = ""

    def _get(self, key, cast=None):
        v = self.meta.get(key)
        if v is None or cast is None:
            return v
        try:
            return cast(v)
        except (TypeError, ValueError):
            return None

    @property
    def dataset(self) -> str | None:
        return self._get("dataset", str)

    @property
    def method(self) -> str | None:
        return self._get("method", str)

    @property
    def sigma(self) -> float | None:
        return self._get("sigma", float)

    @property
    def alpha(self) -> float | None:
        return self._get("alpha", float)

    @property
    def unknown_labels(self) -> int:
        """Rows whose label is unknown (−1): never correct, so certified accuracy can only be understated."""
        return int((self.data["label"] == UNKNOWN_LABEL).sum())


# ----------------------------------------------------------------------------------------------- field parsers
def parse_time(text: str) -> float:
    """Seconds from a float string ("15.4") or a `str(timedelta)` string ("0:02:31.238689", "1 day, 0:00:01")."""
    text = text.strip()
    try:
        secs = float(text)
    except ValueError:
        m = _TIMEDELTA_RE.match(text)
        if not m:
            raise ValueError(f"not seconds or H:MM:SS: {text!r}") from None
        secs = (int(m["d"] or 0) * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"]))
    if not (math.isfinite(secs) and secs >= 0):
        raise ValueError(f"time must be finite and >= 0, got {text!r}")
    return secs


def _parse_int(text: str) -> int:
    v = float(text)  # also accepts "3.0"
    if not v.is_integer():
        raise ValueError(f"not an integer: {text!r}")
    return int(v)


def _parse_radius(text: str) -> float:
    v = float(text)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"radius must be finite and >= 0, got {text!r}")
    return v


def _parse_correct(text: str) -> int:
    v = {"true": 1, "false": 0}.get(text.strip().lower())
    v = _parse_int(text) if v is None else v
    if v not in (0, 1):
        raise ValueError(f"correct must be 0 or 1, got {text!r}")
    return v


_PARSERS = {"radius": _parse_radius, "correct": _parse_correct, "time": parse_time}


def _parse_column(text: pd.Series, parse: Callable):
    """(values, (position, message) of the first entry `parse` rejects, or None), ignoring surrounding blanks.
    Vectorised by pd.to_numeric; every entry it does not accept goes through `parse`, whose value or error wins."""
    num = np.array(pd.to_numeric(text, errors="coerce"), dtype=float)  # a writable copy
    floats = parse in (_parse_radius, parse_time)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(num) & ((num >= 0) if floats else (num == np.floor(num)))
        if parse is _parse_correct:
            ok &= (num == 0) | (num == 1)
    for pos in np.flatnonzero(~ok):
        try:
            num[pos] = parse(text.iloc[pos].strip())
        except ValueError as e:
            return num, (int(pos), str(e))
    return (num if floats else num.astype(np.int64)), None


def _numeric_or_text(text: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(text)
    except (ValueError, TypeError):
        return text.astype(str)


# ----------------------------------------------------------------------------------------------- the table
class _TooLong:
    """Stands in for a line with more fields than the header (pandas' on_bad_lines hook)."""

    def __init__(self, fields: int):
        self.fields = fields


def _read_table(path: Path) -> pd.DataFrame:
    """Every line of a tab-separated file as strings: header row included, blank lines kept (row i is line i + 1),
    fields verbatim (no quoting, no NA conversion), a missing trailing field NaN (the C engine would pad it with
    ""), a line with too many fields a _TooLong in column 0 (a blank one stays blank)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            width = len(f.readline().rstrip("\r\n").split("\t"))
        return pd.read_csv(path, sep="\t", header=None, names=range(width), dtype=object, keep_default_na=False,
                           na_values=[], quoting=csv.QUOTE_NONE, skip_blank_lines=False, encoding="utf-8-sig",
                           engine="python",
                           on_bad_lines=lambda fields: [_TooLong(len(fields)) if "".join(fields).strip() else ""])
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=[0], dtype=object)
    except UnicodeDecodeError:
        raise CertifyNetError(f"{path}: not a text log (not UTF-8)") from None


def _blank_rows(raw: pd.DataFrame) -> np.ndarray:
    """True for rows whose fields are all missing or blank (only rows with a blank first field are inspected)."""
    if raw.empty:
        return np.ones(len(raw), dtype=bool)

    def empty(v):
        return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))
    blank = np.array(raw[0].map(empty), dtype=bool)
    for pos in np.flatnonzero(blank):
        blank[pos] = all(map(empty, raw.iloc[pos]))
    return blank


def _header(path: Path, raw: pd.DataFrame) -> list[str]:
    """The column names of line 1; every required column present, none twice."""
    header = [str(h).strip() for h in raw.iloc[0].fillna("")] if len(raw) else []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        hint = " (a PREDICT log has no radius)" if header == ["idx", "label", "predict", "correct", "time"] else ""
        raise CertifyNetError(f"{path}, line 1: missing column(s) {', '.join(missing)}; "
                              f"expected a tab-separated header with {' '.join(REQUIRED_COLUMNS)}{hint}")
    if len(set(header)) != len(header):
        raise CertifyNetError(f"{path}, line 1: duplicate column names in header")
    return header


def _body(raw: pd.DataFrame, blank: np.ndarray, header: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(the non-blank data rows under the header's names, the field count of each too-long row, else 0)."""
    body = raw.iloc[1:][~blank[1:]].copy()
    too_long = body[0].map(lambda v: v.fields if isinstance(v, _TooLong) else 0).to_numpy()
    body.loc[too_long > 0, 0] = ""
    body.columns = header
    return body, too_long


def _parse_fields(body: pd.DataFrame, too_long: np.ndarray) -> tuple[dict, list]:
    """({column: values}, [(position, message)] of the first wrong field count and the first bad value per column)."""
    errors = []
    fields = np.where(too_long > 0, too_long, body.notna().sum(axis=1).to_numpy())
    wrong_width = np.flatnonzero(fields != len(body.columns))
    if wrong_width.size:
        i = wrong_width[0]
        errors.append((i, f"expected {len(body.columns)} tab-separated fields, got {fields[i]}"))
    data = {}
    for c in body.columns:
        parse = _PARSERS.get(c, _parse_int if c in _INT_COLUMNS else None)
        if parse is None:  # extra columns (pA_upper, method, ...): numeric where all are numbers
            data[c] = _numeric_or_text(body[c].fillna("").str.strip())
            continue
        data[c], bad = _parse_column(body[c].fillna(""), parse)
        if bad:
            errors.append((bad[0], f"column {c!r}: {bad[1]}"))
    return data, errors


def _row_errors(data: dict, stop: int, lines: np.ndarray) -> list:
    """[(position, message)] of the first row (before `stop`, where every column parsed) whose `correct` is not
    is_correct(predict, label), and of the first duplicate idx."""
    errors = []
    ok = slice(0, stop)
    correct, predict, label = data["correct"][ok], data["predict"][ok], data["label"][ok]
    wrong = np.flatnonzero(correct != is_correct(predict, label))
    if wrong.size:
        i = wrong[0]
        errors.append((i, f"correct={int(correct[i])} but predict={int(predict[i])}, label={int(label[i])}"))
    idx = pd.Series(data["idx"][ok])
    dup = np.flatnonzero(idx.duplicated().to_numpy())
    if dup.size:
        i = dup[0]
        first = lines[np.flatnonzero(idx == idx.iloc[i])[0]]
        errors.append((i, f"duplicate idx {int(idx.iloc[i])} (first at line {first})"))
    return errors


def _sidecar(path: Path) -> dict:
    """The log's sidecar ({} without one), which must be a certify log's when it names its kind."""
    meta = read_meta(str(path), required=False)
    kind = meta.get("kind")
    if kind is not None and "certify" not in str(kind):
        raise CertifyNetError(f"{meta_path(str(path))}: kind is {kind!r}, expected a certify log")
    return meta


def _meta_from_name(path: Path) -> dict:
    """dataset / model / sigma from a Cohen-style file name (empty dict entries where it does not match)."""
    out = {}
    m = _NAME_RE.match(path.name)
    if m:
        out.update(dataset=m["dataset"], model=m["model"])
    s = _SIGMA_RE.search(path.stem)
    if s:
        out["sigma"] = float(s["sigma"])
    return out


def _log_meta(path: Path, data: pd.DataFrame) -> dict:
    """The sidecar over what the file name says; `method` from the sidecar, else the method column, else np."""
    meta = {**_meta_from_name(path), **_sidecar(path)}  # the sidecar wins over the file name
    if not meta.get("method"):
        methods = data["method"].unique() if "method" in data else []
        # a log without sidecar or method column is Cohen's certify.py, i.e. Neyman–Pearson
        meta["method"] = str(methods[0]) if len(methods) == 1 else ("mixed" if len(methods) else "np")
    return meta


def _default_label(path: Path, meta: dict) -> str:
    """`label` from the sidecar, else "<method> σ=<σ> <model>" from what is known, else the file stem."""
    if meta.get("label"):
        return str(meta["label"])
    parts = [str(meta["method"])] if meta.get("method") else []
    try:
        parts.append(f"σ={float(meta['sigma']):g}")
    except (KeyError, TypeError, ValueError):
        pass
    if meta.get("model"):
        parts.append(Path(str(meta["model"])).stem)
    return " ".join(parts) or path.stem


# ----------------------------------------------------------------------------------------------- readers
def read_log(path, label: str | None = None) -> CertifyLog:
    """Parse one tab-separated certify log (ours or Cohen's) with pandas.read_csv, and its sidecar.

    Raises CertifyNetError naming the file and line for empty files, missing columns, wrong field counts,
    non-numeric values, `correct` ≠ is_correct(predict, label) and duplicate `idx` (the first offending line is
    reported).
    """
    path = Path(path)
    if not path.is_file():
        raise CertifyNetError(f"{path}: " + ("not a file" if path.exists() else "no such log file"))
    raw = _read_table(path)
    blank = _blank_rows(raw)
    if blank.all():
        raise CertifyNetError(f"{path}: empty file")
    body, too_long = _body(raw, blank, _header(path, raw))
    lines = body.index.to_numpy() + 1  # raw row i is line i + 1
    data, errors = _parse_fields(body, too_long)
    stop = min([pos for pos, _ in errors], default=len(body))
    errors += _row_errors(data, stop, lines)
    if errors:
        pos, message = min(errors, key=lambda e: e[0])  # the earliest line; on one line, the first check made
        raise CertifyNetError(f"{path}, line {lines[pos]}: {message}")
    if not len(body):
        raise CertifyNetError(f"{path}: no data rows after the header")
    data = pd.DataFrame(data)
    meta = _log_meta(path, data)
    label = str(label or _default_label(path, meta))  # undecodable bytes (from a sidecar or a path) spelled \udcff:
    label = label.encode("utf-8", "backslashreplace").decode("utf-8")  # tables, plots and reports are UTF-8
    return CertifyLog(path=path, data=data, meta=meta, label=label)


def read_logs(paths: Sequence, labels: Sequence[str] | None = None) -> list[CertifyLog]:
    """read_log for each path; `labels` (one per log, in order) override the defaults; labels are made unique.
    Warns once when inputs have an unknown label (−1): they count as not correct."""
    paths = list(paths)
    if not paths:
        raise CertifyNetError("no log files given")
    if labels is not None and len(labels) != len(paths):
        raise CertifyNetError(f"got {len(labels)} {{label}} value(s) for {len(paths)} log(s); give one per log",
                              "label")
    if labels is not None and len(set(labels)) != len(labels):
        raise CertifyNetError("{label} values must be distinct", "label")
    logs = [read_log(p, lab) for p, lab in zip(paths, labels or [None] * len(paths))]
    seen = {}
    for log in logs:  # disambiguate default labels: "np σ=0.25" twice → "np σ=0.25 (file stem)"
        if seen.get(log.label, 0):
            log.label = f"{log.label} ({log.path.stem})"
        seen[log.label] = seen.get(log.label, 0) + 1
    if len(seen) != len(logs):
        raise CertifyNetError("two logs have the same label; pass {label}, one per log", "label")
    _warn_unknown_labels(logs)
    return logs


def _warn_unknown_labels(logs: Sequence[CertifyLog]) -> None:
    """One warning for all logs: how many inputs have an unknown label, and in which logs."""
    counts = [(log, log.unknown_labels) for log in logs if log.unknown_labels]
    if counts:
        total = sum(n for _, n in counts)
        where = ", ".join(f"{n} in {log.path.name}" for log, n in counts)
        warn(f"{total} input(s) of unknown label (−1, an image certified without its label): {where}; counted "
             "as not correct, so certified accuracy can only be understated", stacklevel=3)

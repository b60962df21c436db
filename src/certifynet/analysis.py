"""Summarise certification logs: certified accuracy, ACR, cost; Markdown/LaTeX/CSV tables, plots, report.

Reads our `certify.py` logs (optional `<log>.meta.json` sidecar) and Cohen et al.'s published logs.
For m inputs with radius R_i and correct_i ∈ {0, 1}:

- certified accuracy  acc(r) = (1/m) Σ [correct_i ∧ R_i ≥ r]   (acc(0) = clean accuracy: abstains have correct 0)
- ACR                 = (1/m) Σ R_i · correct_i
- abstain rate        = (1/m) Σ [predict_i = −1]
- samples/input       = mean(samples), else mean(n) + N0, else N + N0 (N0, N from the sidecar, if known), else NaN
- sec/input           = mean(time)
- speed-up            = samples/input of the baseline run ÷ samples/input of this run
- high-probability certified accuracy (Cohen et al., optional):
  acc(r) − [α + sqrt(α(1−α)·ln(1/ρ)/m) + ln(1/ρ)/(3m)]
"""
from __future__ import annotations

import csv
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from certifynet.errors import CertifyNetError

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
REQUIRED_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
_INT_COLUMNS = ("idx", "label", "predict", "correct", "n", "samples")

# Metric columns: (decimals shown in md/tex, which value is best: "max", "min" or None = never bold).
# Certified-accuracy columns "r=<radius>" are added per radius grid with (3, "max").
METRICS = {
    "m": (0, None),
    "logs": (0, None),
    "ACR": (3, "max"),
    "abstain": (3, "min"),
    "samples/input": (0, "min"),
    "sec/input": (2, "min"),
    "speed-up": (2, "max"),
}
_SUMMARY_ONLY = ("dataset", "method", "sigma", "alpha", "file")  # kept in the CSV, not shown in md/tex

# Cohen's file names: <dataset>_<model>_..._sigma_<σ>.tsv, e.g. cifar10_resnet110_noise_0.12_test_sigma_0.12.tsv
_NAME_RE = re.compile(r"^(?P<dataset>[A-Za-z0-9]+)_(?P<model>[^_]+)_")
_SIGMA_RE = re.compile(r"sigma_(?P<sigma>\d+(?:\.\d*)?|\.\d+)")
# str(datetime.timedelta): "H:MM:SS[.ffffff]", optionally preceded by "D day(s), "
_TIMEDELTA_RE = re.compile(r"^(?:(?P<d>-?\d+) days?, )?(?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d(?:\.\d+)?)$")


# ----------------------------------------------------------------------------------------------- reading
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
    def dataset(self) -> Optional[str]:
        return self._get("dataset", str)

    @property
    def method(self) -> Optional[str]:
        return self._get("method", str)

    @property
    def sigma(self) -> Optional[float]:
        return self._get("sigma", float)

    @property
    def alpha(self) -> Optional[float]:
        return self._get("alpha", float)


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


def read_meta(log_path) -> dict:
    """The JSON sidecar `<log>.meta.json` as a dict, or {} when there is none."""
    side = Path(str(log_path) + ".meta.json")
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CertifyNetError(f"{side}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CertifyNetError(f"{side}: expected a JSON object")
    kind = meta.get("kind")
    if kind is not None and "certify" not in str(kind):
        raise CertifyNetError(f"{side}: kind is {kind!r}, expected a certify log")
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


def _parse_column(text: pd.Series, parse):
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


def read_log(path, label: Optional[str] = None) -> CertifyLog:
    """Parse one tab-separated certify log (ours or Cohen's) with pandas.read_csv, and its sidecar.

    Raises CertifyNetError naming the file and line for empty files, missing columns, wrong field counts,
    non-numeric values, inconsistent `correct` and duplicate `idx` (the first offending line is reported).
    """
    path = Path(path)
    if not path.is_file():
        raise CertifyNetError(f"{path}: " + ("not a file" if path.exists() else "no such log file"))
    raw = _read_table(path)
    blank = _blank_rows(raw)
    if blank.all():
        raise CertifyNetError(f"{path}: empty file")

    header = [str(h).strip() for h in raw.iloc[0].fillna("")] if len(raw) else []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        hint = " (a PREDICT log has no radius)" if header == ["idx", "label", "predict", "correct", "time"] else ""
        raise CertifyNetError(f"{path}, line 1: missing column(s) {', '.join(missing)}; "
                              f"expected a tab-separated header with {' '.join(REQUIRED_COLUMNS)}{hint}")
    if len(set(header)) != len(header):
        raise CertifyNetError(f"{path}, line 1: duplicate column names in header")

    body = raw.iloc[1:][~blank[1:]].copy()
    too_long = body[0].map(lambda v: v.fields if isinstance(v, _TooLong) else 0).to_numpy()
    body.loc[too_long > 0, 0] = ""
    body.columns = header
    lines = body.index.to_numpy() + 1  # raw row i is line i + 1
    first = [len(body), None]  # (position, message) of the earliest error; checks run in the order they rank

    def note(pos, message):
        if pos < first[0]:
            first[:] = [pos, message]

    fields = np.where(too_long > 0, too_long, body.notna().sum(axis=1).to_numpy())
    wrong_width = np.flatnonzero(fields != len(header))
    if wrong_width.size:
        note(wrong_width[0], f"expected {len(header)} tab-separated fields, got {fields[wrong_width[0]]}")
    data = {}
    for c in header:
        parse = _PARSERS.get(c, _parse_int if c in _INT_COLUMNS else None)
        if parse is None:  # extra columns (pA_upper, method, ...): numeric where all are numbers
            data[c] = _numeric_or_text(body[c].fillna("").str.strip())
            continue
        data[c], bad = _parse_column(body[c].fillna(""), parse)
        if bad:
            note(bad[0], f"column {c!r}: {bad[1]}")
    ok = slice(0, first[0])  # every column parsed on the rows before the earliest error
    correct, predict, label_ = data["correct"][ok], data["predict"][ok], data["label"][ok]
    wrong = np.flatnonzero(correct != (predict == label_))
    if wrong.size:
        i = wrong[0]
        note(i, f"correct={int(correct[i])} but predict={int(predict[i])}, label={int(label_[i])}")
    idx = pd.Series(data["idx"][ok])
    dup = np.flatnonzero(idx.duplicated().to_numpy())
    if dup.size:
        i = dup[0]
        note(i, f"duplicate idx {int(idx.iloc[i])} (first at line {lines[np.flatnonzero(idx == idx.iloc[i])[0]]})")
    if first[1] is not None:
        raise CertifyNetError(f"{path}, line {lines[first[0]]}: {first[1]}")
    if not len(body):
        raise CertifyNetError(f"{path}: no data rows after the header")

    data = pd.DataFrame(data)
    meta = {**_meta_from_name(path), **read_meta(path)}  # the sidecar wins over the file name
    if not meta.get("method"):
        methods = data["method"].unique() if "method" in data else []
        # a log without sidecar or method column is Cohen's certify.py, i.e. Neyman–Pearson
        meta["method"] = str(methods[0]) if len(methods) == 1 else ("mixed" if len(methods) else "np")
    return CertifyLog(path=path, data=data, meta=meta, label=label or _default_label(path, meta))


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


def _numeric_or_text(text: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(text)
    except (ValueError, TypeError):
        return text.astype(str)


def read_logs(paths: Sequence, labels: Optional[Sequence[str]] = None) -> list:
    """read_log for each path; `labels` (one per log, in order) override the defaults; labels are made unique."""
    paths = list(paths)
    if not paths:
        raise CertifyNetError("no log files given")
    if labels is not None and len(labels) != len(paths):
        raise CertifyNetError(f"got {len(labels)} --label value(s) for {len(paths)} log(s); give one per log")
    if labels is not None and len(set(labels)) != len(labels):
        raise CertifyNetError("--label values must be distinct")
    logs = [read_log(p, lab) for p, lab in zip(paths, labels or [None] * len(paths))]
    seen = {}
    for log in logs:  # disambiguate default labels: "np σ=0.25" twice → "np σ=0.25 (file stem)"
        if seen.get(log.label, 0):
            log.label = f"{log.label} ({log.path.stem})"
        seen[log.label] = seen.get(log.label, 0) + 1
    if len(seen) != len(logs):
        raise CertifyNetError("two logs have the same label; pass --label, one per log")
    return logs


# ----------------------------------------------------------------------------------------------- metrics
def certified_accuracy(radius, correct, radii) -> np.ndarray:
    """acc(r) = mean(correct ∧ radius ≥ r) for each r in `radii` (exact step function)."""
    radius = np.asarray(radius, dtype=float)
    good = np.sort(radius[np.asarray(correct).astype(bool)])
    return (good.size - np.searchsorted(good, np.asarray(radii, dtype=float), side="left")) / radius.size


def hp_correction(alpha: float, rho: float, m: int) -> float:
    """Cohen et al.'s high-probability margin: α + sqrt(α(1−α)·ln(1/ρ)/m) + ln(1/ρ)/(3m)."""
    lr = math.log(1.0 / rho)
    return alpha + math.sqrt(alpha * (1.0 - alpha) * lr / m) + lr / (3.0 * m)


def samples_per_input(log: CertifyLog) -> Optional[np.ndarray]:
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


def _radius_columns(radii) -> list:
    return [f"r={r:g}" for r in radii]


def check_radii(radii) -> tuple:
    """Sorted, distinct, finite, non-negative radii; 0 (clean accuracy) is always included."""
    radii = [float(r) for r in radii]
    if not all(math.isfinite(r) and r >= 0 for r in radii):
        raise CertifyNetError(f"--radii must be finite numbers >= 0, got {radii}")
    return tuple(sorted(set(radii) | {0.0}))


def _accuracies(logs, radii, hp_rho=None, alpha=None) -> list:
    """Per log, certified accuracy at `radii`, minus the HP margin when hp_rho is set (α: `alpha`, else sidecar)."""
    if hp_rho is not None and not (0.0 < hp_rho < 1.0):
        raise CertifyNetError(f"--hp-rho must be in (0, 1), got {hp_rho}")
    out = []
    for log in logs:
        acc = certified_accuracy(log.data["radius"], log.data["correct"], radii)
        if hp_rho is not None:
            a = alpha if alpha is not None else log.alpha
            if a is None:
                raise CertifyNetError(f"{log.path}: α unknown (no sidecar); pass --alpha for --hp-rho")
            acc = acc - hp_correction(a, hp_rho, len(log.data))
        out.append(acc)
    return out


def summarize(logs: Sequence[CertifyLog], radii=DEFAULT_RADII, *, hp_rho: Optional[float] = None,
              alpha: Optional[float] = None, baseline: Optional[str] = None) -> pd.DataFrame:
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
            "abstain": float((d["predict"] == -1).mean()),
            "samples/input": mean_samples(log),
            "sec/input": float(d["time"].mean()),
            "file": str(log.path),
        })
    df = pd.DataFrame(rows)
    if baseline is not None:
        if baseline not in set(df["log"]):
            raise CertifyNetError(f"--baseline {baseline!r} is not a log label; labels: {', '.join(df['log'])}")
        base = df.loc[df["log"] == baseline, "samples/input"].iloc[0]
        if not (base > 0):
            raise CertifyNetError(f"--baseline {baseline!r} has no sample counts (needs a samples or n column)")
        df.insert(df.columns.get_loc("file"), "speed-up", base / df["samples/input"])
    return df


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


# ----------------------------------------------------------------------------------------------- tables
def _column_spec(col: str):
    """(decimals, best) for a metric column; None for text columns."""
    if col.startswith("r="):
        return (3, "max")
    return METRICS.get(col)


def _display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Columns shown in md/tex: no metadata-only columns (kept in the CSV), no metric column empty for every row."""
    keep = [c for c in df.columns if c not in _SUMMARY_ONLY and not (_column_spec(c) and df[c].isna().all())]
    return df[keep]


def comparable_groups(df: pd.DataFrame) -> pd.Series:
    """Group of each row: runs are comparable when they share the dataset and σ (columns `dataset`, `sigma`,
    where present; a missing value is its own "unknown" group)."""
    keys = [df[c].astype(object).where(df[c].notna(), "?").astype(str) for c in ("dataset", "sigma") if c in df]
    if not keys:
        return pd.Series("", index=df.index)
    return pd.Series(list(zip(*keys)), index=df.index).astype(str)


def best_mask(values: pd.Series, decimals: int, best: Optional[str], groups: Optional[pd.Series] = None) -> pd.Series:
    """True where the value, rounded as displayed, equals the best of its group (max, or min when lower is
    better); `groups` (default: one group) holds comparable runs. Ties are all True; nothing is marked in a group
    with fewer than two values or where all values are equal (no run is better there)."""
    rounded = pd.to_numeric(values, errors="coerce").round(decimals)
    groups = pd.Series("", index=values.index) if groups is None else groups
    if best is None:
        return pd.Series(False, index=values.index)
    by = rounded.groupby(groups, sort=False)
    target = by.transform("max" if best == "max" else "min")
    return (rounded == target) & (by.transform("count") >= 2) & (by.transform("nunique") >= 2)


def _cells(df: pd.DataFrame, bold, nan: str, bold_best: bool, groups: pd.Series) -> list:
    """Formatted cell strings, row-major; `bold` wraps a string (the best of each column within each group)."""
    out = [[None] * len(df.columns) for _ in range(len(df))]
    for j, col in enumerate(df.columns):
        spec = _column_spec(col)
        mask = best_mask(df[col], *spec, groups) if spec and bold_best else pd.Series(False, index=df.index)
        for i, (v, b) in enumerate(zip(df[col], mask)):
            if spec is None:
                s = nan if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else str(v)
            else:
                s = nan if pd.isna(v) else f"{v:.{spec[0]}f}"
            out[i][j] = bold(s) if b else s
    return out


def to_markdown(df: pd.DataFrame, bold_best: bool = True) -> str:
    """GitHub Markdown table; the best value of each metric column among comparable runs (`comparable_groups`)
    in **bold**. Our own 7 lines: DataFrame.to_markdown would add the `tabulate` dependency and pad the cells."""
    groups, df = comparable_groups(df), _display_frame(df)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    cells = _cells(df, lambda s: f"**{s}**", "–", bold_best, groups)
    align = ["---:" if _column_spec(c) else ":---" for c in df.columns]
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(esc(s) for s in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


# LaTeX for symbols that are not letters with accents: text mode (str) or math mode (a 1-tuple)
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
                ">": r"\textgreater{}", "|": r"\textbar{}", "–": "--", "—": "---", "‘": "`", "’": "'", "“": "``",
                "”": "''", "…": r"\ldots{}", "•": r"\textbullet{}", "°": r"\textdegree{}", "\u00a0": "~",
                "§": r"\S{}", "¶": r"\P{}", "©": r"\copyright{}", "£": r"\pounds{}", "ß": r"\ss{}", "æ": r"\ae{}",
                "Æ": r"\AE{}", "ø": r"\o{}", "Ø": r"\O{}", "œ": r"\oe{}", "Œ": r"\OE{}", "å": r"\aa{}", "Å": r"\AA{}",
                "ł": r"\l{}", "Ł": r"\L{}", "ı": r"\i{}",
                "≥": (r"\geq",), "≤": (r"\leq",), "≠": (r"\neq",), "≈": (r"\approx",), "×": (r"\times",),
                "·": (r"\cdot",), "±": (r"\pm",), "−": ("-",), "→": (r"\to",), "←": (r"\leftarrow",),
                "⇒": (r"\Rightarrow",), "∞": (r"\infty",), "∧": (r"\wedge",), "∨": (r"\vee",), "∈": (r"\in",),
                "∉": (r"\notin",), "‖": (r"\|",), "ℓ": (r"\ell",), "√": (r"\surd",), "∑": (r"\sum",),
                "∏": (r"\prod",), "∫": (r"\int",), "∂": (r"\partial",), "∇": (r"\nabla",), "∼": (r"\sim",),
                "÷": (r"\div",), "′": ("'",), "µ": (r"\mu",), "ϵ": (r"\epsilon",), "ε": (r"\varepsilon",),
                "ϕ": (r"\phi",), "φ": (r"\varphi",), "ς": (r"\varsigma",), "ϑ": (r"\vartheta",),
                "¹": ("^{1}",), "²": ("^{2}",), "³": ("^{3}",), "⁻": ("^{-}",), "⁺": ("^{+}",)}
_TEX_ESCAPES.update({chr(0x2070 + i): (f"^{{{i}}}",) for i in (0, 4, 5, 6, 7, 8, 9)})
_TEX_ESCAPES.update({chr(0x2080 + i): (f"_{{{i}}}",) for i in range(10)})
_GREEK_CAPITALS = {"Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega"}
# combining mark → (text-mode accent command, math-mode accent command)
_TEX_ACCENTS = {0x300: ("\\`", r"\grave"), 0x301: ("\\'", r"\acute"), 0x302: (r"\^", r"\hat"),
                0x303: (r"\~", r"\tilde"), 0x304: (r"\=", r"\bar"), 0x306: (r"\u", r"\breve"), 0x307: (r"\.", r"\dot"),
                0x308: (r'\"', r"\ddot"),
                0x30A: (r"\r", r"\mathring"), 0x30B: (r"\H", r"\bar"), 0x30C: (r"\v", r"\check"),
                0x323: (r"\d", r"\underline"), 0x327: (r"\c", r"\bar"), 0x328: (r"\k", r"\bar"),
                0x331: (r"\b", r"\underline"), 0x332: (r"\underline", r"\underline")}


def _tex_symbol(ch: str):
    """LaTeX for one character: a str (text mode) or a 1-tuple (math mode); ASCII `[U+XXXX]` when unknown."""
    if ch in _TEX_ESCAPES:
        return _TEX_ESCAPES[ch]
    if ord(ch) < 128:
        return ch
    name = unicodedata.name(ch, "")
    m = re.fullmatch(r"(?:MATHEMATICAL ITALIC )?(?:GREEK )?(SMALL|CAPITAL) (?:LETTER )?([A-Z]+)", name)
    if m and ("GREEK" in name or name.startswith("MATHEMATICAL")):
        letter = m[2].capitalize() if m[1] == "CAPITAL" else m[2].lower()
        if letter == "omicron":
            return ("o",)
        if m[1] == "CAPITAL" and letter not in _GREEK_CAPITALS:  # Alpha, Beta, ... look like Latin capitals
            return ("\\mathrm{" + unicodedata.lookup(f"LATIN CAPITAL LETTER {m[2][0]}") + "}",)
        return ("\\" + letter,)
    return f"[U+{ord(ch):04X}]"


def tex_escape(text: str) -> str:
    """`text` as LaTeX that pdflatex compiles without extra packages: pure ASCII. TeX specials escaped, Greek and
    maths symbols in $…$, accented letters with accent commands (ĉ → \\^{c}, p̲ → \\underline{p},
    σ̂ → $\\hat{\\sigma}$)."""
    tokens = []  # [tex, is_math]
    for ch in unicodedata.normalize("NFD", str(text)):
        mark = unicodedata.combining(ch) and _TEX_ACCENTS.get(ord(ch))
        if mark and tokens:
            tex, math_mode = tokens[-1]
            tokens[-1][0] = f"{mark[1 if math_mode else 0]}{{{tex}}}"
            continue
        sym = _tex_symbol(unicodedata.normalize("NFC", ch)) if not unicodedata.combining(ch) else ""
        tokens.append([sym[0], True] if isinstance(sym, tuple) else [sym, False])
    out, in_math = [], False
    for tex, math_mode in tokens:
        if math_mode != in_math:
            out.append("$")
            in_math = math_mode
        out.append(tex)
    tex, merged = "".join(out) + ("$" if in_math else ""), None
    while merged != tex:  # one script per base: ⁻¹² → ^{-}^{1}^{2} → ^{-12}
        merged, tex = tex, re.sub(r"([\^_])\{([^{}$]*)\}\1\{", r"\1{\2", tex)
    return tex


def to_latex(df: pd.DataFrame, title: Optional[str] = None, bold_best: bool = True) -> str:
    """booktabs table (needs \\usepackage{booktabs}), pure ASCII; the best value of each metric column among
    comparable runs in \\textbf. Written by pandas' Styler.to_latex from cells we format and escape."""
    groups, df = comparable_groups(df), _display_frame(df)
    head = [f"${c}$" if c.startswith("r=") or c == "m" else tex_escape(c) for c in df.columns]
    cells = _cells(df, lambda s: rf"\textbf{{{tex_escape(s)}}}", "--", bold_best, groups)
    cells = [[s if s.startswith(r"\textbf") else tex_escape(s) for s in row] for row in cells]
    spec = "".join("r" if _column_spec(c) else "l" for c in df.columns)
    return pd.DataFrame(cells, columns=head).style.hide(axis="index").to_latex(
        column_format=spec, hrules=True, caption=tex_escape(title) if title else None, position="t",
        position_float="centering")


def write_tables(df: pd.DataFrame, out_dir, stem: str = "table", title: Optional[str] = None,
                 bold_best: bool = True) -> list:
    """Write <stem>.md, <stem>.tex (booktabs) and <stem>.csv (full precision, all columns); return the paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "tex", "csv")]
    paths[0].write_text(to_markdown(df, bold_best), encoding="utf-8")
    paths[1].write_text(to_latex(df, title, bold_best), encoding="utf-8")
    df.to_csv(paths[2], index=False)
    return paths


# ----------------------------------------------------------------------------------------------- plots
# A hue per σ (Okabe–Ito, colour-blind safe); a line style, hollow marker and shade per method. Curves drawn first
# are wider and lie below, and markers are staggered, so coinciding curves all stay visible.
SIGMA_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_USUAL_SIGMAS = (0.25, 1.0, 0.5, 0.12, 0.75, 1.5, 2.0)  # the same σ gets the same colour in every figure
METHOD_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (6, 2, 1, 2, 1, 2)), "P"),
                 ((0, (1, 1)), "X"), ((0, (3, 1, 1, 1)), "h"), ((0, (8, 2)), "v"))
_SHADES = (0.0, 0.5, -0.5, 0.25, -0.25, 0.65, -0.65, -0.35)  # of METHOD_STYLES[i]: > 0 towards white, < 0 black
_KNOWN_METHODS = ("np", "dsrs", "iss-np", "iss-dsrs")  # fixed styles 0-3; other methods next; repeats from the end
_PAPER_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9, "axes.titlesize": 9, "legend.fontsize": 7.5}


class _Styles:
    """Styles that agree across figures: the hue is σ's; the line style, marker and shade are the method's (a
    second log of one method at one σ, e.g. + denoiser, takes the last style, a third the one before ...)."""

    def __init__(self, logs):
        self.sigmas = sorted({log.sigma for log in logs if log.sigma is not None})
        self.keys, seen = {}, {}
        for log in logs:
            k = seen[(log.method, log.sigma)] = seen.get((log.method, log.sigma), -1) + 1
            self.keys[id(log)] = (log.method, k)
        self.others = list(dict.fromkeys(m for m, _ in self.keys.values() if m not in _KNOWN_METHODS))

    def index(self, log) -> int:
        method, k = self.keys[id(log)]
        if k:
            return (len(METHOD_STYLES) - k) % len(METHOD_STYLES)
        if method in _KNOWN_METHODS:
            return _KNOWN_METHODS.index(method)
        return (len(_KNOWN_METHODS) + self.others.index(method)) % len(METHOD_STYLES)

    def hue(self, sigma) -> str:
        if sigma is None:
            return "#595959"
        usual = [k for k, s in enumerate(_USUAL_SIGMAS) if math.isclose(s, sigma)]
        other = [s for s in self.sigmas if not any(math.isclose(s, u) for u in _USUAL_SIGMAS)]
        return SIGMA_COLOURS[usual[0] if usual else (len(_USUAL_SIGMAS) + other.index(sigma)) % len(SIGMA_COLOURS)]

    def colour(self, log):
        """σ's hue, shaded by the method: base, lighter, darker, lighter still, ..."""
        shade = _SHADES[self.index(log)]
        rgb = np.array([int(self.hue(log.sigma)[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        return tuple(rgb + (1 - rgb) * shade if shade > 0 else rgb * (1 + shade))

    def line(self, log):
        return METHOD_STYLES[self.index(log)]


def _paper_style(fn):
    """Build the figure under _PAPER_RC, so that its text gets the paper font sizes when it is created."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import matplotlib
        with matplotlib.rc_context(_PAPER_RC):
            return fn(*args, **kwargs)
    return wrapper


def _figure(width: float, height: float):
    """A Figure drawn by the Agg canvas (no pyplot, no global backend switch, safe without a display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    return fig


def _new_figure(panels: int = 1, width: float = 4.0, height: float = 3.0, sharey: bool = True):
    """A figure with `panels` axes of width × height inches each, in rows of at most 3."""
    cols = min(panels, 3)
    rows = -(-panels // cols)
    fig = _figure(width * cols, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def _save(fig, stem: Path) -> list:
    """PNG and PDF; the PDF embeds TrueType (Type 42) fonts, never Type 3 (rejected by IEEE/ACM checks)."""
    import matplotlib
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    with matplotlib.rc_context(_PAPER_RC):
        fig.savefig(paths[0])
        fig.savefig(paths[1], metadata={"CreationDate": None})
    return paths


def _sigma_title(sigma) -> str:
    return f"σ = {sigma:g}" if sigma is not None else "σ unknown"


def _step_curves(logs, hp_rho, alpha):
    """(grid, certified accuracy of each log on it): the exact step functions, constant on (R_k, R_k+1]."""
    radii = np.concatenate([log.data["radius"].to_numpy(float) for log in logs])
    grid = np.unique(np.concatenate([[0.0, max(radii.max() * 1.05, 0.1)], radii]))
    return grid, _accuracies(logs, grid, hp_rho, alpha)


def _draw_curves(ax, grid, curves, styles, colours, labels, lw_top=1.2):
    """Step curves; the first is widest and lowest, hollow markers staggered along each curve."""
    n = len(curves)
    for k, (curve, (ls, marker), colour, label) in enumerate(zip(curves, styles, colours, labels)):
        ax.plot(grid, curve, color=colour, ls=ls, lw=lw_top + 0.8 * (n - 1 - k), drawstyle="steps-pre",
                marker=marker, markevery=(0.015 + 0.09 * k / n, 0.09), ms=4.5, mfc="white", mew=1.0, zorder=2 + k,
                label=label)


def _finish_accuracy_axes(ax, grid, curves, hp_rho, title):
    """Labels, limits, grid, title; the legend inside where it fits (≤ 4 entries), else beside the axes."""
    ax.set_xlabel("radius (ℓ2)")
    ax.set_xlim(0.0, grid[-1])
    ax.set_ylim(min(0.0, float(np.min(curves))), 1.02)
    ax.grid(alpha=0.3)
    if len(ax.get_legend_handles_labels()[0]) <= 4:
        ax.legend(loc="best", framealpha=0.85)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_title(title)
    if ax.get_subplotspec().is_first_col():
        ax.set_ylabel("certified accuracy" + (" (high-probability)" if hp_rho is not None else ""))


def plot_certified_accuracy(logs: Sequence[CertifyLog], out_stem, *, title: Optional[str] = None,
                            grouped: bool = False, hp_rho=None, alpha=None) -> list:
    """Certified accuracy vs radius → <out_stem>.png/.pdf (see `certified_accuracy_figure`)."""
    fig = certified_accuracy_figure(logs, title=title, grouped=grouped, hp_rho=hp_rho, alpha=alpha)
    return _save(fig, Path(out_stem))


@_paper_style
def certified_accuracy_figure(logs: Sequence[CertifyLog], *, title: Optional[str] = None, grouped: bool = False,
                              hp_rho=None, alpha=None):
    """The certified accuracy figure. One panel per σ (runs at different σ never share an axis); σ's hue, and a
    line style, marker and shade per method. With `grouped`, Cohen's envelope over σ instead: one panel per
    dataset, per method a thick envelope line (method style) over its logs (thin, dashed, σ colours)."""
    styles = _Styles(logs)
    key = (lambda log: log.dataset or "?") if grouped else (lambda log: log.sigma)
    panels = {}
    for log in logs:
        panels.setdefault(key(log), []).append(log)
    order = sorted(panels, key=lambda v: (v is None, v)) if not grouped else list(panels)
    fig, axes = _new_figure(len(order), width=6.0 if grouped else 4.0)
    for ax, value in zip(axes, order):
        members = panels[value]
        grid, curves = _step_curves(members, hp_rho, alpha)
        if grouped:
            methods = {}
            for log, curve in zip(members, curves):
                methods.setdefault(log.method or "?", []).append((log, curve))
            labelled = set()
            for log, curve in zip(members, curves):  # one legend entry per σ for the logs
                ax.plot(grid, curve, color=styles.hue(log.sigma), lw=0.8, ls="--", alpha=0.8, drawstyle="steps-pre",
                        zorder=1, label=None if log.sigma in labelled else f"logs at {_sigma_title(log.sigma)}")
                labelled.add(log.sigma)
            env = [np.max([c for _, c in group], axis=0) for group in methods.values()]
            _draw_curves(ax, grid, env, [styles.line(group[0][0]) for group in methods.values()],
                         [str(0.12 * k) for k in range(len(env))],
                         [f"{m}: envelope of {len(g)}" for m, g in methods.items()])
            panel_title = f"{value}: envelope over σ"
        else:
            _draw_curves(ax, grid, curves, [styles.line(log) for log in members],
                         [styles.colour(log) for log in members], [log.label for log in members])
            panel_title = _sigma_title(value)
        _finish_accuracy_axes(ax, grid, curves, hp_rho, panel_title)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@_paper_style
def plot_cost(logs: Sequence[CertifyLog], out_stem, *, title: Optional[str] = None) -> Optional[list]:
    """Where methods differ in cost → <out_stem>.png/.pdf, one row per log that knows its forward passes:
    left, the forward passes per input (box over the inputs, marker = mean; ISS and sequential runs vary per
    input); right, the ACR of the same run. Colours and markers as in the accuracy plot. None without counts."""
    styles = _Styles(logs)
    runs = [(log, samples_per_input(log)) for log in logs]
    runs = [(log, s) for log, s in runs if s is not None]
    if not runs:
        return None
    import matplotlib
    horizontal = ({"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
                  else {"vert": False})
    fig = _figure(8.0, 0.32 * len(runs) + 1.5)
    ax_box, ax_acr = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": (3, 2)})
    ys = np.arange(len(runs))[::-1]
    for y, (log, per_input) in zip(ys, runs):
        colour, (_, marker) = styles.colour(log), styles.line(log)
        ax_box.boxplot(per_input, positions=[y], **horizontal, widths=0.5, patch_artist=True,
                       boxprops=dict(facecolor=colour, alpha=0.3, edgecolor=colour), medianprops=dict(color=colour),
                       whiskerprops=dict(color=colour), capprops=dict(color=colour),
                       flierprops=dict(marker=".", markersize=3, markeredgecolor=colour))
        acr = float((log.data["radius"] * log.data["correct"]).mean())
        for ax, x in ((ax_box, per_input.mean()), (ax_acr, acr)):
            ax.plot(x, y, marker=marker, color=colour, ms=6.5, mfc="white", mew=1.6, zorder=5)
    ax_box.set_yticks(ys, [log.label for log, _ in runs])
    ax_box.set_xlabel("forward passes per input (box over inputs, marker: mean)")
    ax_acr.set_xlabel("ACR")
    for ax in (ax_box, ax_acr):
        ax.set_xlim(0, ax.get_xlim()[1] * 1.06)
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out_stem))


@_paper_style
def plot_gain(base: CertifyLog, others: Sequence[CertifyLog], out_stem, *, title: Optional[str] = None) -> list:
    """What `others` add over `base` (e.g. + denoiser over the plain classifier, DSRS over NP) → <out_stem>.png/.pdf:
    top, their certified accuracy curves; bottom, the difference to `base` in percentage points, by radius."""
    logs = [base, *others]
    styles = _Styles(logs)
    fig = _figure(4.8, 4.4)
    ax, ax_gain = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (2, 1)})
    grid, curves = _step_curves(logs, None, None)
    colours = [styles.colour(log) for log in logs]
    _draw_curves(ax, grid, curves, [styles.line(log) for log in logs], colours, [log.label for log in logs])
    _finish_accuracy_axes(ax, grid, curves, None, title or f"gain over {base.label}")
    ax.set_xlabel("")
    ax.set_ylabel("certified accuracy")
    ax_gain.axhline(0.0, color="0.3", lw=0.8)
    _draw_curves(ax_gain, grid, [100 * (c - curves[0]) for c in curves[1:]], [styles.line(log) for log in others],
                 colours[1:], [f"{log.label} − {base.label}" for log in others])
    ax_gain.set_ylabel("gain (points)")
    ax_gain.set_xlabel("radius (ℓ2)")
    ax_gain.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(out_stem))


# ----------------------------------------------------------------------------------------------- report
_BOLD_NOTE = ("Best value per column among comparable runs (same dataset and σ) in bold (ties all bold; compared "
              "as displayed); higher is better for certified accuracy (r=…), ACR and speed-up, lower for abstain, "
              "samples/input and sec/input.")


def write_report(out_dir, logs, summary, env=None, *, title=None, hp_rho=None, alpha=None, baseline=None,
                 cost: bool = False) -> Path:
    """One-page report.md: the inputs, the plot(s) and the table(s) (all files already in out_dir)."""
    lines = [f"# {title or 'Certification results'}", "", "Logs:", ""]
    for log in logs:
        extra = ", ".join(f"{k}={log.meta[k]}" for k in ("dataset", "model", "method", "sigma", "N0", "N", "alpha")
                          if log.meta.get(k) is not None)
        lines.append(f"- **{log.label}**: `{log.path.name}`, {len(log.data)} inputs" + (f"; {extra}" if extra else ""))
    lines += ["", "![Certified accuracy vs radius](certified_accuracy.png)", "", to_markdown(summary), _BOLD_NOTE]
    lines.append("Certified accuracy at r = mean(correct ∧ radius ≥ r); r=0 is the clean accuracy of the smoothed "
                 "classifier; ACR = mean(radius · correct)."
                 + (f" Speed-up = samples/input of {baseline} ÷ samples/input." if baseline else ""))
    if hp_rho is not None:
        lines.append(f"Certified accuracies are high-probability (ρ={hp_rho:g}, "
                     f"α={'sidecar' if alpha is None else alpha}): each is lowered by "
                     "α + sqrt(α(1−α)·ln(1/ρ)/m) + ln(1/ρ)/(3m).")
    if cost:
        lines += ["", "## Cost", "", "Forward passes per input (box: per-input counts, ◆ mean) and ACR against them.",
                  "", "![Forward passes per input](cost.png)"]
    if env is not None:
        lines += ["", "## Envelope over σ", "",
                  "Per (dataset, method) and radius, the maximum certified accuracy over the logs at different σ.",
                  "", "![Envelope over sigma](certified_accuracy_envelope.png)", "", to_markdown(env, bold_best=False)]
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_outputs(out_dir, logs, summary, env=None, *, title=None, hp_rho=None, alpha=None, baseline=None) -> Path:
    """Write table.md/.tex/.csv, certified_accuracy.png/.pdf and report.md into out_dir; with an envelope
    table `env` also envelope.md/.tex/.csv and certified_accuracy_envelope.png/.pdf; when any log knows its
    forward passes per input, cost.png/.pdf (see `plot_cost`). Returns out_dir."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CertifyNetError(f"--out {out_dir} exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_tables(summary, out_dir, "table", title)
        plot_certified_accuracy(logs, out_dir / "certified_accuracy", title=title, hp_rho=hp_rho, alpha=alpha)
        if env is not None:
            write_tables(env, out_dir, "envelope", f"{title} (envelope over σ)" if title else "Envelope over σ",
                         bold_best=False)
            plot_certified_accuracy(logs, out_dir / "certified_accuracy_envelope", title=title, grouped=True,
                                    hp_rho=hp_rho, alpha=alpha)
        cost = plot_cost(logs, out_dir / "cost", title=title) is not None
        write_report(out_dir, logs, summary, env, title=title, hp_rho=hp_rho, alpha=alpha, baseline=baseline,
                     cost=cost)
    except OSError as e:
        raise CertifyNetError(f"cannot write outputs to {out_dir}: {e.strerror or e}") from None
    return out_dir


def summarize_runs(log_paths: Iterable, out_dir, labels: Optional[Sequence[str]] = None, radii=DEFAULT_RADII, *,
                   title: Optional[str] = None, envelope_over_sigma: bool = False, baseline: Optional[str] = None,
                   hp_rho: Optional[float] = None, alpha: Optional[float] = None) -> pd.DataFrame:
    """Read the logs, summarise them and write every output (see `write_outputs`) into out_dir in one call.
    Returns the summary DataFrame (see `summarize`)."""
    logs = read_logs(list(log_paths), labels)
    summary = summarize(logs, radii, hp_rho=hp_rho, alpha=alpha, baseline=baseline)
    env = envelope(logs, radii, hp_rho=hp_rho, alpha=alpha) if envelope_over_sigma else None
    write_outputs(out_dir, logs, summary, env, title=title, hp_rho=hp_rho, alpha=alpha, baseline=baseline)
    return summary


# ----------------------------------------------------------------------------------------------- attacks
def read_empirical_curve(path) -> tuple:
    """An `attack.py --eps` log: (ε grid, DataFrame with idx, label and correct@ε columns, sidecar dict)."""
    path = Path(path)
    if not path.is_file():
        raise CertifyNetError(f"{path}: no such attack curve log")
    side = Path(str(path) + ".meta.json")
    meta = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
    if meta.get("kind") != "attack_curve":
        raise CertifyNetError(f"{path}: not an attack curve log (sidecar kind {meta.get('kind')!r}; "
                              "write one with attack.py --eps ...)")
    try:
        data = pd.read_csv(path, sep="\t")
    except (ValueError, pd.errors.ParserError) as e:
        raise CertifyNetError(f"{path}: unreadable ({e})") from None
    eps = [float(e) for e in meta.get("eps", [])]
    missing = [c for c in ["idx", "label"] + [f"correct@{e:g}" for e in eps] if c not in data]
    if missing or data.empty:
        raise CertifyNetError(f"{path}: " + (f"missing column(s) {', '.join(missing)}" if missing else "no rows"))
    return np.asarray(eps), data, meta


def certified_vs_empirical(log: CertifyLog, curve_path) -> pd.DataFrame:
    """On the inputs both logs hold: per ε of the curve, the empirical robust accuracy (PREDICT at the attacked
    point returns the label) and the certified accuracy at r = ε.  Refuses logs of different models or σ."""
    eps, curve, meta = read_empirical_curve(curve_path)
    for key in ("model_sha256", "sigma"):
        if log.meta.get(key) is not None and meta.get(key) is not None and log.meta[key] != meta[key]:
            raise CertifyNetError(f"{log.path} and {curve_path} differ in {key} "
                                  f"({log.meta[key]!r} vs {meta[key]!r}): not the same smoothed classifier")
    cert = log.data.set_index("idx")
    common = curve[curve["idx"].isin(cert.index)]
    if common.empty:
        raise CertifyNetError(f"{log.path} and {curve_path} have no input (idx) in common")
    cert = cert.loc[common["idx"]]
    certified = certified_accuracy(cert["radius"], cert["correct"], eps)
    return pd.DataFrame({"eps": eps, "empirical": [float(common[f"correct@{e:g}"].mean()) for e in eps],
                         "certified": certified, "inputs": len(common)})


@_paper_style
def plot_certified_vs_empirical(logs: Sequence[CertifyLog], curve_path, out_stem, *,
                                title: Optional[str] = None) -> list:
    """Certified accuracy vs radius (solid steps, one per log) and the empirical robust accuracy under the attack
    (dashed, markers at its ε grid), all on the inputs every log shares with the curve → <out_stem>.png/.pdf."""
    eps, curve, _ = read_empirical_curve(curve_path)
    for log in logs:
        certified_vs_empirical(log, curve_path)  # same model and σ, some inputs in common
    shared = set(curve["idx"]).intersection(*(set(log.data["idx"]) for log in logs))
    if not shared:
        raise CertifyNetError(f"the logs and {curve_path} have no input (idx) common to all")
    curve = curve[curve["idx"].isin(shared)]
    top = max(float(eps.max()) * 1.05, 0.1)
    fig, (ax,) = _new_figure(width=5.0, height=3.5)
    for k, log in enumerate(logs):
        d = log.data[log.data["idx"].isin(shared)]
        grid = np.unique(np.concatenate([[0.0, top], d["radius"].to_numpy(float)]))
        grid = grid[grid <= top]
        ax.plot(grid, certified_accuracy(d["radius"], d["correct"], grid), color=f"C{k % 10}", lw=1.5,
                drawstyle="steps-pre", label=f"certified: {log.label}")
    ax.plot(eps, [curve[f"correct@{e:g}"].mean() for e in eps], color="k", ls="--", marker="o", ms=4, lw=1.2,
            label=f"empirical (attack, then PREDICT), {len(curve)} inputs")
    ax.set_xlabel("radius / ε (ℓ2)")
    ax.set_ylabel("accuracy of the smoothed classifier")
    ax.set_xlim(0.0, top)
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, Path(out_stem))

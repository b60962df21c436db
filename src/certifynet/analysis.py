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

import json
import math
import re
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


def read_log(path, label: Optional[str] = None) -> CertifyLog:
    """Parse one tab-separated certify log (ours or Cohen's) and its sidecar.

    Raises CertifyNetError naming the file and line for empty files, missing columns, wrong field counts,
    non-numeric values, inconsistent `correct` and duplicate `idx`.
    """
    path = Path(path)
    if not path.is_file():
        raise CertifyNetError(f"{path}: " + ("not a file" if path.exists() else "no such log file"))
    try:
        lines = [ln.rstrip("\r") for ln in path.read_text(encoding="utf-8-sig").split("\n")]
    except UnicodeDecodeError:
        raise CertifyNetError(f"{path}: not a text log (not UTF-8)") from None
    if not any(ln.strip() for ln in lines):
        raise CertifyNetError(f"{path}: empty file")

    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        hint = " (a PREDICT log has no radius)" if header == ["idx", "label", "predict", "correct", "time"] else ""
        raise CertifyNetError(f"{path}, line 1: missing column(s) {', '.join(missing)}; "
                              f"expected a tab-separated header with {' '.join(REQUIRED_COLUMNS)}{hint}")
    if len(set(header)) != len(header):
        raise CertifyNetError(f"{path}, line 1: duplicate column names in header")

    parsers = [_PARSERS.get(c, _parse_int if c in _INT_COLUMNS else str) for c in header]
    cols = {c: [] for c in header}
    first_line_of = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise CertifyNetError(f"{path}, line {lineno}: expected {len(header)} tab-separated fields, "
                                  f"got {len(fields)}")
        row = {}
        for c, parse, text in zip(header, parsers, fields):
            try:
                row[c] = parse(text.strip())
            except ValueError as e:
                raise CertifyNetError(f"{path}, line {lineno}: column {c!r}: {e}") from None
        if row["correct"] != int(row["predict"] == row["label"]):
            raise CertifyNetError(f"{path}, line {lineno}: correct={row['correct']} but predict={row['predict']}, "
                                  f"label={row['label']}")
        if row["idx"] in first_line_of:
            raise CertifyNetError(f"{path}, line {lineno}: duplicate idx {row['idx']} "
                                  f"(first at line {first_line_of[row['idx']]})")
        first_line_of[row["idx"]] = lineno
        for c in header:
            cols[c].append(row[c])
    if not first_line_of:
        raise CertifyNetError(f"{path}: no data rows after the header")

    data = pd.DataFrame(cols)
    for c, parse in zip(header, parsers):  # extra columns (pA_upper, method, ...): numeric where all are numbers
        if parse is str:
            try:
                data[c] = pd.to_numeric(data[c])
            except (ValueError, TypeError):
                pass

    meta = {**_meta_from_name(path), **read_meta(path)}  # the sidecar wins over the file name
    if not meta.get("method"):
        methods = data["method"].unique() if "method" in data else []
        # a log without sidecar or method column is Cohen's certify.py, i.e. Neyman–Pearson
        meta["method"] = str(methods[0]) if len(methods) == 1 else ("mixed" if len(methods) else "np")
    return CertifyLog(path=path, data=data, meta=meta, label=label or _default_label(path, meta))


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


def mean_samples(log: CertifyLog) -> float:
    """Forward passes per input: mean(samples), else mean(n) + N0 (sidecar), else N + N0 (sidecar), else NaN."""
    d, n0 = log.data, log._get("N0", float) or 0.0
    if "samples" in d:
        return float(d["samples"].mean())
    if "n" in d:
        return float(d["n"].mean()) + n0
    n = log._get("N", float)
    return n + n0 if n is not None else math.nan


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


def best_mask(values: pd.Series, decimals: int, best: Optional[str]) -> pd.Series:
    """True where the value, rounded as displayed, equals the column's best (max, or min when lower is better).
    Ties are all True; nothing is marked when fewer than two values are present."""
    rounded = pd.to_numeric(values, errors="coerce").round(decimals)
    if best is None or rounded.notna().sum() < 2:
        return pd.Series(False, index=values.index)
    target = rounded.max() if best == "max" else rounded.min()
    return rounded == target


def _cells(df: pd.DataFrame, bold, nan: str, bold_best: bool) -> list:
    """Formatted cell strings, row-major; `bold` wraps a string."""
    out = [[None] * len(df.columns) for _ in range(len(df))]
    for j, col in enumerate(df.columns):
        spec = _column_spec(col)
        mask = best_mask(df[col], *spec) if spec and bold_best else pd.Series(False, index=df.index)
        for i, (v, b) in enumerate(zip(df[col], mask)):
            if spec is None:
                s = nan if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else str(v)
            else:
                s = nan if pd.isna(v) else f"{v:.{spec[0]}f}"
            out[i][j] = bold(s) if b else s
    return out


def to_markdown(df: pd.DataFrame, bold_best: bool = True) -> str:
    """GitHub Markdown table; the best value of each metric column in **bold**."""
    df = _display_frame(df)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    cells = _cells(df, lambda s: f"**{s}**", "–", bold_best)
    align = ["---:" if _column_spec(c) else ":---" for c in df.columns]
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(esc(s) for s in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "σ": r"$\sigma$", "α": r"$\alpha$", "ρ": r"$\rho$", "–": "--"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(df: pd.DataFrame, title: Optional[str] = None, bold_best: bool = True) -> str:
    """booktabs table (needs \\usepackage{booktabs}); the best value of each metric column in \\textbf."""
    df = _display_frame(df)
    head = [f"${c}$" if c.startswith("r=") or c == "m" else tex_escape(c) for c in df.columns]
    cells = _cells(df, lambda s: rf"\textbf{{{s}}}", "--", bold_best)
    spec = "".join("r" if _column_spec(c) else "l" for c in df.columns)
    lines = [r"\begin{table}[t]", r"\centering"]
    if title:
        lines.append(rf"\caption{{{tex_escape(title)}}}")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    lines += [" & ".join(s if s.startswith(r"\textbf") else tex_escape(s) for s in row) + r" \\" for row in cells]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


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
def _new_figure():
    """A Figure drawn by the Agg canvas (no pyplot, no global backend switch, safe without a display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=150)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, stem: Path) -> list:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0])
    fig.savefig(paths[1], metadata={"CreationDate": None})
    return paths


def plot_certified_accuracy(logs: Sequence[CertifyLog], out_stem, *, title: Optional[str] = None,
                            grouped: bool = False, hp_rho=None, alpha=None) -> list:
    """Certified accuracy vs radius, one line per log → <out_stem>.png/.pdf.
    With `grouped`, one solid line per (dataset, method) for the envelope over σ, its logs dashed."""
    # exact step function: acc is constant on (R_k, R_k+1] between consecutive observed radii → steps-pre
    radii = np.concatenate([log.data["radius"].to_numpy(float) for log in logs])
    grid = np.unique(np.concatenate([[0.0, max(radii.max() * 1.05, 0.1)], radii]))
    curves = _accuracies(logs, grid, hp_rho, alpha)
    fig, ax = _new_figure()
    if grouped:
        groups = {}
        for log, curve in zip(logs, curves):
            groups.setdefault(envelope_group(log), []).append(curve)
        for k, ((dataset, method), members) in enumerate(groups.items()):
            color = f"C{k % 10}"
            for curve in members:
                ax.plot(grid, curve, color=color, lw=0.8, ls="--", alpha=0.45, drawstyle="steps-pre")
            ax.plot(grid, np.max(members, axis=0), color=color, lw=2.0, drawstyle="steps-pre",
                    label=f"{dataset} {method} (envelope of {len(members)})")
    else:
        for log, curve in zip(logs, curves):
            ax.plot(grid, curve, lw=1.5, drawstyle="steps-pre", label=log.label)
    ax.set_xlabel("radius (ℓ2)")
    ax.set_ylabel("certified accuracy" + (" (high-probability)" if hp_rho is not None else ""))
    ax.set_xlim(0.0, grid[-1])
    ax.set_ylim(min(0.0, float(np.min(curves))), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, Path(out_stem))


# ----------------------------------------------------------------------------------------------- report
_BOLD_NOTE = ("Best value per column in bold (ties all bold; compared as displayed); higher is better for "
              "certified accuracy (r=…), ACR and speed-up, lower for abstain, samples/input and sec/input.")


def write_report(out_dir, logs, summary, env=None, *, title=None, hp_rho=None, alpha=None, baseline=None) -> Path:
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
    if env is not None:
        lines += ["", "## Envelope over σ", "",
                  "Per (dataset, method) and radius, the maximum certified accuracy over the logs at different σ.",
                  "", "![Envelope over sigma](certified_accuracy_envelope.png)", "", to_markdown(env, bold_best=False)]
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_outputs(out_dir, logs, summary, env=None, *, title=None, hp_rho=None, alpha=None, baseline=None) -> Path:
    """Write table.md/.tex/.csv, certified_accuracy.png/.pdf and report.md into out_dir; with an envelope
    table `env` also envelope.md/.tex/.csv and certified_accuracy_envelope.png/.pdf. Returns out_dir."""
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
        write_report(out_dir, logs, summary, env, title=title, hp_rho=hp_rho, alpha=alpha, baseline=baseline)
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
    fig, ax = _new_figure()
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

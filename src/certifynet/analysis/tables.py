"""Tables of the summary: GitHub Markdown, LaTeX (booktabs, pure ASCII) and CSV, the best value of each metric
column in bold among comparable runs (same dataset and σ), and the LaTeX escaping of any Unicode label."""
from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path

import pandas as pd

from certifynet.analysis.metrics import PA_BELOW_HALF, PA_QUANTILE_COLUMNS

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
    **{c: (4, None) for c in PA_QUANTILE_COLUMNS},  # quantiles of p̲_A (report.md)
    PA_BELOW_HALF: (3, None),
}
_SUMMARY_ONLY = ("dataset", "method", "sigma", "alpha", "file")  # kept in the CSV, not shown in md/tex


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


def best_mask(values: pd.Series, decimals: int, best: str | None, groups: pd.Series | None = None) -> pd.Series:
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


def to_latex(df: pd.DataFrame, title: str | None = None, bold_best: bool = True) -> str:
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


def write_tables(df: pd.DataFrame, out_dir, stem: str = "table", title: str | None = None,
                 bold_best: bool = True) -> list:
    """Write <stem>.md, <stem>.tex (booktabs) and <stem>.csv (full precision, all columns); return the paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "tex", "csv")]
    paths[0].write_text(to_markdown(df, bold_best), encoding="utf-8")
    paths[1].write_text(to_latex(df, title, bold_best), encoding="utf-8")
    df.to_csv(paths[2], index=False)
    return paths


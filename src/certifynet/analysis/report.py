"""Every output of `analyze.py --out DIR` in one call: the tables, the figures and a one-page report.md.

The report leads with certified accuracy per radius; ACR stays a secondary column, because a trivial
classifier can reach an arbitrarily large ACR (Sun et al., ICML 2025). It also shows the distribution of p̲_A,
the alternative those authors suggest, for the logs that record it.

The output folder goes through `records.guard` (`claim_output`): a new or empty folder, or an analysis folder
of the same logs (`analysis_settings`), is written; a folder of anything else is refused untouched, an
analysis of other logs unless `force`. A folder holding only analysis outputs of an earlier version (no
marker) is recognised by their names (`is_analysis_output`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from certifynet.analysis.logs import read_logs
from certifynet.analysis.metrics import DEFAULT_RADII, envelope, pa_lower, pa_lower_quantiles, summarize
from certifynet.analysis.plots import plot_certified_accuracy, plot_cost, plot_pa_lower
from certifynet.analysis.tables import to_markdown, write_tables
from certifynet.errors import CertifyNetError
from certifynet.records.guard import FolderClaim, check_folder, claim_folder

_BOLD_NOTE = ("Best value per column among comparable runs (same dataset and σ) in bold (ties all bold; compared "
              "as displayed); higher is better for certified accuracy (r=…), ACR and speed-up, lower for abstain, "
              "samples/input and sec/input.")
_ACR_NOTE = ("Certified accuracy per radius is the result to compare; ACR is secondary, because a trivial "
             "classifier can reach an arbitrarily large ACR and it rewards easy inputs over hard ones "
             "(Sun et al., ICML 2025).")
_PA_NOTE = ("p̲_A is each input's lower confidence bound on the probability of its top class under noise: the "
            "certificate needs p̲_A ≥ ½ (below, the smoothed classifier abstains), and its radius grows with p̲_A. "
            "Sun et al. (ICML 2025) suggest the distribution of p_A, rather than ACR, to compare smoothed "
            "classifiers. The plot is the share of inputs with p̲_A ≤ x; the table gives its quantiles "
            "(m: inputs with a p̲_A) and the share below ½.")


_FIGURES = ("certified_accuracy", "certified_accuracy_envelope", "cost", "pA_lower", "certified_vs_empirical")


def is_analysis_output(name: str) -> bool:
    """Whether `name` is a file `write_outputs` (or analyze.py --empirical) writes."""
    stem, ext = os.path.splitext(name)
    return (name == "report.md" or (stem in ("table", "envelope") and ext in (".md", ".tex", ".csv"))
            or (stem in _FIGURES and ext in (".png", ".pdf")))


def analysis_settings(log_paths: Iterable) -> dict:
    """What an analysis folder is of: the logs (absolute paths, sorted)."""
    return {"logs": sorted({os.path.abspath(str(p)) for p in log_paths})}


def _older_analysis(entries: set) -> bool:
    return all(is_analysis_output(e) for e in entries)


def check_output(out_dir, log_paths: Iterable, force: bool = False) -> None:
    """Whether `claim_output` would accept out_dir (creates nothing): analyze.py checks it before reading."""
    check_folder(str(out_dir), "analysis", analysis_settings(log_paths), name="out", force=force,
                 adopt=_older_analysis)


def claim_output(out_dir, log_paths: Iterable, force: bool = False) -> FolderClaim:
    """Hold out_dir for the analysis of `log_paths` (see the module doc); a context manager."""
    return claim_folder(str(out_dir), "analysis", analysis_settings(log_paths), name="out", force=force,
                        adopt=_older_analysis)


def _log_lines(logs) -> list[str]:
    """One bullet per log: label, file, inputs and the metadata that is known."""
    lines = []
    for log in logs:
        extra = ", ".join(f"{k}={log.meta[k]}" for k in ("dataset", "model", "method", "sigma", "N0", "N", "alpha")
                          if log.meta.get(k) is not None)
        lines.append(f"- **{log.label}**: `{log.path.name}`, {len(log.data)} inputs" + (f"; {extra}" if extra else ""))
    return lines


def _pa_lower_lines(logs, figure: bool) -> list[str]:
    """The p̲_A section: the note, the figure (when written), the quantile table, the logs without p̲_A."""
    lines = ["", "## Distribution of p̲_A", ""]
    skipped = [f"**{log.label}**" for log in logs if pa_lower(log) is None]
    if len(skipped) == len(logs):
        return [*lines, ("No log records p̲_A (column `pA_lower`; Cohen et al.'s published logs do not), so its "
                         "distribution is not shown.")]
    lines += [_PA_NOTE, ""]
    if figure:
        lines += ["![Distribution of p̲_A](pA_lower.png)", ""]
    lines.append(to_markdown(pa_lower_quantiles(logs), bold_best=False).rstrip("\n"))
    if skipped:
        lines += ["", f"Not shown (no `pA_lower` column, e.g. Cohen et al.'s published logs): {', '.join(skipped)}."]
    return lines


def write_report(out_dir, logs, summary, env=None, *, title=None, hp_rho=None, alpha=None, baseline=None,
                 cost: bool = False, pa_figure: bool = False) -> Path:
    """One-page report.md: the inputs, the plot(s) and the table(s) (all files already in out_dir)."""
    lines = [f"# {title or 'Certification results'}", "", "Logs:", "", *_log_lines(logs)]
    lines += ["", "![Certified accuracy vs radius](certified_accuracy.png)", "", to_markdown(summary), _BOLD_NOTE]
    lines.append("Certified accuracy at r = mean(correct ∧ radius ≥ r); r=0 is the clean accuracy of the smoothed "
                 "classifier; ACR = mean(radius · correct)."
                 + (f" Speed-up = samples/input of {baseline} ÷ samples/input." if baseline else ""))
    lines.append(_ACR_NOTE)
    if hp_rho is not None:
        lines.append(f"Certified accuracies are high-probability (ρ={hp_rho:g}, "
                     f"α={'sidecar' if alpha is None else alpha}): each is lowered by "
                     "α + sqrt(α(1−α)·ln(1/ρ)/m) + ln(1/ρ)/(3m).")
    lines += _pa_lower_lines(logs, pa_figure)
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


def write_outputs(out_dir, logs, summary, env=None, *, title=None, hp_rho=None, alpha=None, baseline=None,
                  force: bool = False) -> Path:
    """Write table.md/.tex/.csv, certified_accuracy.png/.pdf and report.md into out_dir; with an envelope
    table `env` also envelope.md/.tex/.csv and certified_accuracy_envelope.png/.pdf; when any log knows its
    forward passes per input, cost.png/.pdf (see `plot_cost`); when any log records p̲_A, pA_lower.png/.pdf
    (see `plot_pa_lower`). The folder is claimed first (`claim_output`; `force`: replace an analysis of other
    logs). Returns out_dir."""
    out_dir = Path(out_dir)
    with claim_output(out_dir, [log.path for log in logs], force):
        try:
            write_tables(summary, out_dir, "table", title)
            plot_certified_accuracy(logs, out_dir / "certified_accuracy", title=title, hp_rho=hp_rho, alpha=alpha)
            if env is not None:
                write_tables(env, out_dir, "envelope", f"{title} (envelope over σ)" if title else "Envelope over σ",
                             bold_best=False)
                plot_certified_accuracy(logs, out_dir / "certified_accuracy_envelope", title=title, grouped=True,
                                        hp_rho=hp_rho, alpha=alpha)
            cost = plot_cost(logs, out_dir / "cost", title=title) is not None
            pa_figure = plot_pa_lower(logs, out_dir / "pA_lower", title=title) is not None
            write_report(out_dir, logs, summary, env, title=title, hp_rho=hp_rho, alpha=alpha, baseline=baseline,
                         cost=cost, pa_figure=pa_figure)
        except OSError as e:
            raise CertifyNetError(f"cannot write outputs to {out_dir}: {e.strerror or e}") from None
    return out_dir


def summarize_runs(log_paths: Iterable, out_dir, labels: Sequence[str] | None = None, radii=DEFAULT_RADII, *,
                   title: str | None = None, envelope_over_sigma: bool = False, baseline: str | None = None,
                   hp_rho: float | None = None, alpha: float | None = None, force: bool = False) -> pd.DataFrame:
    """Read the logs, summarise them and write every output (see `write_outputs`) into out_dir in one call.
    Returns the summary DataFrame (see `summarize`)."""
    logs = read_logs(list(log_paths), labels)
    summary = summarize(logs, radii, hp_rho=hp_rho, alpha=alpha, baseline=baseline)
    env = envelope(logs, radii, hp_rho=hp_rho, alpha=alpha) if envelope_over_sigma else None
    write_outputs(out_dir, logs, summary, env, title=title, hp_rho=hp_rho, alpha=alpha, baseline=baseline,
                  force=force)
    return summary

"""Summarise certification logs: certified accuracy per radius, ACR, cost, the distribution of p̲_A; Markdown,
LaTeX and CSV tables, plots, a one-page report.

Reads our `certify.py` logs (optional `<log>.meta.json` sidecar) and Cohen et al.'s published logs.
For m inputs with radius R_i and correct_i ∈ {0, 1}: certified accuracy acc(r) = (1/m) Σ [correct_i ∧ R_i ≥ r]
is the primary result; ACR = (1/m) Σ R_i · correct_i is secondary (a trivial classifier can make it arbitrarily
large, Sun et al., ICML 2025). The formulas are in `metrics`.

- `logs`: reading a log and its sidecar (`read_log`, `read_logs`, `CertifyLog`), one-line errors naming the line.
- `metrics`: certified accuracy, HP correction, samples per input, `summarize`, `envelope`, p̲_A quantiles.
- `tables`: Markdown / LaTeX / CSV, TeX escaping, best values in bold among comparable runs.
- `plots`: styles shared by every figure; accuracy, envelope, cost, gain and p̲_A figures.
- `report`: every output of `analyze.py --out` (`write_outputs`, `write_report`, `summarize_runs`).
- `empirical`: certified accuracy beside the empirical robust accuracy of an attack.py curve.

Every public name is importable from `certifynet.analysis`, so `from certifynet.analysis import summarize` works.
"""
from __future__ import annotations

from certifynet.analysis.empirical import certified_vs_empirical, plot_certified_vs_empirical, read_empirical_curve
from certifynet.analysis.logs import REQUIRED_COLUMNS, CertifyLog, parse_time, read_log, read_logs
from certifynet.analysis.metrics import (
    DEFAULT_RADII,
    PA_QUANTILES,
    certified_accuracy,
    check_radii,
    envelope,
    envelope_group,
    hp_correction,
    mean_samples,
    pa_lower,
    pa_lower_quantiles,
    samples_per_input,
    summarize,
)
from certifynet.analysis.plots import (
    METHOD_STYLES,
    SIGMA_COLOURS,
    certified_accuracy_figure,
    pa_lower_figure,
    plot_certified_accuracy,
    plot_cost,
    plot_gain,
    plot_pa_lower,
)
from certifynet.analysis.report import summarize_runs, write_outputs, write_report
from certifynet.analysis.tables import (
    METRICS,
    best_mask,
    comparable_groups,
    tex_escape,
    to_latex,
    to_markdown,
    write_tables,
)

__all__ = [
    # logs
    "REQUIRED_COLUMNS", "CertifyLog", "parse_time", "read_log", "read_logs",
    # metrics
    "DEFAULT_RADII", "PA_QUANTILES", "certified_accuracy", "check_radii", "envelope", "envelope_group",
    "hp_correction", "mean_samples", "pa_lower", "pa_lower_quantiles", "samples_per_input", "summarize",
    # tables
    "METRICS", "best_mask", "comparable_groups", "tex_escape", "to_latex", "to_markdown", "write_tables",
    # plots
    "METHOD_STYLES", "SIGMA_COLOURS", "certified_accuracy_figure", "pa_lower_figure", "plot_certified_accuracy",
    "plot_cost", "plot_gain", "plot_pa_lower",
    # report
    "summarize_runs", "write_outputs", "write_report",
    # empirical
    "certified_vs_empirical", "plot_certified_vs_empirical", "read_empirical_curve",
]

"""The figures of a report: certified accuracy vs radius (per σ, or Cohen's envelope over σ), the cost of each
run, the gain of runs over a base run, and the distribution of p̲_A. Each `plot_*` writes <out_stem>.png/.pdf.

- Styles agree across every figure: a hue per σ (Okabe–Ito, colour-blind safe; the same σ gets the same colour
  everywhere); a line style, hollow marker and shade per method, in the order of
  `certifynet.certify.methods.METHODS` (np, dsrs, iss-np, iss-dsrs, sequential), other methods next (`_Styles`).
- Curves drawn first are wider and lie below, and markers are staggered, so coinciding curves all stay visible
  (`_draw_curves`).
- Figures are drawn by the Agg canvas (no pyplot, safe without a display) under paper font sizes; PDFs embed
  TrueType fonts, never Type 3 (`_save`).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from certifynet.analysis.logs import CertifyLog
from certifynet.analysis.metrics import _accuracies, pa_lower, samples_per_input
from certifynet.certify.methods import METHODS

SIGMA_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_USUAL_SIGMAS = (0.25, 1.0, 0.5, 0.12, 0.75, 1.5, 2.0)  # the same σ gets the same colour in every figure
METHOD_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (6, 2, 1, 2, 1, 2)), "P"),
                 ((0, (1, 1)), "X"), ((0, (3, 1, 1, 1)), "h"), ((0, (8, 2)), "v"))
_SHADES = (0.0, 0.5, -0.5, 0.25, -0.25, 0.65, -0.65, -0.35)  # of METHOD_STYLES[i]: > 0 towards white, < 0 black
# fixed styles: np, dsrs, iss-np, iss-dsrs, sequential get 0-4 (METHODS' order); other methods next; repeats
# of one method at one σ take styles from the end
_KNOWN_METHODS = tuple(METHODS)
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


# ----------------------------------------------------------------------------------------------- figures
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


LEGEND_INSIDE_CHARS = 24   # longer labels would overflow a 4-inch panel's inside legend (7.5 pt)


def _finish_accuracy_axes(ax, grid, curves, hp_rho, title, below: bool = False) -> int:
    """Labels, limits, grid, title; the legend inside where it fits (≤ 4 short entries), else beside the axes,
    or below them with `below` (multi-panel figures: no legend runs over the next panel or off the figure).
    Returns the number of legend rows placed below the axes (0 otherwise)."""
    ax.set_xlabel("radius (ℓ2)")
    ax.set_xlim(0.0, grid[-1])
    ax.set_ylim(min(0.0, float(np.min(curves))), 1.02)
    ax.grid(alpha=0.3)
    labels = ax.get_legend_handles_labels()[1]
    rows = 0
    if len(labels) <= 4 and max(map(len, labels), default=0) <= LEGEND_INSIDE_CHARS:
        ax.legend(loc="best", framealpha=0.85)
    elif below:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), borderaxespad=0.0, frameon=False)
        rows = len(labels)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_title(title)
    if ax.get_subplotspec().is_first_col():
        ax.set_ylabel("certified accuracy" + (" (high-probability)" if hp_rho is not None else ""))
    return rows


def plot_certified_accuracy(logs: Sequence[CertifyLog], out_stem, *, title: str | None = None,
                            grouped: bool = False, hp_rho=None, alpha=None) -> list:
    """Certified accuracy vs radius → <out_stem>.png/.pdf (see `certified_accuracy_figure`)."""
    fig = certified_accuracy_figure(logs, title=title, grouped=grouped, hp_rho=hp_rho, alpha=alpha)
    return _save(fig, Path(out_stem))


@_paper_style
def certified_accuracy_figure(logs: Sequence[CertifyLog], *, title: str | None = None, grouped: bool = False,
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
    below_rows = 0
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
        below_rows = max(below_rows, _finish_accuracy_axes(ax, grid, curves, hp_rho, panel_title,
                                                           below=len(order) > 1))
    if below_rows:  # room for the legends under the panels, the axes keeping their height
        w, h = fig.get_size_inches()
        fig.set_size_inches(w, h + 0.25 + 0.16 * below_rows)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@_paper_style
def plot_cost(logs: Sequence[CertifyLog], out_stem, *, title: str | None = None) -> list | None:
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
                       boxprops={"facecolor": colour, "alpha": 0.3, "edgecolor": colour}, medianprops={"color": colour},
                       whiskerprops={"color": colour}, capprops={"color": colour},
                       flierprops={"marker": ".", "markersize": 3, "markeredgecolor": colour})
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
def plot_gain(base: CertifyLog, others: Sequence[CertifyLog], out_stem, *, title: str | None = None) -> list:
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




@_paper_style
def pa_lower_figure(logs: Sequence[CertifyLog], *, title: str | None = None):
    """The empirical CDF F(x) = (1/m) Σ [p̲_A,i ≤ x] of each log that records p̲_A (column `pA_lower`), all on
    one axes in the accuracy plot's colours and line styles, the abstain region p̲_A < ½ shaded; None when no
    log records p̲_A (Cohen's logs)."""
    runs = [(log, v) for log, v in ((log, pa_lower(log)) for log in logs) if v is not None]
    if not runs:
        return None
    styles = _Styles(logs)
    grid = np.unique(np.concatenate([[0.0, 1.0], *(v for _, v in runs)]))
    # F just left of each grid point, drawn with steps-pre: the exact step function, jumping at each value
    curves = [np.searchsorted(np.sort(v), grid, side="left") / v.size for _, v in runs]
    fig, (ax,) = _new_figure(width=5.0, height=3.5)
    ax.axvspan(min(0.0, grid[0]), 0.5, color="0.93", zorder=0)
    ax.axvline(0.5, color="0.3", lw=0.9, ls="--", zorder=1, label="½: abstain below")
    _draw_curves(ax, grid, curves, [styles.line(log) for log, _ in runs], [styles.colour(log) for log, _ in runs],
                 [log.label for log, _ in runs])
    ax.set_xlim(min(0.0, grid[0]), max(1.0, grid[-1]))
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(r"$\underline{p_A}$: lower confidence bound of the top class's probability")
    ax.set_ylabel(r"share of inputs with $\underline{p_A} \leq x$")
    ax.grid(alpha=0.3)
    if len(ax.get_legend_handles_labels()[0]) <= 4:
        ax.legend(loc="upper left", framealpha=0.85)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_pa_lower(logs: Sequence[CertifyLog], out_stem, *, title: str | None = None) -> list | None:
    """The distribution of p̲_A → <out_stem>.png/.pdf (see `pa_lower_figure`); None when no log records p̲_A."""
    fig = pa_lower_figure(logs, title=title)
    return None if fig is None else _save(fig, Path(out_stem))

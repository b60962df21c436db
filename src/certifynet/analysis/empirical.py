"""Certified against empirical robustness: an `attack.py` curve log (attack at each ε, then PREDICT) beside the
certified accuracy at r = ε of the same smoothed classifier on the same inputs. An input certified at radius
R ≥ ε cannot be attacked at ε, so the certified curve lies below the empirical one, up to the failure
probabilities of CERTIFY and PREDICT."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from certifynet.analysis.logs import CertifyLog, _parse_column, _parse_correct, _parse_int
from certifynet.analysis.metrics import certified_accuracy
from certifynet.analysis.plots import _new_figure, _paper_style, _save
from certifynet.errors import CertifyNetError
from certifynet.records import read_meta


def _eps_grid(eps, path) -> list[float]:
    """The sidecar's ε grid: a non-empty list of distinct finite numbers >= 0."""
    try:
        grid = [float(e) for e in eps]
    except (TypeError, ValueError):
        grid = None
    if not grid or not all(math.isfinite(e) and e >= 0 for e in grid) or len({f"{e:g}" for e in grid}) != len(grid):
        raise CertifyNetError(f"{path}: its sidecar's 'eps' must be a list of distinct finite numbers >= 0, "
                              f"got {eps!r}")
    return grid


def read_empirical_curve(path) -> tuple:
    """An attack.py curve log (sidecar kind `attack_curve`): (ε grid, DataFrame with idx, label and correct@ε
    columns, sidecar dict)."""
    path = Path(path)
    if not path.is_file():
        raise CertifyNetError(f"{path}: no such attack curve log")
    meta = read_meta(str(path), required=False)
    if meta.get("kind") != "attack_curve":
        raise CertifyNetError(f"{path}: not an attack curve log (sidecar kind {meta.get('kind')!r}; "
                              "attack.py writes one when given an ε grid)")
    try:
        data = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as e:
        raise CertifyNetError(f"{path}: unreadable ({e})") from None
    eps = _eps_grid(meta.get("eps"), path)
    columns = {"idx": _parse_int, "label": _parse_int, **{f"correct@{e:g}": _parse_correct for e in eps}}
    missing = [c for c in columns if c not in data]
    if missing or data.empty:
        raise CertifyNetError(f"{path}: " + (f"missing column(s) {', '.join(missing)}" if missing else "no rows"))
    for col, parse in columns.items():   # every value the comparison reads, checked like a certify log's
        data[col], bad = _parse_column(data[col].astype(str), parse)
        if bad is not None:
            raise CertifyNetError(f"{path}, line {bad[0] + 2}: column {col}: {bad[1]}")
    if data["idx"].duplicated().any():
        raise CertifyNetError(f"{path}: idx {int(data['idx'][data['idx'].duplicated()].iloc[0])} appears twice")
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
                                title: str | None = None) -> list:
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

"""Certification math over counts: numpy/scipy only, never torch.

The Neyman–Pearson names below load `neyman_pearson` (and scipy.stats, about a second) on first use, so that a
reader of the light modules `outcome` and `methods` (analyze.py) does not pay for scipy.
"""
from __future__ import annotations

import importlib

__all__ = ["cp_lower", "cp_upper", "cp_interval", "np_radius", "certify_from_counts",
           "predict_pvalue", "predict_abstains", "predict_from_counts"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("certifynet.certify.neyman_pearson"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

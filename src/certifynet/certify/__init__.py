"""Certification math over counts: numpy/scipy only, never torch, never files.

The public API, by method (each module's docstring states its math):

- NP (Cohen et al.), `neyman_pearson`: `cp_lower`, `cp_upper`, `cp_interval`, `np_radius`,
  `certify_from_counts`, and PREDICT: `predict_from_counts` (`top_two`, `predict_pvalue`, `predict_abstains`).
- DSRS (Li et al.), `dsrs`: `dsrs_radius`, `dsrs_certify`, `dsrs_intervals`, `generalized_np_radius`, and the
  noise family's `sigma_prime`, `check_k`, `truncation_percentile`, `truncation_beta`.
- ISS (Chen et al.), `iss`: `iss_sample_size`, `IssPlanner`, `iss_certify`, and for DSRS `iss_dsrs_budget`,
  `dsrs_expected_radius_fn`.
- Sequential certification at fixed radii: `group_sequential.GroupSequentialCertifier` (exactly calibrated
  group-sequential tests, closure over radii) and `sequential` (`SequentialCertifier`, the anytime-valid
  confidence sequence: `confidence_sequence`, `radius_threshold`, `simulate`).
- What a row means: `methods.METHODS` and `outcome` (`is_correct`, `ABSTAIN`, `UNKNOWN_LABEL`).

Certifying one counts row is `certifynet.certify.from_counts`.

Every name is loaded on first use (PEP 562 `__getattr__`): the math modules import scipy.stats (about a second),
which a reader of the light modules `outcome` and `methods` (analyze.py) should not pay for.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "neyman_pearson": ("cp_lower", "cp_upper", "cp_interval", "np_radius", "certify_from_counts",
                       "predict_from_counts", "Prediction", "top_two", "predict_pvalue", "predict_abstains"),
    "dsrs": ("dsrs_radius", "dsrs_certify", "dsrs_intervals", "generalized_np_radius", "sigma_prime", "check_k",
             "truncation_percentile", "truncation_beta"),
    "iss": ("iss_sample_size", "IssPlanner", "iss_certify", "iss_dsrs_budget", "dsrs_expected_radius_fn"),
    "sequential": ("SequentialCertifier", "confidence_sequence", "radius_threshold", "simulate"),
    "group_sequential": ("GroupSequentialCertifier",),
    "methods": ("METHODS", "COUNTS_METHODS"),
    "outcome": ("is_correct", "ABSTAIN", "UNKNOWN_LABEL"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [*_HOME_OF, "methods", "outcome"]


def __getattr__(name: str):
    if name in _HOME_OF:
        return getattr(importlib.import_module(f"certifynet.certify.{_HOME_OF[name]}"), name)
    if name in ("methods", "outcome"):
        return importlib.import_module(f"certifynet.certify.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

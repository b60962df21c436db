"""Certification math over counts: numpy/scipy only, never torch, never files.

The public API, by method (each module's docstring states its math):

- NP (Cohen et al.), `neyman_pearson`: `cp_lower`, `cp_upper`, `cp_interval`, `np_radius`,
  `certify_from_counts`, and PREDICT: `predict_from_counts` (`top_two`, `predict_pvalue`, `predict_abstains`).
- DSRS (Li et al.), `dsrs`: `dsrs_radius`, `dsrs_certify`, `dsrs_intervals`, `generalized_np_radius`, and the
  noise family's `sigma_prime`, `check_k`, `truncation_percentile`, `truncation_beta`.
- ISS (Chen et al.), `iss`: `iss_sample_size`, `IssPlanner`, `iss_certify`, and for DSRS `iss_dsrs_budget`,
  `dsrs_expected_radius_fn`.
- Sequential certification at fixed radii, `sequential`: `SequentialCertifier`, `confidence_sequence`,
  `radius_threshold`, `simulate`.
- What a row means: `methods.METHODS` and `outcome` (`is_correct`, `ABSTAIN`, `UNKNOWN_LABEL`).

Reading and certifying counts files is `certifynet.certify.from_counts` (not imported here: it reads files).
"""
from certifynet.certify import methods, outcome
from certifynet.certify.dsrs import (check_k, dsrs_certify, dsrs_intervals, dsrs_radius, generalized_np_radius,
                                     sigma_prime, truncation_beta, truncation_percentile)
from certifynet.certify.iss import (IssPlanner, dsrs_expected_radius_fn, iss_certify, iss_dsrs_budget,
                                    iss_sample_size)
from certifynet.certify.methods import COUNTS_METHODS, METHODS
from certifynet.certify.neyman_pearson import (Prediction, certify_from_counts, cp_interval, cp_lower, cp_upper,
                                               np_radius, predict_abstains, predict_from_counts, predict_pvalue,
                                               top_two)
from certifynet.certify.outcome import ABSTAIN, UNKNOWN_LABEL, is_correct
from certifynet.certify.sequential import SequentialCertifier, confidence_sequence, radius_threshold, simulate

__all__ = [
    # NP and PREDICT
    "cp_lower", "cp_upper", "cp_interval", "np_radius", "certify_from_counts",
    "predict_from_counts", "Prediction", "top_two", "predict_pvalue", "predict_abstains",
    # DSRS
    "dsrs_radius", "dsrs_certify", "dsrs_intervals", "generalized_np_radius", "sigma_prime", "check_k",
    "truncation_percentile", "truncation_beta",
    # ISS
    "iss_sample_size", "IssPlanner", "iss_certify", "iss_dsrs_budget", "dsrs_expected_radius_fn",
    # sequential
    "SequentialCertifier", "confidence_sequence", "radius_threshold", "simulate",
    # rows
    "methods", "outcome", "METHODS", "COUNTS_METHODS", "is_correct", "ABSTAIN", "UNKNOWN_LABEL",
]

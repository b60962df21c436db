"""Certification math over counts: numpy/scipy only, never torch."""
from certifynet.certify.neyman_pearson import (certify_from_counts, cp_interval, cp_lower, cp_upper,
                                               np_radius, predict_abstains, predict_from_counts,
                                               predict_pvalue)

__all__ = ["cp_lower", "cp_upper", "cp_interval", "np_radius", "certify_from_counts",
           "predict_pvalue", "predict_abstains", "predict_from_counts"]

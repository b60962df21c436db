"""Certify-Net: certified robustness by randomized smoothing (NP, DSRS, ISS, denoised smoothing)."""
from certifynet._version import __package_name__, __version__

__all__ = ["__package_name__", "__version__"]

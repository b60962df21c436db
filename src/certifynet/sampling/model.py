"""The base classifier f to smooth: a checkpoint, optionally behind a denoiser (denoised smoothing)."""
from __future__ import annotations

import logging

from certifynet.errors import warn
from certifynet.models import file_sha256, load_checkpoint, parse_normalization

log = logging.getLogger(__name__)


def load_smoothing_model(model_path: str, dataset: str | None = None, arch: str | None = None,
                         denoiser_path: str | None = None, sigma: float | None = None, device="cpu",
                         normalization=None, quiet: bool = False):
    """(f in eval mode on `device`, the loaded checkpoint, metadata naming f). Logs a one-line summary
    (arch, dataset, parameters, normalisation) unless `quiet`; warns when σ lies outside the σ range the
    denoiser was trained at."""
    ckpt = load_checkpoint(model_path, arch=arch, dataset=dataset, normalization=parse_normalization(normalization))
    model, meta = ckpt.model, ckpt.metadata()
    if not quiet:
        log.info("model: %s", ckpt.summary())
    if denoiser_path:
        from certifynet.denoise import DenoisedClassifier, load_denoiser
        den = load_denoiser(denoiser_path)
        trained = (den.sigma or {}).get("values") or []
        if trained and sigma is not None and not min(trained) - 1e-9 <= sigma <= max(trained) + 1e-9:
            warn(f"denoiser '{denoiser_path}' was trained at σ in {trained}, smoothing uses σ={sigma}")
        model = DenoisedClassifier(den.model, model, sigma)
        meta.update(denoiser=den.path, denoiser_sha256=file_sha256(den.path), denoiser_arch=den.config)
    return model.to(device).eval(), ckpt, meta

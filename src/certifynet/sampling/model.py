"""The base classifier f to smooth: a checkpoint, optionally behind a denoiser (denoised smoothing): a DRUNet/DnCNN
checkpoint, or a diffusion model (a diffusers folder or an OpenAI checkpoint, `certifynet.denoise.diffusion`)."""
from __future__ import annotations

import logging

from certifynet.errors import CertifyNetError, warn
from certifynet.models import file_sha256, load_checkpoint, parse_normalization

log = logging.getLogger(__name__)


def load_smoothing_model(model_path: str, dataset: str | None = None, arch: str | None = None,
                         denoiser_path: str | None = None, sigma: float | None = None, device="cpu",
                         normalization=None, quiet: bool = False, diffusion_options=None):
    """(f in eval mode on `device`, the loaded checkpoint, metadata naming f). Logs a one-line summary
    (arch, dataset, parameters, normalisation) unless `quiet`; warns when σ lies outside the σ range the
    denoiser was trained at. A diffusion denoiser (`is_diffusion_source`) is loaded with `diffusion_options`
    (a `DiffusionOptions`) at t* for σ; its record (t*, ᾱ_t*, the schedule, the chain noise → … → classifier)
    goes into the metadata under "diffusion", and its summary into the log. Diffusion options other than the
    defaults are refused for any other denoiser."""
    ckpt = load_checkpoint(model_path, arch=arch, dataset=dataset, normalization=parse_normalization(normalization))
    model, meta = ckpt.model, ckpt.metadata()
    if not quiet:
        log.info("model: %s", ckpt.summary())
    if denoiser_path:
        from certifynet.denoise import DenoisedClassifier
        from certifynet.denoise.diffusion import DiffusionOptions, is_diffusion_source
        if is_diffusion_source(denoiser_path):
            den, dmeta = _diffusion(denoiser_path, sigma, diffusion_options, meta, quiet)
            meta.update({k: v for k, v in dmeta.items() if k != "summary"})
        else:
            if diffusion_options is not None and diffusion_options != DiffusionOptions():
                raise CertifyNetError(f"diffusion options do not apply to {{denoiser}} '{denoiser_path}', which is "
                                      "not a diffusion model", "denoiser")
            den = _checkpoint_denoiser(denoiser_path, sigma, meta)
        model = DenoisedClassifier(den, model, sigma)
    return model.to(device).eval(), ckpt, meta


def _diffusion(path: str, sigma, options, classifier_meta: dict, quiet: bool):
    """(D, record) of a diffusion denoiser at σ; the loader logs its summary unless `quiet`."""
    from certifynet.denoise.diffusion import load_diffusion_denoiser
    if sigma is None:
        raise CertifyNetError("a diffusion {denoiser} needs {sigma}: t* is chosen for σ", "denoiser", "sigma")
    return load_diffusion_denoiser(path, sigma, options, classifier_meta=classifier_meta, log_summary=not quiet)


def _checkpoint_denoiser(path: str, sigma, meta: dict):
    """A DRUNet/DnCNN checkpoint's module; warns when σ is outside the σ range it was trained at."""
    from certifynet.denoise import load_denoiser
    den = load_denoiser(path)
    trained = (den.sigma or {}).get("values") or []
    if trained and sigma is not None and not min(trained) - 1e-9 <= sigma <= max(trained) + 1e-9:
        warn(f"denoiser '{path}' was trained at σ in {trained}, smoothing uses σ={sigma}")
    meta.update(denoiser=den.path, denoiser_sha256=file_sha256(den.path), denoiser_arch=den.config)
    return den.model

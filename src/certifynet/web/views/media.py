"""Images: gallery thumbnails, a job's input x and its noisy copies x + δ_j (illustrative draws), the preview of
what the model will see (the form's input converted exactly as a job converts it) with the base classifier's
own prediction f(x) on it, and the favicon."""
from __future__ import annotations

import base64
import functools
import os
import threading

from flask import Blueprint, Response, abort, jsonify, request

from certifynet.data import dataset_info, image_tensor, read_image_array
from certifynet.errors import CertifyNetError
from certifynet.web import forms
from certifynet.web.gallery import Gallery
from certifynet.web.images import png_bytes
from certifynet.web.views.common import png, state
from certifynet.web.views.jobs import NOISY_COPIES, the_job

bp = Blueprint("media", __name__)
_model_lock = threading.Lock()


@bp.get("/favicon.ico")
def favicon():
    return Response(status=204)


@bp.get("/thumb/<dataset>/<int:idx>.png")
def thumb(dataset, idx):
    gallery = state().gallery
    if dataset not in gallery.datasets_for(dataset) or not 0 <= idx < gallery.size(dataset):
        abort(404)
    return png(_thumb_png(gallery, dataset, idx))


@bp.get("/jobs/<job_id>/input.png")
def job_input(job_id):
    return png(png_bytes(_job_input(the_job(job_id))))


@bp.get("/jobs/<job_id>/noisy/<int:j>.png")
def job_noisy(job_id, j):
    job = the_job(job_id)
    if not 0 <= j < NOISY_COPIES:
        abort(404)
    return png(_noisy_copy(job, j))


@functools.lru_cache(maxsize=4096)
def _thumb_png(gallery: Gallery, dataset: str, idx: int) -> bytes:
    return png_bytes(gallery.item(dataset, idx)[0])


def _job_input(job: dict):
    """The job's (single) input image as a [C,H,W] tensor."""
    inp = job["input"]
    if inp["kind"] == "gallery":
        return state().gallery.item(inp["dataset"], inp["idx"])[0]
    if inp["kind"] == "batch":
        abort(404)
    return image_tensor(read_image_array(os.path.join(state().root, job["files"]["input"])), job["dataset"])


def _noisy_copy(job: dict, j: int) -> bytes:
    """PNG of x + δ_j (clipped to [0,1] for display), δ_j ~ P with the job's σ and k (illustrative draws)."""
    import torch

    from certifynet.noise import make_noise
    x = _job_input(job)
    s = job["settings"]
    noise = make_noise("general_gaussian" if s.get("k") else "gaussian", s["sigma"], x.numel(), s.get("k") or 0)
    g = torch.Generator().manual_seed(int(s.get("seed") or 0) * NOISY_COPIES + j)
    return png_bytes(x + noise.sample_(torch.empty((1, *x.shape)), g)[0])


@functools.lru_cache(maxsize=2)
def _base_classifier(path: str, stamp, dataset: str, arch: str | None, denoiser: str | None, sigma: float):
    """f, as the job's worker loads it (the checkpoint, behind the denoiser if one is chosen), kept for previews."""
    from certifynet.sampling.model import load_smoothing_model
    return load_smoothing_model(path, dataset, arch, denoiser, sigma, "cpu", quiet=True)[0]


@bp.post("/certify/preview")
def preview():
    """What the model will see for the form's input (gallery image, upload or drawing, converted as the job
    converts it) as a PNG data URL, and the base classifier's own prediction argmax f(x) with its top
    softmax scores (no noise: what smoothing starts from)."""
    import torch

    from certifynet.web.views.certify import chosen_models
    st = state()
    try:
        model, denoiser = chosen_models(request.form)
        choice = forms.parse_input(request.form, request.files, model.dataset, st.gallery)
        if choice.kind == "batch":
            raise CertifyNetError("a batch has no single image to preview")
        if choice.kind == "gallery":
            x = st.gallery.item(choice.dataset, choice.idx)[0]
        else:
            x = image_tensor(choice.array, model.dataset)
        sigma = float(forms.field_text(request.form, "sigma") or model.sigma or 0.25)
        stamp = os.stat(os.path.join(st.root, model.path)).st_mtime_ns
        with _model_lock, torch.inference_mode():
            f = _base_classifier(os.path.join(st.root, model.path), stamp, model.dataset,
                                 model.arch if model.arch_given else None,
                                 os.path.join(st.root, denoiser.path) if denoiser else None, sigma)
            probs = torch.softmax(f(x.unsqueeze(0).float()), 1)[0]
    except (CertifyNetError, ValueError) as e:
        return jsonify(error=e.render(cli=True) if isinstance(e, CertifyNetError) else str(e)), 400
    top = torch.topk(probs, min(3, dataset_info(model.dataset).num_classes))
    return jsonify(image="data:image/png;base64," + base64.b64encode(png_bytes(x)).decode(), note=choice.note,
                   label=choice.label, prediction=int(top.indices[0]),
                   top=[[int(i), round(float(p), 4)] for p, i in zip(top.values, top.indices)])

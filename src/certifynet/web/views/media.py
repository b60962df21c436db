"""Images: gallery thumbnails, a job's input x and its noisy copies x + δ_j (illustrative draws), the favicon."""
from __future__ import annotations

import functools
import os

from flask import Blueprint, Response, abort

from certifynet.data import image_tensor, read_image_array
from certifynet.web.gallery import Gallery
from certifynet.web.images import png_bytes
from certifynet.web.views.common import png, state
from certifynet.web.views.jobs import NOISY_COPIES, the_job

bp = Blueprint("media", __name__)


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
    noise = make_noise("general_gaussian" if s["k"] else "gaussian", s["sigma"], x.numel(), s["k"])
    g = torch.Generator().manual_seed(int(s["seed"]) * NOISY_COPIES + j)
    return png_bytes(x + noise.sample_(torch.empty((1, *x.shape)), g)[0])

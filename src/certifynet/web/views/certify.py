"""The certify form (model, smoothing settings, input: a gallery image, an upload, a drawing or a batch) and
its submission, which queues a job running the CLI stages. Every bad value comes back as one line on the form."""
from __future__ import annotations

import dataclasses
import os

from flask import Blueprint, redirect, render_template, request, url_for

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.web import forms
from certifynet.web.images import save_input
from certifynet.web.views.common import int_arg, state
from certifynet.web.views.models import MAX_NAME

GALLERY_PAGE = 40  # thumbnails per gallery page

bp = Blueprint("certify", __name__)


def _gallery(ctx: dict, model, values) -> None:
    """The gallery part of the form: the datasets of the model's inputs and one page of thumbnails."""
    st = state()
    ctx["defaults"].update(sigma=model.sigma or 0.25, k=model.k or 0)
    ctx["datasets"] = st.gallery.datasets_for(model.dataset)
    ds = values.get("dataset") if values.get("dataset") in ctx["datasets"] else (ctx["datasets"] or [None])[0]
    if not ds:
        return
    try:
        size = st.gallery.size(ds)
        picked = int_arg(values.get("idx"), 0) // GALLERY_PAGE   # a re-shown form keeps its pick in view
        page = min(max(int_arg(values.get("page"), picked), 0), (size - 1) // GALLERY_PAGE)
        lo = page * GALLERY_PAGE
        ctx.update(dataset=ds, size=size, page=page, pages=(size + GALLERY_PAGE - 1) // GALLERY_PAGE,
                   thumbs=[(i, st.gallery.item(ds, i)[1]) for i in range(lo, min(size, lo + GALLERY_PAGE))])
    except CertifyNetError as e:
        ctx["gallery_error"] = str(e)


def certify_page(values, error: str = "", status: int = 200):
    entries = state().catalog.entries()
    classifiers = [e for e in entries if e.kind == "classifier"]
    denoisers = [e for e in entries if e.kind == "denoiser"]
    model = next((e for e in classifiers if e.path == values.get("model")), classifiers[0] if classifiers else None)
    ctx = dict(classifiers=classifiers, denoisers=denoisers, model=model, error=error, values=values,
               defaults=forms.cli_defaults(), datasets=[], dataset=None, thumbs=[], pages=0, page=0)
    if model is not None:
        _gallery(ctx, model, values)
    return render_template("certify.html", **ctx), status


@bp.get("/certify")
def form():
    return certify_page(request.args)


@bp.post("/certify")
def submit():
    try:
        job = submit_job(request.form, request.files)
    except CertifyNetError as e:
        return certify_page(request.form, error=e.render(cli=True), status=400)
    return redirect(url_for("jobs.page", job_id=job["id"]), 303)


def _models(form):
    """(classifier, denoiser or None) named by the form, from the catalog."""
    st = state()
    model = st.catalog.find(forms.field_text(form, "model"), "classifier")
    if model is None:
        raise CertifyNetError(f"unknown model '{forms.field_text(form, 'model')[:MAX_NAME]}'; pick one listed on the "
                              f"models page")
    denoiser = None
    if forms.field_text(form, "denoiser"):
        denoiser = st.catalog.find(forms.field_text(form, "denoiser"), "denoiser")
        if denoiser is None:
            raise CertifyNetError(f"unknown denoiser '{forms.field_text(form, 'denoiser')[:MAX_NAME]}'")
    return model, denoiser


def _title(settings, choice, model) -> str:
    where = {"gallery": f"{choice.dataset} test #{choice.idx}", "upload": f"uploaded {choice.filename}",
             "batch": f"first {choice.count} {choice.dataset} test images", "draw": "a drawing"}[choice.kind]
    return (f"{forms.METHODS[settings.method]} σ={settings.sigma:g} N={settings.N} on {where} "
            f"({os.path.basename(model.path)})")


def submit_job(form, files) -> dict:
    """Check the certify form and queue its job (CertifyNetError, one line, for any bad value)."""
    st = state()
    model, denoiser = _models(form)
    settings = forms.parse_settings(form, dataset_info(model.dataset).dim)
    choice = forms.parse_input(form, files, model.dataset, st.gallery)
    if settings.select == "label" and choice.label < 0:
        raise CertifyNetError("{select} label needs the image's true label", "select")
    per_input, exact = settings.passes_per_input()
    title = _title(settings, choice, model)

    def spec_for(job_dir):
        argv = forms.cli_argv(model.path, denoiser.path if denoiser else None, settings, choice, job_dir, st.data_dir)
        files_ = {"counts": argv["sample"][argv["sample"].index("--out") + 1], "log": argv["certify"][-1]}
        if choice.suffix:
            files_["input"] = os.path.join(job_dir, "input" + choice.suffix)
        return {"title": title, "model": model.path, "model_sha256": model.sha256, "arch": model.arch,
                "dataset": model.dataset, "denoiser": denoiser.path if denoiser else None,
                "method": settings.method, "settings": dataclasses.asdict(settings),
                "input": {"kind": choice.kind, "dataset": choice.dataset, "idx": choice.idx, "count": choice.count,
                          "label": choice.label, "note": choice.note, "filename": choice.filename},
                "argv": argv, "files": files_, "inputs": choice.count, "passes_per_input": per_input,
                "stages": forms.job_stages(model.path, denoiser.path if denoiser else None, settings, choice, job_dir,
                                           st.data_dir),
                "passes_exact": exact}

    def write_input(folder):
        if choice.array is not None:
            save_input(choice.array, os.path.join(folder, "input" + choice.suffix))

    return st.jobs.create(spec_for, write_input)

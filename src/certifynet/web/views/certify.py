"""The certify form (model, one or several methods with their settings, input: a gallery image, an upload, a
drawing or a batch), its submission (a job, or a group of methods on shared counts), and the quick answer:
a small job on the model's warm worker whose result comes back to the form as JSON within the request.
Every bad value comes back as one line on the form."""
from __future__ import annotations

import os
import time
from urllib.parse import urlencode

from flask import Blueprint, jsonify, redirect, render_template, request, url_for

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.web import forms, plan
from certifynet.web.images import save_input
from certifynet.web.views.common import int_arg, state
from certifynet.web.views.models import MAX_NAME

GALLERY_PAGE = 40        # thumbnails per gallery page
QUICK_PASSES = 20_000    # forward passes per input up to which a single-input job runs on the warm worker
QUICK_SEQUENTIAL_N = 200_000   # a sequential-only job is quick up to this cap (it stops when it knows)
QUICK_WAIT_S = 60.0      # how long a quick request waits for its answer (then it points to the job)
QUICK_LOOK_N = 1000      # the form's low-N look

bp = Blueprint("certify", __name__)


def _query(values, **changes) -> str:
    """The form's values as a query string (repeated fields kept), with `changes`."""
    items = [(k, v) for k, vs in _multi(values).items() for v in vs if k not in changes and k != "drawing"]
    items += [(k, v) for k, v in changes.items() if v is not None]
    return urlencode(items)


def _multi(values) -> dict:
    if hasattr(values, "to_dict"):
        return values.to_dict(flat=False)
    return {k: (v if isinstance(v, list) else [v]) for k, v in dict(values).items()}


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
        pages = (size + GALLERY_PAGE - 1) // GALLERY_PAGE
        ctx.update(dataset=ds, size=size, page=page, pages=pages,
                   thumbs=[(i, st.gallery.item(ds, i)[1]) for i in range(lo, min(size, lo + GALLERY_PAGE))],
                   page_url={p: "?" + _query(values, model=model.path, dataset=ds, page=str(p))
                             for p in (page - 1, page + 1) if 0 <= p < pages})
    except CertifyNetError as e:
        ctx["gallery_error"] = str(e)


def certify_page(values, error: str = "", status: int = 200):
    entries = state().catalog.entries()
    classifiers = [e for e in entries if e.kind == "classifier"]
    denoisers = [e for e in entries if e.kind == "denoiser"]
    model = next((e for e in classifiers if e.path == values.get("model")), classifiers[0] if classifiers else None)
    chosen = forms.field_list(values, "methods") or [values.get("method") or "np"]
    ctx = dict(classifiers=classifiers, denoisers=denoisers, model=model, error=error, values=values,
               defaults=forms.cli_defaults(), datasets=[], dataset=None, thumbs=[], pages=0, page=0, page_url={},
               chosen=chosen, quick_n=QUICK_LOOK_N)
    if model is not None:
        _gallery(ctx, model, values)
        _warm(model)
    return render_template("certify.html", **ctx), status


def _warm(model) -> None:
    """Start the model's warm worker (a quick look and a sequential answer on a blank image, in a temporary
    folder), so that the first quick answer is quick too."""
    info = dataset_info(model.dataset)
    sigma = model.sigma if isinstance(model.sigma, (int, float)) and model.sigma > 0 else 0.25

    def stages_for(folder):
        src = plan.Source(model.path, model.dataset, arch=model.arch if model.arch_given else None,
                          options={"image": os.path.join(folder, "blank.npy")})
        settings = plan.GroupSettings(["np", "sequential"], {"sigma": sigma, "N": QUICK_LOOK_N,
                                                             "radii": forms.cli_defaults()["radii"][1:],
                                                             **{k: forms.cli_defaults()[k]
                                                                for k in ("N0", "alpha", "batch", "seed")}})
        stages, _ = plan.build_stages(src, settings, folder, batch=False)
        stages[0]["shape"] = list(info.shape)
        return stages
    state().jobs.warm(model.path, stages_for)


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


@bp.post("/certify/quick")
def quick():
    """A quick answer: the job runs on the model's warm worker; the answer (or where to follow the job) comes back
    as JSON, with the seconds from the request to the answer."""
    from certifynet.web.results import api_job
    t0 = time.perf_counter()
    try:
        job = submit_job(request.form, request.files, quick=True)
    except CertifyNetError as e:
        return jsonify(error=e.render(cli=True)), 400
    job = state().jobs.wait(job["id"], QUICK_WAIT_S)
    out = api_job(state(), job, rows=True, explain=True)
    out.update(url=url_for("jobs.page", job_id=job["id"]), seconds=round(time.perf_counter() - t0, 4))
    return jsonify(out)


def chosen_models(form):
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
    names = " + ".join(plan.METHODS[m] for m in settings.methods)
    radii = f" r={','.join(f'{r:g}' for r in settings.values['radii'])}" if "sequential" in settings.methods else ""
    return f"{names}{radii} σ={settings.sigma:g} N={settings.N:,} on {where} ({os.path.basename(model.path)})"


def is_quick(settings, choice) -> bool:
    """A single input and a small budget (or a sequential question alone): the warm worker's kind of job."""
    if choice.kind == "batch":
        return False
    per_input, _ = settings.passes_per_input()
    return per_input <= QUICK_PASSES or (settings.methods == ["sequential"] and settings.N <= QUICK_SEQUENTIAL_N)


def submit_job(form, files, quick: bool = False) -> dict:
    """Check the certify form and start or queue its job (CertifyNetError, one line, for any bad value)."""
    st = state()
    model, denoiser = chosen_models(form)
    settings = forms.parse_settings(form, dataset_info(model.dataset).dim)
    choice = forms.parse_input(form, files, model.dataset, st.gallery)
    if settings.select == "label" and choice.label < 0:
        raise CertifyNetError("{select} label needs the image's true label", "select")
    lane = "quick" if is_quick(settings, choice) else "batch"
    if quick and lane != "quick":
        raise CertifyNetError(f"a quick answer takes one image and at most {QUICK_PASSES:,} forward passes (or a "
                              f"sequential question alone); press Certify for this one")
    per_input, exact = settings.passes_per_input()
    title = _title(settings, choice, model)

    def spec_for(job_dir):
        source = forms.input_source(model, denoiser, choice, job_dir, st.data_dir)
        stages, runs = plan.build_stages(source, settings, job_dir, choice.kind == "batch")
        files_ = {"input": os.path.join(job_dir, "input" + choice.suffix)} if choice.suffix else {}
        return {"title": title, "model": model.path, "model_sha256": model.sha256, "arch": model.arch,
                "dataset": model.dataset, "denoiser": denoiser.path if denoiser else None,
                "methods": settings.methods, "settings": settings.values,
                "input": {"kind": choice.kind, "dataset": choice.dataset, "idx": choice.idx, "count": choice.count,
                          "label": choice.label, "note": choice.note, "filename": choice.filename},
                "stages": stages, "runs": runs, "files": files_, "inputs": choice.count,
                "passes_per_input": per_input, "passes_exact": exact, "lane": lane}

    def write_input(folder, write):
        if choice.array is not None:
            name = "input" + choice.suffix
            write(name, lambda f: save_input(choice.array, f, choice.suffix))

    return st.jobs.create(spec_for, write_input)

"""A small JSON API over the same jobs (docs/web.md has curl examples):

- `GET /api/jobs`: every job, newest first, with its state and progress;
- `POST /api/jobs`: the certify form's fields (form-encoded, multipart for an image file, or a JSON object;
  `methods` a list or several fields), the same checks: 201 {id, url, state, ...}, or 400 {"error": one line};
- `GET /api/jobs/<id>`: state, progress and every run's rows (a running or stopped job's so far);
- `POST /api/estimate`: the forward passes the form's settings cost, before submitting (`?pilot=1`: and the
  time, from a pilot on the model, as sample.py / certify.py --estimate project it).
"""
from __future__ import annotations

import os
import tempfile

from flask import Blueprint, jsonify, request, url_for

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.web import forms, plan
from certifynet.web.images import save_input
from certifynet.web.results import api_job, is_sampling
from certifynet.web.views.certify import chosen_models, submit_job
from certifynet.web.views.common import state
from certifynet.web.views.jobs import the_job

bp = Blueprint("api", __name__, url_prefix="/api")


def _fields():
    """The request's fields: a JSON object, or the form."""
    body = request.get_json(silent=True) if request.is_json else None
    return body if isinstance(body, dict) else request.form


@bp.get("/jobs")
def jobs():
    st = state()
    return jsonify(jobs=[api_job(st, j, rows=False) for j in st.jobs.list()])


@bp.post("/jobs")
def create():
    try:
        job = submit_job(_fields(), request.files)
    except CertifyNetError as e:
        return jsonify(error=e.render(cli=True)), 400
    out = api_job(state(), job, rows=False)
    out["url"] = url_for("jobs.page", job_id=job["id"], _external=True)
    return jsonify(out), 201, {"Location": url_for("api.job", job_id=job["id"])}


@bp.get("/jobs/<job_id>")
def job(job_id):
    return jsonify(api_job(state(), the_job(job_id), rows=True,
                           explain=request.args.get("explain", "") not in ("", "0", "no")))


@bp.post("/estimate")
def estimate():
    """Forward passes per input of the form's methods (exact for fixed N; at most for ISS and sequential) and in
    all, from the same plan the job would run. With `?pilot=1`, also what sample.py / certify.py --estimate
    say for each of its sampling stages, from a pilot on the model's warm worker (`pilot`: passes per second,
    expected passes per input, projected seconds)."""
    fields = _fields()
    try:
        model, denoiser = chosen_models(fields)
        settings = forms.parse_settings(fields, dataset_info(model.dataset).dim)
    except CertifyNetError as e:
        return jsonify(error=e.render(cli=True)), 400
    per_input, exact = settings.passes_per_input()
    inputs = 1
    if forms.field_text(fields, "input_kind") == "batch":
        try:
            inputs = max(1, int(forms.field_text(fields, "count") or 100))
        except ValueError:
            inputs = 1
    out = {"passes_per_input": per_input, "exact": exact, "inputs": inputs, "total": per_input * inputs,
           "methods": settings.methods}
    if request.args.get("pilot") not in (None, "", "0"):
        try:
            out["pilot"] = pilot_estimate(model, denoiser, settings, fields)
        except CertifyNetError as e:
            return jsonify({**out, "error": e.render(cli=True)}), 400
    return jsonify(out)


def pilot_estimate(model, denoiser, settings, fields) -> dict:
    """The job's sampling stages estimated on the model's warm worker (`warm.estimate`), combined: passes add up;
    the time is one startup (the job runs in one process) plus every stage's time per input."""
    st = state()
    choice = forms.parse_input(fields, request.files, model.dataset, st.gallery)
    with tempfile.TemporaryDirectory(prefix="certifynet-estimate-") as tmp:
        if choice.array is not None:
            with open(os.path.join(tmp, "input" + choice.suffix), "wb") as f:
                save_input(choice.array, f, choice.suffix)
        source = forms.input_source(model, denoiser, choice, tmp, st.data_dir)
        stages, _ = plan.build_stages(source, settings, tmp, batch=False)
        answer = st.jobs.pool.ask(model.path, {"estimate": [s for s in stages if is_sampling(s)]})
    if answer.get("rc") != 0:
        raise CertifyNetError(answer.get("error") or "no estimate")
    parts = answer["estimates"]
    return {"passes_per_second": parts[0]["passes_per_second"], "device": parts[0]["device"],
            "passes_per_input": sum(p["passes_per_input"] for p in parts), "exact": all(p["exact"] for p in parts),
            "inputs": parts[0]["inputs"], "total_passes": sum(p["total_passes"] for p in parts),
            "seconds": max(p["startup_seconds"] for p in parts) + sum(p["inputs"] * p["seconds_per_input"]
                                                                      for p in parts),
            "methods": [p["method"] for p in parts], "notes": [n for p in parts for n in p.get("notes") or []]}

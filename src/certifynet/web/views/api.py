"""A small JSON API over the same jobs (docs/web.md has curl examples):

- `GET /api/jobs`: every job, newest first, with its state and progress;
- `POST /api/jobs`: the certify form's fields (form-encoded, multipart for an image file, or a JSON object;
  `methods` a list or several fields), the same checks: 201 {id, url, state, ...}, or 400 {"error": one line};
- `GET /api/jobs/<id>`: state, progress and every run's rows (a running or stopped job's so far);
- `POST /api/estimate`: the forward passes the form's settings cost, before submitting.
"""
from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.web import forms
from certifynet.web.results import api_job
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
    all, from the same plan the job would run."""
    fields = _fields()
    try:
        model, _ = chosen_models(fields)
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
    return jsonify(passes_per_input=per_input, exact=exact, inputs=inputs, total=per_input * inputs,
                   methods=settings.methods)

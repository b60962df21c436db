"""Jobs: the list, a job's page (progress, the CLI commands, results), its live status, cancel and resume,
and its files (the CLI outputs listed in `DOWNLOADS`, nothing else)."""
from __future__ import annotations

import os

from flask import Blueprint, abort, jsonify, redirect, render_template, request, send_from_directory, url_for

from certifynet.errors import CertifyNetError
from certifynet.web import forms
from certifynet.web.jobs import FINAL
from certifynet.web.views.common import fmt_num, state

NOISY_COPIES = 4  # noisy copies x + δ_j shown on a job's page
DOWNLOADS = ("certify.tsv", "certify.tsv.meta.json", "counts.csv", "counts.csv.meta.json", "input.png", "input.npy",
             "analysis/certified_accuracy.png", "analysis/certified_accuracy.pdf", "analysis/table.csv",
             "analysis/table.md", "analysis/table.tex", "analysis/report.md")

bp = Blueprint("jobs", __name__)


def the_job(job_id: str) -> dict:
    """The job `job_id`, or a 404."""
    job = state().jobs.get(job_id)
    if job is None:
        abort(404)
    return job


@bp.get("/jobs")
def index():
    st = state()
    return render_template("jobs.html", jobs=[(j, st.jobs.progress(j)) for j in st.jobs.list()])


@bp.get("/jobs/<job_id>")
def page(job_id):
    st = state()
    job = the_job(job_id)
    return render_template("job.html", job=job, progress=st.jobs.progress(job), final=job["state"] in FINAL,
                           command=forms.command_lines(job["argv"]), result=_result(job),
                           noisy=range(NOISY_COPIES), message=request.args.get("message", "")[:300])


@bp.get("/jobs/<job_id>/status")
def status(job_id):
    return jsonify(state().jobs.progress(the_job(job_id)))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id):
    state().jobs.cancel(the_job(job_id)["id"])
    return redirect(url_for("jobs.page", job_id=job_id), 303)


@bp.post("/jobs/<job_id>/resume")
def resume(job_id):
    try:
        state().jobs.resume(the_job(job_id)["id"])
    except CertifyNetError as e:
        return redirect(url_for("jobs.page", job_id=job_id, message=e.render(cli=True)), 303)
    return redirect(url_for("jobs.page", job_id=job_id), 303)


@bp.get("/jobs/<job_id>/files/<path:name>")
def file(job_id, name):
    job = the_job(job_id)
    if name not in DOWNLOADS:
        abort(404)
    return send_from_directory(state().jobs.job_dir(job["id"]), name, as_attachment=not name.endswith(".png"))


def _table(path: str) -> dict:
    """analyze.py's table of a batch job, with its columns shown to the digits analyze.py's tables use."""
    import pandas as pd

    from certifynet.analysis import METRICS
    df = pd.read_csv(path)
    shown = ("m", "ACR", "abstain", "samples/input", "sec/input")
    keep = [c for c in df.columns if c.startswith("r=") or c in shown]
    digits = [3 if c.startswith("r=") else METRICS[c][0] for c in keep]
    return {"columns": keep, "values": [[fmt_num(v, n) for v, n in zip(row, digits)] for row in df[keep].to_numpy()]}


def _result(job: dict) -> dict | None:
    """Rows of the certify log (those written so far), and for a batch the analyze.py table."""
    from certifynet.records import read_rows
    st = state()
    log = os.path.join(st.root, job["files"]["log"])
    if not os.path.isfile(log):
        return None
    try:
        _, rows = read_rows(log)
    except CertifyNetError:
        return None
    out = {"rows": rows, "table": None, "plot": False}
    folder = st.jobs.job_dir(job["id"])
    table = os.path.join(folder, "analysis", "table.csv")
    if os.path.isfile(table):
        out["table"] = _table(table)
        out["plot"] = os.path.isfile(os.path.join(folder, "analysis", "certified_accuracy.png"))
    out["downloads"] = [n for n in DOWNLOADS if os.path.isfile(os.path.join(folder, n))]
    return out

"""Jobs: the list (with each job's radius or accuracy, and checkboxes to compare any of them), a job's page
(its result above its commands: one image's certificates side by side with what each guarantees, or a batch's
overlaid curves and one table; live progress; partial rows of a stopped job), its live status, cancel, resume
and delete, and its files: every one, a zip of all, reproduce.sh, and the rows so far as certify logs."""
from __future__ import annotations

import os

from flask import (
    Blueprint,
    Response,
    abort,
    jsonify,
    redirect,
    render_template,
    send_file,
    url_for,
)

from certifynet.errors import CertifyNetError
from certifynet.web import plan, results
from certifynet.web.jobs import FINAL, read_json
from certifynet.web.views.common import state

NOISY_COPIES = 4  # noisy copies x + δ_j shown on a job's page

bp = Blueprint("jobs", __name__)


def the_job(job_id: str) -> dict:
    """The job `job_id`, or a 404."""
    job = state().jobs.get(job_id)
    if job is None:
        abort(404)
    return job


def is_batch(job: dict) -> bool:
    return (job.get("input") or {}).get("kind") == "batch"


@bp.get("/jobs")
def index():
    st = state()
    rows = []
    for job in st.jobs.list():
        summaries = [(r["title"], results.run_summary(r, is_batch(job))) for r in results.job_results(st.root, job)]
        rows.append((job, st.jobs.progress(job), [s for s in summaries if s[1]]))
    return render_template("jobs.html", jobs=rows)


def job_page(job: dict, error: str = "", status: int = 200):
    st = state()
    res = results.job_results(st.root, job)
    alpha = results.job_alpha(job)
    ctx = dict(job=job, progress=st.jobs.progress(job), final=job["state"] in FINAL, error=error,
               command=plan.command_lines(job["stages"], st.root), noisy=range(NOISY_COPIES), results=res,
               single=[], table=None, plot=False, selection=[],
               files=results.job_files(st.jobs.job_dir(job["id"])), partial=any(r["partial"] for r in res),
               attack=results.attack_result(st.root, job), batch=is_batch(job))
    if is_batch(job):
        folder = st.jobs.job_dir(job["id"])
        done = job["state"] == "done" and os.path.isfile(os.path.join(folder, "analysis", "certified_accuracy.png"))
        logs = results.as_logs(res)
        ctx.update(table=results.summary_table(logs), plot="analysis" if done else ("partial" if logs else False))
    else:
        ctx["single"] = results.explained(res, alpha)
        ctx["selection"] = _selection(job, res)
    return render_template("job.html", **ctx), status


def _selection(job: dict, res: list) -> list:
    """[(the runs' titles, class counts of the selection draws)] for one input, from the worker's selection.json."""
    saved = read_json(os.path.join(state().jobs.job_dir(job["id"]), "selection.json"))
    groups = {}   # the same draws (STREAM_SELECT, same N0) are shown once
    for r in res:
        counts = next(iter((saved.get(os.path.basename(r.get("counts") or r["log"])) or {}).values()), None)
        if counts:
            groups.setdefault(tuple(counts), []).append(r["title"])
    return [(", ".join(titles), list(counts)) for counts, titles in groups.items()]


@bp.get("/jobs/<job_id>")
def page(job_id):
    return job_page(the_job(job_id))


@bp.get("/jobs/<job_id>/status")
def status(job_id):
    return jsonify(state().jobs.progress(the_job(job_id)))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id):
    state().jobs.cancel(the_job(job_id)["id"])
    return redirect(url_for("jobs.page", job_id=job_id), 303)


@bp.post("/jobs/<job_id>/resume")
def resume(job_id):
    job = the_job(job_id)
    try:
        state().jobs.resume(job["id"])
    except CertifyNetError as e:   # shown as the error it is, on the job's page
        return job_page(job, error=e.render(cli=True), status=409)
    return redirect(url_for("jobs.page", job_id=job_id), 303)


@bp.post("/jobs/<job_id>/delete")
def delete(job_id):
    job = the_job(job_id)
    try:
        state().jobs.delete(job["id"])
    except CertifyNetError as e:
        return job_page(job, error=e.render(cli=True), status=409)
    return redirect(url_for("jobs.index"), 303)


@bp.get("/jobs/<job_id>/files/<path:name>")
def file(job_id, name):
    """Any file of the job's folder (the CLI's outputs, worker.log, job.json, analysis/*), nothing outside it."""
    job = the_job(job_id)
    path = results.safe_file(state().jobs.job_dir(job["id"]), name)
    if path is None:
        abort(404)
    inline = name.endswith((".png", ".md", ".log", ".json", ".tsv", ".csv", ".sh", ".txt"))
    return send_file(path, as_attachment=not inline, mimetype=_mimetype(name), max_age=0)


def _mimetype(name: str) -> str | None:
    if name.endswith(".png"):
        return "image/png"
    if name.endswith((".md", ".log", ".tsv", ".csv", ".sh", ".txt")):
        return "text/plain; charset=utf-8"
    return None


@bp.get("/jobs/<job_id>/reproduce.sh")
def reproduce(job_id):
    job = the_job(job_id)
    text = plan.reproduce_script(job["stages"], state().root, job["id"])
    return Response(text, mimetype="text/plain; charset=utf-8",
                    headers={"Content-Disposition": "attachment; filename=reproduce.sh"})


@bp.get("/jobs/<job_id>/files.zip")
def zipped(job_id):
    job = the_job(job_id)
    data = results.zip_bytes(state().jobs.job_dir(job["id"]), job["id"],
                             {"reproduce.sh": plan.reproduce_script(job["stages"], state().root, job["id"])})
    return Response(data, mimetype="application/zip",
                    headers={"Content-Disposition": f"attachment; filename=certifynet-{job['id']}.zip"})


@bp.get("/jobs/<job_id>/rows/<method>.tsv")
def rows(job_id, method):
    """A run's rows so far as a certify log (of a running or stopped job: certified from the partial counts)."""
    job = the_job(job_id)
    res = next((r for r in results.job_results(state().root, job) if r["method"] == method), None)
    if res is None or not res["rows"]:
        abort(404)
    return Response(results.partial_log(res), mimetype="text/plain; charset=utf-8",
                    headers={"Content-Disposition": f"attachment; filename={job['id']}-{method}.tsv"})


@bp.get("/jobs/<job_id>/curves.png")
def curves(job_id):
    """The overlaid certified-accuracy curves of a batch's rows so far (the finished job's are analysis/)."""
    job = the_job(job_id)
    logs = results.as_logs(results.job_results(state().root, job))
    if not is_batch(job) or not logs:
        abort(404)
    return Response(results.curves_png(logs), mimetype="image/png", headers={"Cache-Control": "no-store"})

"""Compare any jobs ticked on the jobs page: for single images, every run's certificate side by side; for
batches, the certified-accuracy curves overlaid (`analysis.plot_certified_accuracy`) and one table
(`analysis.summarize`). A group job's own page shows the same for its methods."""
from __future__ import annotations

from flask import Blueprint, Response, abort, render_template, request

from certifynet.web import results
from certifynet.web.views.common import error_page, state
from certifynet.web.views.jobs import is_batch

MAX_JOBS = 12
bp = Blueprint("compare", __name__)


def _chosen() -> list:
    ids = list(dict.fromkeys(request.args.getlist("jobs")))[:MAX_JOBS]
    return [j for j in (state().jobs.get(i) for i in ids) if j is not None]


def labelled_results(jobs: list) -> list:
    """Every run of the jobs, labelled by method (and by job when there are several jobs)."""
    out = []
    for job in jobs:
        for res in results.job_results(state().root, job):
            label = res["title"] if len(jobs) == 1 else f"{res['title']} · {job['id']}"
            out.append({**res, "title": label, "job": job})
    return out


def single_items(res: list) -> list:
    """The runs of single-image jobs with their explanation and cap flag (the template's `single`)."""
    return [item for r in res for item in results.explained([r], results.job_alpha(r["job"]))]


@bp.get("/compare")
def page():
    jobs = _chosen()
    if not jobs:
        return error_page("tick the jobs to compare on the jobs page, then press Compare", 400)
    batches = {is_batch(j) for j in jobs}
    if len(batches) > 1:
        return error_page("compare single images with single images, batches with batches", 400)
    res = labelled_results(jobs)
    ctx = dict(jobs=jobs, batch=batches == {True}, single=[], table=None, same_input=True)
    if ctx["batch"]:
        ctx["table"] = results.summary_table(results.as_logs(res))
    else:
        ctx["single"] = single_items(res)
        ctx["same_input"] = len({repr(sorted((j.get("input") or {}).items())) for j in jobs}) == 1
    return render_template("compare.html", **ctx)


@bp.get("/compare/curves.png")
def curves():
    jobs = [j for j in _chosen() if is_batch(j)]
    logs = results.as_logs(labelled_results(jobs))
    if not logs:
        abort(404)
    return Response(results.curves_png(logs), mimetype="image/png", headers={"Cache-Control": "no-store"})

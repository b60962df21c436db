"""The attack, from a finished job's page: audit its certificates (SmoothAdv's L2 PGD within each certified
radius, then PREDICT at the attacked point: a violation is another class), or, for a batch, the empirical
robust accuracy at a grid of ε plotted over its certified accuracy. Each is a job of its own whose stages are
attack.py's (`certifynet.attack.run_audit` / `run_attack_curve`) and, for the curve, analyze.py --empirical."""
from __future__ import annotations

import os

from flask import Blueprint, redirect, request, url_for

from certifynet.errors import CertifyNetError
from certifynet.sampling.config import SamplingConfig
from certifynet.web import forms
from certifynet.web.views.common import state
from certifynet.web.views.jobs import is_batch, job_page, the_job

DEFAULT_EPS = (0.0, 0.25, 0.5, 0.75, 1.0)
PREDICT_N = 1000        # PREDICT's draws at the attacked point (attack.py's default: 10,000)
MAX_ATTACKED = 200      # inputs of a batch attacked from the web

bp = Blueprint("attack", __name__)


def _source_options(job: dict) -> dict:
    """The parent job's model and inputs (its first sampling stage's options)."""
    sampling = next(s for s in job["stages"] if s["stage"] in ("sample", "certify") and "model" in s["options"])
    keep = ("model", "arch", "dataset", "denoiser", "data_dir", "start", "max", "image", "image_label", "sigma", "k",
            "batch", "seed")
    return {k: v for k, v in sampling["options"].items() if k in keep}


def attack_spec(job: dict, form, job_dir: str) -> dict:
    """The attack job's spec: stages, title and cost, from the parent job and the form (m, steps, N, ε)."""
    mode = forms.field_text(form, "mode") or "audit"
    if mode not in ("audit", "curve") or (mode == "curve" and not is_batch(job)):
        raise CertifyNetError("choose an audit of the certificates, or (for a batch) the empirical robust accuracy")
    m = forms.parse_number(form, "m", int, 16)
    steps = forms.parse_number(form, "steps", int, 10)
    n = forms.parse_number(form, "N", int, PREDICT_N)
    opts = {"m": m, "steps": steps, "restarts": 1}
    base = {**_source_options(job), "N": n, "alpha": float(job["settings"].get("alpha") or 0.001)}
    if is_batch(job):
        base["max"] = min(int(base.get("max") or job.get("inputs") or 1), MAX_ATTACKED)
    runs = {r["method"]: r for r in job["runs"]}
    if mode == "audit":
        run = runs.get(forms.field_text(form, "method")) or job["runs"][0]
        opts.update(log=run["log"], eps_scale=1.0, level=0.01)
        out = os.path.join(job_dir, f"{run['method']}.audit.tsv")
        title = f"audit of {run['title']} certificates of job {job['id']}"
    else:
        eps = forms.field_text(form, "eps") or " ".join(f"{e:g}" for e in DEFAULT_EPS)
        try:
            opts["eps"] = sorted({float(e) for e in eps.replace(",", " ").split()})
        except ValueError:
            raise CertifyNetError(f"ε must be numbers separated by spaces, got '{eps[:40]}'") from None
        out = os.path.join(job_dir, "curve.tsv")
        title = f"empirical robust accuracy at ε = {', '.join(f'{e:g}' for e in opts['eps'])} of job {job['id']}"
    config = SamplingConfig.from_explicit({**base, "out": out})
    config.validate("attack")
    for name in ("m", "steps"):
        if opts[name] < 1:
            raise CertifyNetError(f"{{{name}}} must be >= 1, got {opts[name]}", name)
    stages = [{"stage": "attack", "options": config.explicit(), "attack": {**opts, "mode": mode},
               "extra": _attack_argv(opts)}]
    if mode == "curve":
        logs = [r["log"] for r in job["runs"]]
        stages.append({"stage": "analyze", "logs": logs, "labels": [r["title"] for r in job["runs"]],
                       "out": os.path.join(job_dir, "analysis"), "empirical": out, "extra": ["--empirical", out]})
    inputs = 1 if not is_batch(job) else base["max"]
    return {"title": title, "kind": mode, "parent": job["id"], "model": job["model"], "dataset": job["dataset"],
            "methods": [], "settings": {**job["settings"], "alpha": base["alpha"]}, "input": job["input"],
            "stages": stages, "runs": [], "files": {}, "inputs": inputs, "attack_out": out,
            "passes_per_input": n * max(1, len(opts.get("eps") or [])), "passes_exact": False, "lane": "batch"}


def _attack_argv(opts: dict) -> list:
    """attack.py's own options (the stage's `extra`: after the sampling options)."""
    argv = ["--m", str(opts["m"]), "--steps", str(opts["steps"])]
    if opts.get("log"):
        return argv + ["--log", opts["log"]]
    return argv + ["--eps", *(f"{e:g}" for e in opts["eps"])]


@bp.post("/jobs/<job_id>/attack")
def create(job_id):
    job = the_job(job_id)
    if job["state"] != "done" or not job.get("runs"):
        return job_page(job, error="attack a finished certification job", status=409)
    try:
        new = state().jobs.create(lambda job_dir: attack_spec(job, request.form, job_dir))
    except CertifyNetError as e:
        return job_page(job, error=e.render(cli=True), status=400)
    return redirect(url_for("jobs.page", job_id=new["id"]), 303)

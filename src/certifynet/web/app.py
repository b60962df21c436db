"""The Flask app: models page (list, upload), certify form, jobs with live progress, results and downloads.

Requests never sample: a job is handed to `JobManager`, whose worker process runs the CLI stages. Every bad
form value comes back as a one-line message on the form (HTTP 400); nothing shows a traceback.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
import threading
from urllib.parse import urlsplit

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, send_from_directory, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.utils import secure_filename

from certifynet.data import dataset_info, image_tensor, read_image_array
from certifynet.errors import CertifyNetError
from certifynet.web import forms
from certifynet.web.catalog import Catalog, is_checkpoint_name
from certifynet.web.gallery import Gallery
from certifynet.web.images import png_bytes, save_input
from certifynet.web.jobs import FINAL, JobManager

GALLERY_PAGE = 40
NOISY_COPIES = 4
MAX_NAME = 100
DOWNLOADS = ("certify.tsv", "certify.tsv.meta.json", "counts.csv", "counts.csv.meta.json", "input.png", "input.npy",
             "analysis/certified_accuracy.png", "analysis/certified_accuracy.pdf", "analysis/table.csv",
             "analysis/table.md", "analysis/table.tex", "analysis/report.md")


@dataclasses.dataclass
class WebState:
    root: str
    data_dir: str
    upload_dir: str
    max_upload_mb: float
    catalog: Catalog
    gallery: Gallery
    jobs: JobManager


def create_app(root: str = ".", model_dirs=("models", "results"), data_dir: str = "data",
               results_dir: str = "results", upload_dir: str | None = None, max_upload_mb: float = 200,
               queue_size: int = 8, workers: int = 1, threads: int | None = None, start_jobs: bool = True) -> Flask:
    """The app. Paths are relative to `root`, where jobs run the CLI (so the commands shown work from there):
    checkpoints are listed from `model_dirs` and the upload folder (default <results>/web/uploads), jobs
    live in <results>/web/<id>/, gallery images come from `data_dir`."""
    if max_upload_mb <= 0:
        raise CertifyNetError(f"--max-upload-mb must be > 0, got {max_upload_mb:g}")
    root = os.path.abspath(root)
    web_dir = os.path.join(results_dir, "web")
    upload_dir = upload_dir or os.path.join(web_dir, "uploads")
    threads = threads or max(1, (os.cpu_count() or 2) // 2)
    state = WebState(root=root, data_dir=data_dir, upload_dir=os.path.join(root, upload_dir),
                     max_upload_mb=max_upload_mb, catalog=Catalog(root, model_dirs, upload_dir),
                     gallery=Gallery(os.path.join(root, data_dir)),
                     jobs=JobManager(root, web_dir, queue_size, workers, threads, start=start_jobs))
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=int(max_upload_mb * 2 ** 20), MAX_FORM_MEMORY_SIZE=8 * 2 ** 20,
                      DEBUG=False, TESTING=False, PROPAGATE_EXCEPTIONS=False)
    app.extensions["certifynet"] = state
    _routes(app, state)
    return app


def _fmt_num(v, digits=4):
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return "–"


def _routes(app: Flask, st: WebState) -> None:  # noqa: C901 - one place for the views
    app.jinja_env.filters["num"] = _fmt_num
    app.jinja_env.globals.update(methods=forms.METHODS)

    @app.before_request
    def same_origin_posts_only():
        """Refuse form posts from other sites (a page elsewhere cannot start jobs or upload through the browser)."""
        origin = request.headers.get("Origin")
        if request.method == "POST" and origin and urlsplit(origin).netloc != request.host:
            return _error_page(f"refused a form posted from another site ({origin[:80]})", 403)

    # ---------------------------------------------------------------- models
    def models_page(error: str = "", message: str = "", status: int = 200):
        entries = st.catalog.entries()
        return render_template("models.html", entries=entries, error=error, message=message,
                               max_upload_mb=st.max_upload_mb,
                               upload_dir=os.path.relpath(st.upload_dir, st.root)), status

    @app.get("/")
    def index():
        return redirect(url_for("models"))

    @app.get("/models")
    def models():
        uploaded = request.args.get("uploaded", "")[:300]
        return models_page(message=f"uploaded {uploaded}" if uploaded else "")

    @app.post("/models")
    def upload_model():
        try:
            path = _store_checkpoint(st, request.files.get("checkpoint"))
        except CertifyNetError as e:
            return models_page(error=e.render(cli=True), status=400)
        return redirect(url_for("models", uploaded=path), 303)

    # ---------------------------------------------------------------- certify
    def certify_page(values, error: str = "", status: int = 200):
        entries = st.catalog.entries()
        classifiers = [e for e in entries if e.kind == "classifier"]
        denoisers = [e for e in entries if e.kind == "denoiser"]
        model = next((e for e in classifiers if e.path == values.get("model")), classifiers[0] if classifiers else None)
        ctx = dict(classifiers=classifiers, denoisers=denoisers, model=model, error=error, values=values,
                   defaults=forms.cli_defaults(), datasets=[], dataset=None, thumbs=[], pages=0, page=0)
        if model is not None:
            ctx["defaults"].update(sigma=model.sigma or 0.25, k=model.k or 0)
            ctx["datasets"] = st.gallery.datasets_for(model.dataset)
            ds = values.get("dataset") if values.get("dataset") in ctx["datasets"] else (ctx["datasets"] or [None])[0]
            if ds:
                try:
                    size = st.gallery.size(ds)
                    picked = _int(values.get("idx"), 0) // GALLERY_PAGE   # a re-shown form keeps its pick in view
                    page = min(max(_int(values.get("page"), picked), 0), (size - 1) // GALLERY_PAGE)
                    lo = page * GALLERY_PAGE
                    ctx.update(dataset=ds, size=size, page=page, pages=(size + GALLERY_PAGE - 1) // GALLERY_PAGE,
                               thumbs=[(i, st.gallery.item(ds, i)[1]) for i in range(lo, min(size, lo + GALLERY_PAGE))])
                except CertifyNetError as e:
                    ctx["gallery_error"] = str(e)
        return render_template("certify.html", **ctx), status

    @app.get("/certify")
    def certify():
        return certify_page(request.args)

    @app.post("/certify")
    def submit():
        try:
            job = _submit(st, request.form, request.files)
        except CertifyNetError as e:
            return certify_page(request.form, error=e.render(cli=True), status=400)
        return redirect(url_for("job_page", job_id=job["id"]), 303)

    @app.get("/favicon.ico")
    def favicon():
        return Response(status=204)

    @app.get("/thumb/<dataset>/<int:idx>.png")
    def thumb(dataset, idx):
        return _png(_thumbnail(st, dataset, idx))

    # ---------------------------------------------------------------- jobs
    def the_job(job_id):
        job = st.jobs.get(job_id)
        if job is None:
            abort(404)
        return job

    @app.get("/jobs")
    def jobs():
        return render_template("jobs.html", jobs=[(j, st.jobs.progress(j)) for j in st.jobs.list()])

    @app.get("/jobs/<job_id>")
    def job_page(job_id):
        job = the_job(job_id)
        return render_template("job.html", job=job, progress=st.jobs.progress(job), final=job["state"] in FINAL,
                               command=forms.command_lines(job["argv"]), result=_result(st, job),
                               noisy=range(NOISY_COPIES), message=request.args.get("message", "")[:300])

    @app.get("/jobs/<job_id>/status")
    def job_status(job_id):
        return jsonify(st.jobs.progress(the_job(job_id)))

    @app.post("/jobs/<job_id>/cancel")
    def job_cancel(job_id):
        st.jobs.cancel(the_job(job_id)["id"])
        return redirect(url_for("job_page", job_id=job_id), 303)

    @app.post("/jobs/<job_id>/resume")
    def job_resume(job_id):
        try:
            st.jobs.resume(the_job(job_id)["id"])
        except CertifyNetError as e:
            return redirect(url_for("job_page", job_id=job_id, message=e.render(cli=True)), 303)
        return redirect(url_for("job_page", job_id=job_id), 303)

    @app.get("/jobs/<job_id>/files/<path:name>")
    def job_file(job_id, name):
        job = the_job(job_id)
        if name not in DOWNLOADS:
            abort(404)
        return send_from_directory(st.jobs.job_dir(job["id"]), name, as_attachment=not name.endswith(".png"))

    @app.get("/jobs/<job_id>/input.png")
    def job_input(job_id):
        return _png(png_bytes(_job_input(st, the_job(job_id))))

    @app.get("/jobs/<job_id>/noisy/<int:j>.png")
    def job_noisy(job_id, j):
        job = the_job(job_id)
        if not 0 <= j < NOISY_COPIES:
            abort(404)
        return _png(_noisy_copy(st, job, j))

    # ---------------------------------------------------------------- errors: one line, never a traceback
    @app.errorhandler(RequestEntityTooLarge)
    def too_large(e):
        msg = f"the upload is larger than the limit of {st.max_upload_mb:g} MB"
        if request.path == "/models":
            return models_page(error=msg, status=413)
        if request.path == "/certify":
            return certify_page({}, error=msg, status=413)
        return _error_page(msg, 413)

    @app.errorhandler(CertifyNetError)
    def user_error(e):
        return _error_page(e.render(cli=True), 400)

    @app.errorhandler(Exception)
    def any_error(e):
        if isinstance(e, HTTPException):
            return _error_page(f"{e.code} {e.name}: {e.description}".splitlines()[0], e.code or 500)
        app.logger.exception("unexpected error on %s", request.path)
        return _error_page(f"internal error ({type(e).__name__}); the server's log has the details", 500)


def warm_up(app: Flask) -> threading.Thread:
    """Describe the checkpoints and load the gallery images in the background, so that the first page is quick."""
    st = app.extensions["certifynet"]

    def work():
        try:
            for e in st.catalog.entries():
                for ds in st.gallery.datasets_for(e.dataset)[:1] if e.kind == "classifier" else ():
                    st.gallery.size(ds)
        except Exception:  # best effort: the pages report any problem themselves
            pass
    t = threading.Thread(target=work, name="certifynet-warm-up", daemon=True)
    t.start()
    return t


def _int(text, default: int) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


def _error_page(message: str, status: int):
    return render_template("error.html", error=message, status=status), status


def _png(data: bytes) -> Response:
    return Response(data, mimetype="image/png", headers={"Cache-Control": "max-age=3600"})


# -------------------------------------------------------------------- actions
def _store_checkpoint(st: WebState, upload) -> str:
    """Check an uploaded checkpoint with `load_checkpoint` (weights_only) and keep it in the upload folder as
    <sha256[:12]>-<secure name>. A refused file is deleted: nothing of it is kept anywhere."""
    from certifynet.models import load_checkpoint
    name = secure_filename(upload.filename or "") if upload else ""
    if not name:
        raise CertifyNetError("choose a checkpoint file (.pth or .pth.tar) to upload")
    if not is_checkpoint_name(name):
        raise CertifyNetError(f"'{name[:MAX_NAME]}' is not a .pth or .pth.tar checkpoint")
    name = name[-MAX_NAME:]
    os.makedirs(st.upload_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=st.upload_dir, prefix=".upload-", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(upload.stream, out, 1 << 20)
        if os.path.getsize(tmp) == 0:
            raise CertifyNetError(f"'{name}' is empty")
        try:
            ck = load_checkpoint(tmp)
        except CertifyNetError as e:
            raise CertifyNetError(str(e).replace(tmp, name)) from None
        final = os.path.join(st.upload_dir, f"{ck.sha256[:12]}-{name}")
        if os.path.exists(final):
            os.unlink(tmp)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    st.catalog.remember(final, dict(kind="classifier", sha256=ck.sha256, arch=ck.arch, dataset=ck.dataset,
                                    sigma=ck.sigma, k=ck.k, params=int(sum(p.numel() for p in ck.model.parameters())),
                                    source=ck.source, layout=ck.layout))
    return st.catalog.rel(final)


def _submit(st: WebState, form, files) -> dict:
    """Check the certify form and queue its job (CertifyNetError, one line, for any bad value)."""
    model = st.catalog.find(forms.field_text(form, "model"), "classifier")
    if model is None:
        raise CertifyNetError(f"unknown model '{forms.field_text(form, 'model')[:MAX_NAME]}'; pick one listed on the "
                              f"models page")
    denoiser = None
    if forms.field_text(form, "denoiser"):
        denoiser = st.catalog.find(forms.field_text(form, "denoiser"), "denoiser")
        if denoiser is None:
            raise CertifyNetError(f"unknown denoiser '{forms.field_text(form, 'denoiser')[:MAX_NAME]}'")
    info = dataset_info(model.dataset)
    settings = forms.parse_settings(form, info.dim)
    choice = forms.parse_input(form, files, model.dataset, st.gallery)
    if settings.select == "label" and choice.label < 0:
        raise CertifyNetError("--select label needs the image's true label")
    per_input, exact = settings.passes_per_input()
    where = {"gallery": f"{choice.dataset} test #{choice.idx}", "upload": f"uploaded {choice.filename}",
             "batch": f"first {choice.count} {choice.dataset} test images", "draw": "a drawing"}[choice.kind]
    title = (f"{forms.METHODS[settings.method]} σ={settings.sigma:g} N={settings.N} on {where} "
             f"({os.path.basename(model.path)})")

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


# -------------------------------------------------------------------- results
def _result(st: WebState, job: dict):
    """Rows of the certify log (those written so far), and for a batch the analyze.py table."""
    from certifynet.records import read_rows
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
        import pandas as pd
        df = pd.read_csv(table)
        shown = ("m", "ACR", "abstain", "samples/input", "sec/input")
        keep = [c for c in df.columns if c.startswith("r=") or c in shown]
        from certifynet.analysis import METRICS
        digits = [3 if c.startswith("r=") else METRICS[c][0] for c in keep]   # as analyze.py's tables show them
        out["table"] = {"columns": keep, "values": [[_fmt_num(v, n) for v, n in zip(row, digits)]
                                                    for row in df[keep].to_numpy()]}
        out["plot"] = os.path.isfile(os.path.join(folder, "analysis", "certified_accuracy.png"))
    out["downloads"] = [n for n in DOWNLOADS if os.path.isfile(os.path.join(folder, n))]
    return out


def _job_input(st: WebState, job: dict):
    """The job's (single) input image as a [C,H,W] tensor."""
    inp = job["input"]
    if inp["kind"] == "gallery":
        return st.gallery.item(inp["dataset"], inp["idx"])[0]
    if inp["kind"] == "batch":
        abort(404)
    return image_tensor(read_image_array(os.path.join(st.root, job["files"]["input"])), job["dataset"])


def _noisy_copy(st: WebState, job: dict, j: int) -> bytes:
    """PNG of x + δ_j (clipped to [0,1] for display), δ_j ~ P with the job's σ and k (illustrative draws)."""
    import torch

    from certifynet.noise import make_noise
    x = _job_input(st, job)
    s = job["settings"]
    noise = make_noise("general_gaussian" if s["k"] else "gaussian", s["sigma"], x.numel(), s["k"])
    g = torch.Generator().manual_seed(int(s["seed"]) * NOISY_COPIES + j)
    return png_bytes(x + noise.sample_(torch.empty((1, *x.shape)), g)[0])


@functools.lru_cache(maxsize=4096)
def _thumb_png(gallery: Gallery, dataset: str, idx: int) -> bytes:
    return png_bytes(gallery.item(dataset, idx)[0])


def _thumbnail(st: WebState, dataset: str, idx: int) -> bytes:
    if dataset not in st.gallery.datasets_for(dataset):
        abort(404)
    if not 0 <= idx < st.gallery.size(dataset):
        abort(404)
    return _thumb_png(st.gallery, dataset, idx)

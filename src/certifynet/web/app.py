"""The Flask app: models page (list, upload, delete), certify form (several methods at once, a quick answer),
jobs with live progress, results, comparisons and downloads, and a small JSON API.

`create_app` builds the shared `WebState` (kept in ``app.extensions["certifynet"]``) and registers one
blueprint per area (`certifynet.web.views`), plus the app-wide rules (`security`: Host allowlist, optional
token, no cross-site posts, no framing) and every error as one line on a page, never a traceback.
Requests never sample: a job is handed to `JobManager`, whose worker processes run the CLI stages.
"""
from __future__ import annotations

import dataclasses
import os
import threading

from flask import Flask, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from certifynet.errors import CertifyNetError
from certifynet.web import security
from certifynet.web.catalog import Catalog
from certifynet.web.gallery import Gallery
from certifynet.web.jobs import JobManager
from certifynet.web.plan import METHODS
from certifynet.web.views import BLUEPRINTS
from certifynet.web.views.certify import certify_page
from certifynet.web.views.common import error_page, fmt_num, state
from certifynet.web.views.models import models_page


@dataclasses.dataclass
class WebState:
    root: str
    data_dir: str
    upload_dir: str
    max_upload_mb: float
    catalog: Catalog
    gallery: Gallery
    jobs: JobManager
    listen: str = "127.0.0.1"       # where the server listens (a banner warns beyond loopback)
    public: bool = False
    token: bool = False


def create_app(root: str = ".", model_dirs=("models", "results"), data_dir: str = "data",
               results_dir: str = "results", upload_dir: str | None = None, max_upload_mb: float = 200,
               queue_size: int = 8, workers: int = 1, threads: int | None = None, start_jobs: bool = True,
               token: str | None = None, allowed_hosts=(), listen: str = "127.0.0.1") -> Flask:
    """The app. Paths are relative to `root`, where jobs run the CLI (so the commands shown work from there):
    checkpoints are listed from `model_dirs` and the upload folder (default <results>/web/uploads), jobs
    live in <results>/web/<id>/, gallery images come from `data_dir`. One app per results folder: a second
    one is refused (`lock.ServerLock`) until the first is shut down (`jobs.shutdown()`)."""
    if max_upload_mb <= 0:
        raise CertifyNetError(f"{{max_upload_mb}} must be > 0, got {max_upload_mb:g}", "max_upload_mb")
    if token is not None and len(token) < 8:
        raise CertifyNetError("{token} must have at least 8 characters", "token")
    root = os.path.abspath(root)
    web_dir = os.path.join(results_dir, "web")
    upload_dir = upload_dir or os.path.join(web_dir, "uploads")
    threads = threads or max(1, (os.cpu_count() or 2) // 2)
    jobs = JobManager(root, web_dir, queue_size, workers, threads, start=start_jobs)
    web_state = WebState(root=root, data_dir=data_dir, upload_dir=os.path.join(root, upload_dir),
                         max_upload_mb=max_upload_mb,
                         catalog=Catalog(root, model_dirs, upload_dir, os.path.join(web_dir, "models.json")),
                         gallery=Gallery(os.path.join(root, data_dir)), jobs=jobs, listen=listen,
                         public=not security.is_loopback(listen), token=bool(token))
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=int(max_upload_mb * 2 ** 20), MAX_FORM_MEMORY_SIZE=8 * 2 ** 20,
                      DEBUG=False, TESTING=False, PROPAGATE_EXCEPTIONS=False, CERTIFYNET_TOKEN=token,
                      CERTIFYNET_ALLOWED_HOSTS={h.lower().strip("[]") for h in allowed_hosts})
    app.extensions["certifynet"] = web_state
    app.jinja_env.filters["num"] = fmt_num
    app.jinja_env.globals.update(methods=METHODS)
    app.context_processor(lambda: {"web": app.extensions["certifynet"]})
    app.before_request(security.check_request)
    app.after_request(security.add_headers)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.register_error_handler(RequestEntityTooLarge, too_large)
    app.register_error_handler(CertifyNetError, user_error)
    app.register_error_handler(Exception, any_error)
    return app


# -------------------------------------------------------------------- errors: one line, never a traceback
def too_large(e):
    msg = f"the upload is larger than the limit of {state().max_upload_mb:g} MB"
    if request.path == "/models":
        return models_page(error=msg, status=413)
    if request.path == "/certify":
        return certify_page({}, error=msg, status=413)
    return error_page(msg, 413)


def user_error(e: CertifyNetError):
    return error_page(e.render(cli=True), 400)


def any_error(e: Exception):
    if isinstance(e, HTTPException):
        return error_page(f"{e.code} {e.name}: {e.description}".splitlines()[0], e.code or 500)
    current_app.logger.exception("unexpected error on %s", request.path)
    return error_page(f"internal error ({type(e).__name__}); the server's log has the details", 500)


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

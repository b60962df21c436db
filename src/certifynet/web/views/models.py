"""The models page: the checkpoints found under the model folders, the upload of a new one (with the
architecture, for a file whose keys do not tell it), the architecture of a listed file that needs one, and
the deletion of an uploaded file."""
from __future__ import annotations

import os
import shutil
import tempfile

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.utils import secure_filename

from certifynet.data import DATASETS
from certifynet.errors import CertifyNetError
from certifynet.web.catalog import is_checkpoint_name
from certifynet.web.views.common import state

MAX_NAME = 100  # characters of an uploaded file name that are kept (and shown)

bp = Blueprint("models", __name__)


def _architectures() -> list:
    from certifynet.models import ARCHITECTURES
    return list(ARCHITECTURES)


def models_page(error: str = "", message: str = "", status: int = 200):
    st = state()
    return render_template("models.html", entries=st.catalog.entries(), error=error, message=message,
                           max_upload_mb=st.max_upload_mb, archs=_architectures(), datasets=list(DATASETS),
                           upload_dir=os.path.relpath(st.upload_dir, st.root)), status


@bp.get("/")
def home():
    return redirect(url_for("models.index"))


@bp.get("/models")
def index():
    """`?uploaded=PATH` and `?described=PATH` say what happened, but only for a path the catalog lists (no text
    of the query string is ever shown as it is)."""
    paths = {e.path for e in state().catalog.entries() if e.kind == "classifier"}
    for key, what in (("uploaded", "uploaded"), ("described", "will be read as")):
        path = request.args.get(key, "")
        if path in paths:
            entry = state().catalog.find(path, "classifier")
            return models_page(message=f"{what} {path}" + (f": {entry.arch} on {entry.dataset}" if key == "described"
                                                             else ""))
    return models_page()


@bp.post("/models")
def upload():
    try:
        path = store_checkpoint(request.files.get("checkpoint"), request.form.get("arch") or None,
                                request.form.get("dataset") or None)
    except CertifyNetError as e:
        return models_page(error=_web_words(e), status=400)
    return redirect(url_for("models.index", uploaded=path), 303)


@bp.post("/models/describe")
def describe():
    """Read a listed checkpoint as the architecture (and dataset) the user picked."""
    st = state()
    path, arch, dataset = (request.form.get(k, "") for k in ("path", "arch", "dataset"))
    listed = {e.path for e in st.catalog.entries()}
    try:
        if path not in listed:
            raise CertifyNetError(f"'{path[:MAX_NAME]}' is not a checkpoint listed here")
        if arch not in _architectures() or dataset not in DATASETS:
            raise CertifyNetError("pick an architecture and a dataset")
        st.catalog.give(path, arch, dataset)
    except CertifyNetError as e:
        return models_page(error=_web_words(e), status=400)
    return redirect(url_for("models.index", described=path), 303)


@bp.post("/models/delete")
def delete():
    """Delete an uploaded checkpoint (files under the model folders are the user's: never deleted here)."""
    st = state()
    path = request.form.get("path", "")
    entry = next((e for e in st.catalog.entries() if e.path == path and e.uploaded), None)
    if entry is None:
        return models_page(error="only an uploaded checkpoint listed here can be deleted", status=400)
    os.unlink(os.path.join(st.root, entry.path))
    return models_page(message=f"deleted {entry.path}")


def _web_words(e: CertifyNetError) -> str:
    """The loader's message for this page: its --arch is the Architecture field above."""
    return e.render(cli=True).replace("pass --arch", "pick its Architecture (--arch) in the form")


def _checked_name(upload) -> str:
    name = secure_filename(upload.filename or "") if upload else ""
    if not name:
        raise CertifyNetError("choose a checkpoint file (.pth or .pth.tar) to upload")
    if not is_checkpoint_name(name):
        raise CertifyNetError(f"'{name[:MAX_NAME]}' is not a .pth or .pth.tar checkpoint")
    return name[-MAX_NAME:]


def store_checkpoint(upload, arch: str | None = None, dataset: str | None = None) -> str:
    """Check an uploaded checkpoint with `load_checkpoint` (weights_only; `arch`/`dataset` as --arch/--dataset)
    and keep it in the upload folder as <sha256[:12]>-<secure name>. A refused file is deleted: nothing of it is
    kept anywhere."""
    from certifynet.models import load_checkpoint
    st = state()
    name = _checked_name(upload)
    if (arch and arch not in _architectures()) or (dataset and dataset not in DATASETS):
        raise CertifyNetError("unknown architecture or dataset")
    os.makedirs(st.upload_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=st.upload_dir, prefix=".upload-", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(upload.stream, out, 1 << 20)
        if os.path.getsize(tmp) == 0:
            raise CertifyNetError(f"'{name}' is empty")
        try:
            ck = load_checkpoint(tmp, arch=arch, dataset=dataset)
        except CertifyNetError as e:
            raise CertifyNetError(e.template.replace(tmp, name), *e.fields) from None
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
    if arch:   # the commands pass it (a file's own arch field, if any, agrees with it: the loader checks)
        st.catalog.give(st.catalog.rel(final), ck.arch, ck.dataset)
    st.catalog.remember(final, dict(kind="classifier", sha256=ck.sha256, arch=ck.arch, dataset=ck.dataset,
                                    sigma=ck.sigma, k=ck.k, params=int(sum(p.numel() for p in ck.model.parameters())),
                                    source=ck.source, layout=ck.layout))
    return st.catalog.rel(final)

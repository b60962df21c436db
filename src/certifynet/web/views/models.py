"""The models page: the checkpoints found under the model folders, and the upload of a new one."""
from __future__ import annotations

import os
import shutil
import tempfile

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.utils import secure_filename

from certifynet.errors import CertifyNetError
from certifynet.web.catalog import is_checkpoint_name
from certifynet.web.views.common import state

MAX_NAME = 100  # characters of an uploaded file name that are kept (and shown)

bp = Blueprint("models", __name__)


def models_page(error: str = "", message: str = "", status: int = 200):
    st = state()
    return render_template("models.html", entries=st.catalog.entries(), error=error, message=message,
                           max_upload_mb=st.max_upload_mb,
                           upload_dir=os.path.relpath(st.upload_dir, st.root)), status


@bp.get("/")
def home():
    return redirect(url_for("models.index"))


@bp.get("/models")
def index():
    uploaded = request.args.get("uploaded", "")[:300]
    return models_page(message=f"uploaded {uploaded}" if uploaded else "")


@bp.post("/models")
def upload():
    try:
        path = store_checkpoint(request.files.get("checkpoint"))
    except CertifyNetError as e:
        return models_page(error=e.render(cli=True), status=400)
    return redirect(url_for("models.index", uploaded=path), 303)


def _checked_name(upload) -> str:
    name = secure_filename(upload.filename or "") if upload else ""
    if not name:
        raise CertifyNetError("choose a checkpoint file (.pth or .pth.tar) to upload")
    if not is_checkpoint_name(name):
        raise CertifyNetError(f"'{name[:MAX_NAME]}' is not a .pth or .pth.tar checkpoint")
    return name[-MAX_NAME:]


def store_checkpoint(upload) -> str:
    """Check an uploaded checkpoint with `load_checkpoint` (weights_only) and keep it in the upload folder as
    <sha256[:12]>-<secure name>. A refused file is deleted: nothing of it is kept anywhere."""
    from certifynet.models import load_checkpoint
    st = state()
    name = _checked_name(upload)
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

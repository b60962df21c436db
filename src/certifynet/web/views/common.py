"""What every view uses: the app's state, the one-line error page, PNG responses, numbers for the templates."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Response, current_app, jsonify, render_template, request

if TYPE_CHECKING:
    from certifynet.web.app import WebState


def state() -> WebState:
    """The app's catalog, gallery, jobs and folders (``current_app.extensions["certifynet"]``)."""
    return current_app.extensions["certifynet"]


def error_page(message: str, status: int):
    """The one-line error as a page (status `status`), or as {"error": ...} under /api/."""
    if request.path.startswith("/api/"):
        return jsonify(error=message), status
    return render_template("error.html", error=message, status=status), status


def png(data: bytes) -> Response:
    return Response(data, mimetype="image/png", headers={"Cache-Control": "max-age=3600"})


def int_arg(text, default: int) -> int:
    """An integer query/form value, or `default` when it is absent or not an integer."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


def fmt_num(v, digits: int = 4) -> str:
    """A number with `digits` decimals for a table cell ('–' for anything else); the `num` template filter."""
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return "–"

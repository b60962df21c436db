"""Certify-Net's web app (Flask): upload a checkpoint, pick, upload or draw an image (or a batch), certify it with
one method or several side by side in a background job that runs the CLI stages, ask a quick question of a warm
worker, and read, explain and compare the radii. Sits above sampling/certify, which never import it. Start it
with `certifynet-web` or `python scripts/web.py` (see `certifynet.cli.web`).

`create_app` is loaded on first use, so that `certifynet.cli.web --help` stays light."""
from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from certifynet.web.app import create_app
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

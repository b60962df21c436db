"""Certify-Net's web app (Flask): upload a checkpoint, pick, upload or draw an image (or a batch), certify it
in a background job that runs the CLI stages, and read the radius. Sits above sampling/certify, which never
import it. Start it with `python scripts/web.py` (see `certifynet.cli.web`)."""
from certifynet.web.app import create_app

__all__ = ["create_app"]

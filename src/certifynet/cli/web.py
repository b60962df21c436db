"""web.py: the web app — upload a checkpoint, pick/upload/draw an image or a batch, certify it with one method or
several side by side, ask for a quick answer, read and compare the radii.

Serves on 127.0.0.1:8000 by default. Jobs run the CLI stages (sample, certify, analyze) in worker processes,
from --root, writing under <results>/web/<job>/; each job page shows the equivalent certifynet-* commands.
One server per results folder. Beyond loopback (--host), give it a --token (or set CERTIFYNET_WEB_TOKEN):
every request must then carry it; the printed address does. Host names other than IP addresses and
localhost are refused unless listed with --allow-host (DNS rebinding).
"""
from __future__ import annotations

import errno
import math
import os
import secrets
import signal
import socket
import sys

from certifynet.cli import CliParser, one_line_errors
from certifynet.errors import CertifyNetError
from certifynet.web.security import is_loopback

TOKEN_ENV = "CERTIFYNET_WEB_TOKEN"
MAX_THREADS = 1024   # job threads or torch threads beyond this are a typo (each worker is a thread and a process)


def build_parser():
    p = CliParser(prog="web.py", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; the address is printed)")
    p.add_argument("--root", default=".", help="folder the other paths are relative to; jobs run the CLI from here")
    p.add_argument("--models", nargs="+", default=["models", "results"], metavar="DIR",
                   help="folders searched for checkpoints (.pth, .pth.tar)")
    p.add_argument("--data-dir", default="data", help="datasets for the gallery (mnist5k is bundled)")
    p.add_argument("--results", default="results",
                   help="jobs go to <results>/web/<job>/, uploads to <results>/web/uploads/")
    p.add_argument("--max-upload-mb", type=float, default=200)
    p.add_argument("--queue", type=int, default=8, help="jobs that may wait")
    p.add_argument("--workers", type=int, default=1, help="batch jobs that run at once")
    p.add_argument("--threads", type=int, default=None, help="torch threads per job (default: half the CPU cores)")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                   help=f"access token every request must carry ('auto': a random one; default: ${TOKEN_ENV})")
    p.add_argument("--allow-host", nargs="+", default=[], metavar="NAME",
                   help="host names (besides IP addresses and localhost) the server answers to")
    return p


def _stop(signum, frame):
    raise KeyboardInterrupt


def url_host(host: str) -> str:
    """The host as it goes into a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be bound in one line, before werkzeug tries (and prints several)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        why = "the port is in use (another server?)" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise CertifyNetError(f"cannot listen on {url_host(host)}:{port}: {why}") from None


def check_args(args) -> None:
    """Every value checked before the app exists (no folder created, no job thread started)."""
    if not 0 <= args.port <= 65535:
        raise CertifyNetError(f"{{port}} must be in [0, 65535], got {args.port}", "port")
    if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb > 0):
        raise CertifyNetError(f"{{max_upload_mb}} must be a finite number > 0, got {args.max_upload_mb}",
                              "max_upload_mb")
    for name, most in (("queue", None), ("workers", MAX_THREADS), ("threads", MAX_THREADS)):
        value = getattr(args, name)
        if value is not None and not (1 <= value and (most is None or value <= most)):
            raise CertifyNetError(f"{{{name}}} must be in [1, {most or 'inf'}], got {value}", name)
    try:  # a host that cannot be an address (bad characters, too long) fails here rather than at bind time
        socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as e:
        why = getattr(e, "strerror", None) or e
        raise CertifyNetError(f"cannot listen on {url_host(args.host)}:{args.port}: {why}") from None


@one_line_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    token = secrets.token_urlsafe(16) if args.token == "auto" else args.token
    check_port(args.host, args.port)
    import torch
    torch.set_num_threads(1)   # the server only loads checkpoints and draws a few noisy copies
    from werkzeug.serving import make_server

    from certifynet.web import create_app
    from certifynet.web.app import warm_up
    app = create_app(args.root, args.models, args.data_dir, args.results, max_upload_mb=args.max_upload_mb,
                     queue_size=args.queue, workers=args.workers, threads=args.threads, token=token,
                     allowed_hosts=args.allow_host, listen=args.host)
    jobs = app.extensions["certifynet"].jobs
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except (OSError, SystemExit) as e:
        jobs.shutdown()
        why = getattr(e, "strerror", None) or "the address cannot be bound"
        raise CertifyNetError(f"cannot listen on {url_host(args.host)}:{args.port}: {why}") from None
    jobs.lock.note(host=args.host, port=server.server_port)
    if not is_loopback(args.host):
        what = "every request needs the token" if token else ("anyone who reaches this port can upload checkpoints "
                                                               "and run jobs (there is no --token)")
        print(f"warning: listening on {args.host}, beyond loopback: {what}", file=sys.stderr)
    warm_up(app)
    query = f"?token={token}" if token else ""
    print(f"Certify-Net web app: http://{url_host(args.host)}:{server.server_port}/{query}  (Ctrl+C stops it)",
          flush=True)
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        jobs.shutdown()
    return 0

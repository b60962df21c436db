"""web.py: the web app — upload a checkpoint, pick/upload/draw an image or a batch, certify it, read the radius.

Serves on 127.0.0.1:8000 by default (no login: bind beyond loopback only on a trusted network). Jobs run the
CLI stages (sample.py, certify.py, analyze.py) in worker processes, from --root, writing under
<results>/web/<job>/; each job page shows the equivalent commands.
"""
from __future__ import annotations

import ipaddress
import math
import signal
import socket
import sys

from certifynet.cli import CliParser, one_line_errors
from certifynet.errors import CertifyNetError


MAX_THREADS = 1024   # job threads or torch threads beyond this are a typo (each worker is a thread and a process)


def build_parser():
    p = CliParser(prog="web.py", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--root", default=".", help="folder the other paths are relative to; jobs run the CLI from here")
    p.add_argument("--models", nargs="+", default=["models", "results"], metavar="DIR",
                   help="folders searched for checkpoints (.pth, .pth.tar)")
    p.add_argument("--data-dir", default="data", help="datasets for the gallery (mnist5k is bundled)")
    p.add_argument("--results", default="results",
                   help="jobs go to <results>/web/<job>/, uploads to <results>/web/uploads/")
    p.add_argument("--max-upload-mb", type=float, default=200)
    p.add_argument("--queue", type=int, default=8, help="jobs that may wait")
    p.add_argument("--workers", type=int, default=1, help="jobs that run at once")
    p.add_argument("--threads", type=int, default=None, help="torch threads per job (default: half the CPU cores)")
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _stop(signum, frame):
    raise KeyboardInterrupt


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
        raise CertifyNetError(f"cannot listen on {args.host}:{args.port}: {getattr(e, 'strerror', None) or e}") \
            from None


@one_line_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    import torch
    torch.set_num_threads(1)   # the server only loads checkpoints and draws a few noisy copies
    from werkzeug.serving import make_server

    from certifynet.web import create_app
    from certifynet.web.app import warm_up
    app = create_app(args.root, args.models, args.data_dir, args.results, max_upload_mb=args.max_upload_mb,
                     queue_size=args.queue, workers=args.workers, threads=args.threads)
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except (OSError, SystemExit) as e:
        app.extensions["certifynet"].jobs.shutdown()
        why = getattr(e, "strerror", None) or e
        raise CertifyNetError(f"cannot listen on {args.host}:{args.port}: {why}") from None
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}, beyond loopback: anyone who reaches this port can upload "
              f"checkpoints and run jobs (there is no login)", file=sys.stderr)
    warm_up(app)
    print(f"Certify-Net web app: http://{args.host}:{server.server_port}/  (Ctrl+C stops it)", flush=True)
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.extensions["certifynet"].jobs.shutdown()
    return 0

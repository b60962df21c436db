"""One server per results folder: an exclusive `fcntl.flock` on `<results>/web/.server.lock`, which names the
holder's pid and port. A second server on the same folder is refused in one line, before it touches any job
(two servers would each take the other's running jobs for dead ones). The kernel drops the lock when the
holder dies, however it dies, so a restart after a crash is never refused."""
from __future__ import annotations

import errno
import fcntl
import json
import os

from certifynet.errors import CertifyNetError

LOCK_NAME = ".server.lock"


class ServerLock:
    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: int | None = None
        self.info = {}

    def acquire(self, shown: str) -> ServerLock:
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                holder = json.loads(os.read(fd, 1000).decode("utf-8", "replace") or "{}")
            except ValueError:
                holder = {}
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            port = holder.get("port")
            raise CertifyNetError(f"another Certify-Net web server (pid {holder.get('pid', '?')}, port "
                                  f"{port if port is not None else 'not yet listening'}) serves '{shown}'; stop it, "
                                  f"or give this one other {{results}}", "results") from None
        self._fd = fd
        self.note(pid=os.getpid(), port=None, host=None)
        return self

    def note(self, **info) -> None:
        """Record who holds the lock (pid, host, port), for the message a second server shows."""
        if self._fd is None:
            return
        self.info.update(info)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(self.info).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing drops the flock; the file stays (unlinking it would race)
            self._fd = None

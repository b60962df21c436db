"""One writer per file: an exclusive `fcntl.flock` on `<file>.lock` (`WriterLock`), and who holds it
(`writer_active`). The kernel drops the lock when its process dies (kill -9, preemption)."""
from __future__ import annotations

import datetime
import errno
import fcntl
import os
import socket

from certifynet.errors import CertifyNetError
from certifynet.paths import LOCK_SUFFIX


class WriterLock:
    """Exclusive advisory lock `<path>.lock` (fcntl.flock), holding the writer's pid and host.

    Acquire opens the lock file, locks it without waiting, and checks that the path still names the locked
    inode (a releasing writer unlinks it), retrying otherwise. A held lock is an error naming its holder.
    """

    def __init__(self, path: str):
        self.path = path + LOCK_SUFFIX
        self._fd: int | None = None

    def acquire(self, target: str) -> WriterLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise CertifyNetError(f"'{target}' is being written by {holder}; wait for it to finish, or "
                                          f"give this run another output (one writer per file)") from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # lost a race with a releasing writer: lock the new file
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.datetime.now().isoformat(timespec='seconds')}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def writer_active(path: str) -> str | None:
    """Who holds the writer lock of `path` (None when nobody does)."""
    lp = path + LOCK_SUFFIX
    if not os.path.exists(lp):
        return None
    try:
        fd = os.open(lp, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError:
        return os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
    finally:
        os.close(fd)

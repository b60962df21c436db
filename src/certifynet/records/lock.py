"""One writer per output: an exclusive `fcntl.flock` on `<file>.lock` (`WriterLock`), who holds it
(`writer_active`), and what this process holds (`covered`). The kernel drops the lock when its process dies
(kill -9, preemption)."""
from __future__ import annotations

import datetime
import errno
import fcntl
import os
import socket
import threading

from certifynet.errors import CertifyNetError
from certifynet.paths import LOCK_SUFFIX

# What this process holds: lock file → [(absolute path, is a folder)] it covers (see `covered`).
_HELD: dict[str, list[tuple[str, bool]]] = {}
_HELD_LOCK = threading.Lock()


class WriterLock:
    """Exclusive advisory lock `<path>.lock` (fcntl.flock), holding the writer's pid and host.

    Acquire opens the lock file, locks it without waiting, and checks that the path still names the locked
    inode (a releasing writer unlinks it), retrying otherwise. A held lock is an error naming its holder.
    While held, the lock covers `path` (and the files named `path.<suffix>` beside it: sidecar, summary) and
    the extra `covers` — (path, is_folder) pairs, a folder covering everything under it.
    """

    def __init__(self, path: str, covers=()):
        self.path = path + LOCK_SUFFIX
        self.covers = [(os.path.abspath(path), False)] + [(os.path.abspath(p), bool(f)) for p, f in covers]
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
        with _HELD_LOCK:
            _HELD[os.path.abspath(self.path)] = self.covers
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with _HELD_LOCK:
                _HELD.pop(os.path.abspath(self.path), None)
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


def _covers(entry: tuple[str, bool], path: str) -> bool:
    base, folder = entry
    if folder:
        return path == base or path.startswith(base + os.sep)
    return path == base or (path.startswith(base + ".") and os.sep not in path[len(base):])


def covered(path: str) -> bool:
    """Whether a lock this process holds covers `path`: its lock file, the locked file or a `file.<suffix>`
    beside it, or anything under a locked folder."""
    path = os.path.abspath(path)
    with _HELD_LOCK:
        return path in _HELD or any(_covers(e, path) for entries in _HELD.values() for e in entries)


def holding_folder(folder: str) -> bool:
    """Whether this process holds a lock covering `folder` as a folder (it or one of its parents)."""
    folder = os.path.abspath(folder)
    with _HELD_LOCK:
        return any(f and _covers((p, f), folder) for entries in _HELD.values() for p, f in entries)

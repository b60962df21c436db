"""Progress for long work: a tqdm bar on a terminal, periodic plain lines otherwise (SLURM `.out` files).

`progress(total, desc, unit, enabled)` returns an object with `update(n)`, `set_postfix(**kw)` and `close()`
(also a context manager). When stderr is not a terminal it prints one line every
$CERTIFYNET_PROGRESS_SECONDS seconds (default 30) and a last line at the end, e.g.
`sampling: 40/100 inputs (40%) elapsed 0:01:05, 1.63 s/input, ETA 0:01:38`.
CERTIFYNET_NO_PROGRESS=1 silences every reporter (what `quickstart.py --no-progress` sets).
"""
from __future__ import annotations

import datetime
import os
import sys
import time


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class _Silent:
    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PlainProgress(_Silent):
    """One plain line per `interval` seconds: done/total, elapsed, rate and ETA."""

    def __init__(self, total, desc, unit, file, interval):
        self.total, self.desc, self.unit, self.file, self.interval = total, desc, unit, file, interval
        self.n, self.t0, self.postfix = 0, time.time(), ""
        self._last = self.t0

    def update(self, n=1):
        self.n += n
        now = time.time()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def set_postfix(self, **kw):
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def _line(self):
        elapsed = time.time() - self.t0
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}s"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        parts.append(f"elapsed {_hms(elapsed)}")
        if self.n:
            parts.append(f"{elapsed / self.n:.3g} s/{self.unit}")
            if self.total:
                parts.append(f"ETA {_hms(elapsed / self.n * (self.total - self.n))}")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=self.file, flush=True)

    def close(self):
        if self.n:
            self._line()


def progress(total=None, desc="", unit="it", enabled=True, file=None, leave=True):
    """A progress reporter: tqdm on a terminal, PlainProgress when `file` (default stderr) is not one."""
    file = file or sys.stderr
    if not enabled or os.environ.get("CERTIFYNET_NO_PROGRESS"):
        return _Silent()
    if getattr(file, "isatty", lambda: False)():
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, file=file, dynamic_ncols=True, leave=leave, mininterval=0.5)
    return PlainProgress(total, desc, unit, file, float(os.environ.get("CERTIFYNET_PROGRESS_SECONDS", 30)))

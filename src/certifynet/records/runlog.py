"""Per-epoch logs of training runs (train.py, train_denoiser.py) made ready for `RowLog` to append to:
`rewrite_log` replaces the sidecar, then the log, each atomically, keeping the rows of the epochs the run's
checkpoint holds. The caller holds the run's lock and has checked the files with `records.guard`."""
from __future__ import annotations

import csv
import datetime
import json
import os
from collections.abc import Callable

from certifynet._version import __version__
from certifynet.errors import CertifyNetError
from certifynet.paths import SIDECAR_SUFFIX
from certifynet.records.files import atomic_write


def _kept_rows(path: str, columns: list[str], keep: Callable[[int], bool]) -> list[list[str]]:
    """The rows of an old log (as written) whose key (first column) `keep` accepts; damaged or repeated rows
    are skipped. A log with other columns is an error."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        text = f.read()
    sep = "\t" if "\t" in text.partition("\n")[0] else ","
    rows = list(csv.reader(text.splitlines(), delimiter=sep))
    if rows and rows[0] != columns:
        raise CertifyNetError(f"'{path}' has columns {rows[0]}, expected {columns}")
    kept, seen = [], set()
    for r in rows[1:]:
        try:
            key = int(r[0]) if len(r) == len(columns) else None
        except ValueError:
            continue
        if key is not None and key not in seen and keep(key):
            seen.add(key)
            kept.append(r)
    return kept


def rewrite_log(path: str, columns, meta: dict, keep: Callable[[int], bool] | None, *, sep: str = ",",
                sidecar: str | None = None) -> None:
    """Prepare a per-epoch log for `RowLog` to append to, atomically at each step: its sidecar becomes
    {**meta, columns, version, created}, then the log becomes its header and the old rows whose epoch `keep`
    accepts (None: a fresh log). A kill at any point leaves either file whole, and no kept row is lost."""
    columns = list(columns)
    kept = _kept_rows(path, columns, keep) if keep is not None else []
    side = sidecar or path + SIDECAR_SUFFIX
    created = datetime.datetime.now().isoformat(timespec="seconds")
    full = {**meta, "columns": columns, "version": __version__, "created": created}
    atomic_write(side, lambda f: f.write(json.dumps(full, indent=1, sort_keys=True) + "\n"))

    def write(f):
        f.write(sep.join(columns) + "\n")
        for r in kept:
            f.write(sep.join(r) + "\n")

    atomic_write(path, write)

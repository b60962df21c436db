"""Append-only row logs with a JSON metadata sidecar, resumable after `kill -9`.

A log is a delimited text file with a header line; `<file>.meta.json` names what produced it (model,
σ, k, N, α, seed, ...). Each row is written and flushed at once. On reopen with the same metadata, a
half-written last line (no trailing newline) is dropped and the indices already present are skipped.
Torch-free: used by sampling (counts files) and certification (logs).
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import os
import tempfile

from certifynet._version import __version__
from certifynet.errors import CertifyNetError

# Metadata keys that may differ between a run and its resumption (or between shards of one run).
VOLATILE_META = {"created", "version", "command", "shard", "start", "end", "indices"}


def atomic_write(path: str, write, binary: bool = False) -> None:
    """Call write(f) on a temp file in the same folder, fsync, then rename onto `path`: readers see the old
    file or the new one, never half of one. The file gets the mode open() would give it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def meta_path(path: str) -> str:
    return path + ".meta.json"


def read_meta(path: str, required: bool = True) -> dict:
    """The JSON sidecar of `path` ({} when absent and not required)."""
    mp = meta_path(path)
    if not os.path.isfile(mp):
        if required:
            raise CertifyNetError(f"metadata sidecar '{mp}' not found (it is written next to every counts file and log)")
        return {}
    try:
        with open(mp) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CertifyNetError(f"metadata sidecar '{mp}' is not valid JSON (line {getattr(e, 'lineno', '?')})") from e


def meta_conflict(a: dict, b: dict, ignore=VOLATILE_META):
    """First key (sorted) on which two metadata dicts disagree, ignoring volatile keys; None if they agree."""
    for key in sorted((set(a) | set(b)) - set(ignore)):
        if a.get(key) != b.get(key):
            return key
    return None


def _format(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def _drop_partial_last_line(path: str) -> None:
    """Truncate the file after its last newline: a killed writer may leave half a row."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class RowLog:
    """Append rows (dicts) to a delimited file, flushing each; resume-aware.

    `done` holds the `idx` values already in the file. Opening an existing file whose sidecar disagrees
    with `meta` is an error naming the differing field.
    """

    def __init__(self, path: str, columns, meta: dict, sep: str = "\t"):
        self.path, self.columns, self.sep = path, list(columns), sep
        meta = {**meta, "columns": self.columns, "version": __version__,
                "created": datetime.datetime.now().isoformat(timespec="seconds")}
        self.done = set()
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            old = read_meta(path, required=False)
            key = meta_conflict(old, meta) if old else None
            if key:
                raise CertifyNetError(f"'{path}' exists and was made with a different {key} "
                                      f"({old.get(key)!r} vs {meta.get(key)!r}); use another output path or delete it")
            _drop_partial_last_line(path)
            with open(path, newline="") as f:
                rows = list(csv.reader(f, delimiter=sep))
            if rows and rows[0] != self.columns:
                raise CertifyNetError(f"'{path}' has columns {rows[0]}, expected {self.columns}; use another output path")
            self.done = {int(r[0]) for r in rows[1:] if r}
            self._f = open(path, "a", newline="")
            if not rows:
                self._write_line(self.columns)
        else:
            with open(meta_path(path), "w") as f:
                json.dump(meta, f, indent=1, sort_keys=True)
            self._f = open(path, "w", newline="")
            self._write_line(self.columns)
        self.meta = meta

    def _write_line(self, values):
        self._f.write(self.sep.join(_format(v) for v in values) + "\n")
        self._f.flush()

    def write(self, row: dict) -> None:
        self._write_line([row.get(c, "") for c in self.columns])
        self.done.add(int(row["idx"]))

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_rows(path: str, sep: str | None = None):
    """Rows of a log as a list of dicts of strings (sep sniffed from the header when not given)."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"file '{path}' not found")
    with open(path, newline="") as f:
        text = f.read()
    if not text.strip():
        raise CertifyNetError(f"'{path}' is empty")
    lines = text.splitlines()
    if not text.endswith("\n"):
        lines = lines[:-1]  # half-written last row of a killed run
    sep = sep or ("\t" if "\t" in lines[0] else ",")
    reader = csv.reader(lines, delimiter=sep)
    header = next(reader)
    rows = []
    for lineno, values in enumerate(reader, start=2):
        if len(values) != len(header):
            raise CertifyNetError(f"'{path}' line {lineno}: {len(values)} fields, expected {len(header)}")
        rows.append(dict(zip(header, values)))
    return header, rows


# ---------------------------------------------------------------- which inputs a run covers
def parse_shard(text: str | None, env=os.environ):
    """'i/n' → (i, n) with 0 ≤ i < n. Default: (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP
    of SLURM_ARRAY_TASK_COUNT when set (so --array=1-16 and --array=0-30:2 work too), else (0, 1)."""
    if text is None:
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            i = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
            if i % step:
                raise CertifyNetError(f"SLURM_ARRAY_TASK_ID {env['SLURM_ARRAY_TASK_ID']} is off the array's step {step}; "
                                      "use a plain range such as --array=0-15, or pass --shard i/n")
            return _checked_shard(i // step, int(env["SLURM_ARRAY_TASK_COUNT"]), "SLURM_ARRAY_TASK_ID")
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise CertifyNetError(f"--shard must look like i/n (e.g. 0/4), got '{text}'") from None
    return _checked_shard(i, n, "--shard")


def _checked_shard(i, n, what):
    if n < 1 or not (0 <= i < n):
        raise CertifyNetError(f"{what}: shard {i} of {n} is out of range (need 0 <= i < n)")
    return i, n


def select_indices(n_total: int, start: int = 0, end: int | None = None, skip: int = 1,
                   max_count: int | None = None, shard=(0, 1)):
    """Inputs start, start+skip, ... < end (at most max_count), then the contiguous part `shard` = (i, n)."""
    if skip < 1:
        raise CertifyNetError(f"--skip must be >= 1, got {skip}")
    end = n_total if end is None else min(end, n_total)
    if start < 0 or (n_total > 0 and start > end):
        raise CertifyNetError(f"--start {start} is outside the dataset (size {n_total})")
    idx = list(range(start, end, skip))
    if max_count is not None:
        idx = idx[:max_count]
    i, n = shard
    return idx[len(idx) * i // n: len(idx) * (i + 1) // n]


def shard_path(path: str, shard) -> str:
    """`results/x.tsv` → `results/x.shard2of4.tsv` for shard (2, 4); unchanged for a single shard."""
    i, n = shard
    if n == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.shard{i}of{n}{ext}"

"""Append-only row logs with a JSON metadata sidecar: one writer at a time, resumable, tamper-evident.

A log is a delimited text file with a header line; `<file>.meta.json` names what produced it (model, σ, k,
N, α, seed, ...). Guarantees of `RowLog`:

- **Nothing that is not ours is touched.** An existing output must be a log of the same kind with a sidecar
  that agrees with the new run (every non-volatile field) and the same header; anything else (a checkpoint
  given as --out by mistake, a sidecar, a counts file where a certify log is expected, a file without its
  sidecar) is refused before a single byte changes.
- **One writer.** An exclusive `fcntl.flock` on `<file>.lock` is held while the log is open; a second writer
  is refused naming the holder's pid. The kernel releases the lock when a process dies (kill -9,
  preemption), so a rerun resumes at once; the lock file is removed on a clean close.
- **Resume after any crash damage.** Each row is written and flushed at once. On reopen, what follows the
  last complete row (half a row, NUL bytes) is cut off with a message; a damaged row in the middle is an
  error naming its line; the indices already present are skipped.
- **Tamper evidence** (counts files, `integrity=True`). The sidecar records `integrity`: a SHA-256 of its
  settings and one short digest per field, and every row carries `check` = SHA-256(settings digest, row)
  truncated to 16 hex digits. An edited sidecar field or row is detected and named (`verify_settings`,
  `row_check`). It guards against accidents (edits, mixed files), not against a forger.
- A run that fails before writing any row leaves no file behind.
Torch-free: used by sampling (counts files) and certification (logs).
"""
from __future__ import annotations

import csv
import datetime
import errno
import fcntl
import hashlib
import json
import math
import os
import socket
import sys
import tempfile

from certifynet._version import __version__
from certifynet.errors import CertifyNetError
from certifynet.paths import LOCK_SUFFIX, SIDECAR_SUFFIX, check_output_file

# Metadata keys that may differ between a run and its resumption (or between shards of one run).
VOLATILE_META = {"created", "version", "command", "shard", "start", "end", "indices"}
# Not covered by the settings digest: volatile keys, merge bookkeeping and the digest itself.
INTEGRITY_IGNORE = VOLATILE_META | {"merged_from", "missing", "integrity"}
CHECK_COLUMN = "check"


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
    return path + SIDECAR_SUFFIX


def read_meta(path: str, required: bool = True, sidecar: str | None = None) -> dict:
    """The JSON sidecar of `path` (or the file `sidecar`) as a dict ({} when absent and not required)."""
    mp = sidecar or meta_path(path)
    if not os.path.isfile(mp):
        if required:
            raise CertifyNetError(f"metadata sidecar '{mp}' not found (it is written next to every counts file and log)")
        return {}
    try:
        with open(mp, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CertifyNetError(f"metadata sidecar '{mp}' is not valid JSON (line {getattr(e, 'lineno', '?')})") from None
    if not isinstance(meta, dict):
        raise CertifyNetError(f"metadata sidecar '{mp}' holds a JSON {type(meta).__name__}, not an object")
    return meta


def write_meta(path: str, meta: dict, sidecar: str | None = None) -> None:
    """Write the sidecar of `path` (or the file `sidecar`) atomically."""
    atomic_write(sidecar or meta_path(path), lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True) + "\n"))


def meta_conflict(a: dict, b: dict, ignore=VOLATILE_META):
    """First key (sorted) on which two metadata dicts disagree, ignoring volatile keys; None if they agree."""
    for key in sorted((set(a) | set(b)) - set(ignore)):
        if a.get(key) != b.get(key):
            return key
    return None


# ---------------------------------------------------------------- tamper evidence
def _digest(text: str, length: int = 64) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def settings_integrity(meta: dict) -> dict:
    """{'sha256': digest of all settings, 'fields': {key: 12-hex digest of key=value}} over the keys of
    `meta` outside INTEGRITY_IGNORE (the same for every shard and for a merge of them)."""
    settings = {k: v for k, v in meta.items() if k not in INTEGRITY_IGNORE}
    return {"sha256": _digest(_canonical(settings)),
            "fields": {k: _digest(f"{k}={_canonical(v)}", 12) for k, v in settings.items()}}


def verify_settings(meta: dict, where: str) -> str | None:
    """The settings digest of a sidecar after checking it against its fields; None for files written before
    digests existed. A mismatch is an error naming the edited (or added/removed) field."""
    recorded = meta.get("integrity")
    if recorded is None:
        return None
    if not (isinstance(recorded, dict) and isinstance(recorded.get("fields"), dict)):
        raise CertifyNetError(f"{where}: its 'integrity' entry was edited (expected the digests certifynet wrote)")
    now = settings_integrity(meta)
    fields = recorded["fields"]
    for key in sorted(set(fields) | set(now["fields"])):
        if fields.get(key) != now["fields"].get(key):
            change = "added" if key not in fields else "removed" if key not in now["fields"] else "changed"
            raise CertifyNetError(f"{where} was edited after the run: field '{key}' was {change} "
                                  f"(it no longer matches the digest recorded with the data)")
    if recorded.get("sha256") != now["sha256"]:
        raise CertifyNetError(f"{where}: its settings digest was edited")
    return now["sha256"]


def row_check(settings_sha256: str, values) -> str:
    """check = first 16 hex digits of SHA-256(settings digest, the row's fields as written)."""
    return _digest("\x1f".join([settings_sha256, *values]), 16)


# ---------------------------------------------------------------- one writer per file
class WriterLock:
    """Exclusive advisory lock `<path>.lock` (fcntl.flock), holding the writer's pid and host.

    Acquire opens the lock file, locks it without waiting, and checks that the path still names the locked
    inode (a releasing writer unlinks it), retrying otherwise. A held lock is an error naming its holder.
    """

    def __init__(self, path: str):
        self.path = path + LOCK_SUFFIX
        self._fd = None

    def acquire(self, target: str) -> "WriterLock":
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


# ---------------------------------------------------------------- reading
def _format(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def _split_complete(data: bytes):
    """(complete text, bytes after the last complete line): what follows the last newline, and trailing NUL
    bytes (a crash can leave a zero-filled tail), is incomplete."""
    body = data.rstrip(b"\x00")
    cut = body.rfind(b"\n") + 1
    return body[:cut], data[cut:]


def parse_log(path: str, data: bytes, sep: str | None = None, *, expect_header=None):
    """(header, rows as dicts, complete byte count, torn tail) of a log's bytes; damaged complete lines are
    errors naming the line. `idx` must be a unique integer where the header has it."""
    complete, tail = _split_complete(data)
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError:
        raise CertifyNetError(f"'{path}' is not a text log (not UTF-8): was another file given?") from None
    lines = text.splitlines()
    if not lines:
        return None, [], len(complete), tail
    sep = sep or ("\t" if "\t" in lines[0] else ",")
    reader = csv.reader(lines, delimiter=sep)
    header = next(reader)
    if expect_header is not None and header != list(expect_header):
        raise CertifyNetError(f"'{path}' has columns {header}, expected {list(expect_header)}; "
                              f"use another output path")
    rows, seen = [], {}
    for lineno, values in enumerate(reader, start=2):
        if len(values) != len(header):
            raise CertifyNetError(f"'{path}' line {lineno} is damaged: {len(values)} fields, expected {len(header)}")
        row = dict(zip(header, values))
        if "idx" in row:
            try:
                idx = int(row["idx"])
            except ValueError:
                raise CertifyNetError(f"'{path}' line {lineno}: idx {row['idx']!r} is not an integer") from None
            if idx in seen:
                raise CertifyNetError(f"'{path}' line {lineno}: idx {idx} is already on line {seen[idx]} "
                                      f"(each input must appear once)")
            seen[idx] = lineno
        rows.append(row)
    return header, rows, len(complete), tail


def read_rows(path: str, sep: str | None = None, allow_torn: bool = False):
    """Rows of a finished log as (header, list of dicts of strings); sep sniffed from the header.

    An incomplete last row (an interrupted run) is an error unless `allow_torn`, which drops it."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"file '{path}' not found")
    with open(path, "rb") as f:
        data = f.read()
    header, rows, _, tail = parse_log(path, data, sep)
    if header is None:
        raise CertifyNetError(f"'{path}' is empty")
    if tail.strip(b"\x00") and not allow_torn:
        raise CertifyNetError(f"the last row of '{path}' is incomplete (the run that wrote it was interrupted); "
                              f"rerun its command to finish it")
    return header, rows


# ---------------------------------------------------------------- writing
class RowLog:
    """Append rows (dicts) to a delimited file, flushing each; single-writer, resume-aware (module doc).

    `done` holds the keys already in the file: the `idx` column (or the first column, e.g. a training
    log's `epoch`). `integrity=True` adds the `check` column and the sidecar's settings digest (counts files).
    `sidecar`: the metadata file when it is not `<path>.meta.json` (a training run's `log.meta.json`).
    """

    def __init__(self, path: str, columns, meta: dict, sep: str = "\t", integrity: bool = False,
                 sidecar: str | None = None):
        check_output_file(path)
        self.path, self.sep, self.integrity = path, sep, integrity
        self.sidecar = sidecar or meta_path(path)
        self.columns = list(columns) + ([CHECK_COLUMN] if integrity else [])
        self.key = "idx" if "idx" in self.columns else self.columns[0]
        meta = {**meta, "columns": self.columns, "version": __version__,
                "created": datetime.datetime.now().isoformat(timespec="seconds")}
        meta.pop("integrity", None)
        if integrity:
            meta["integrity"] = settings_integrity(meta)
        self.meta, self.done, self.written, self._f = meta, set(), 0, None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = WriterLock(path).acquire(path)
        try:
            if os.path.isfile(path) and os.path.getsize(path) > 0:
                self._open_existing()
            else:
                write_meta(path, meta, self.sidecar)
                self._f = open(path, "w", newline="", encoding="utf-8")
                self._write_line(self.columns)
        except BaseException:
            self._lock.release()
            raise

    def _open_existing(self):
        """Resume a log of ours with the same settings; refuse anything else untouched."""
        old = read_meta(self.path, False, self.sidecar) if os.path.isfile(self.sidecar) else None
        if old is None:
            raise CertifyNetError(f"'{self.path}' exists and has no sidecar {os.path.basename(self.sidecar)}: "
                                  f"it is not a log this run can resume; give another output path "
                                  f"(or delete the file if it is yours)")
        kind = self.meta.get("kind")
        if old.get("kind") != kind:
            raise CertifyNetError(f"'{self.path}' is a {old.get('kind') or 'file of unknown kind'}, not a {kind}; "
                                  f"give another output path")
        key = meta_conflict(old, self.meta, VOLATILE_META | {"integrity"})
        if key:
            raise CertifyNetError(f"'{self.path}' exists and was made with a different {key} "
                                  f"({old.get(key)!r} vs {self.meta.get(key)!r}); use another output path or delete it")
        with open(self.path, "rb") as f:
            data = f.read()
        header, rows, size, tail = parse_log(self.path, data, self.sep, expect_header=self.columns)
        if tail:
            print(f"warning: '{self.path}': dropped {len(tail)} bytes of a half-written last row "
                  f"(the previous run was interrupted)", file=sys.stderr)
            with open(self.path, "rb+") as f:
                f.truncate(size)
        try:
            self.done = {int(r[self.key]) for r in rows}
        except ValueError:
            raise CertifyNetError(f"'{self.path}': a {self.key} value is not an integer; was the file edited?") from None
        self._f = open(self.path, "a", newline="", encoding="utf-8")
        if header is None:
            self._write_line(self.columns)

    def _write_line(self, values):
        self._f.write(self.sep.join(values) + "\n")
        self._f.flush()

    def write(self, row: dict) -> None:
        idx = int(row["idx"] if "idx" in row else row[self.key])
        if idx in self.done:
            raise CertifyNetError(f"internal error: idx {idx} written twice to '{self.path}'")
        values = [_format(row.get(c, "")) for c in self.columns if c != CHECK_COLUMN]
        if self.integrity:
            values.append(row_check(self.meta["integrity"]["sha256"], values))
        self._write_line(values)
        self.done.add(idx)
        self.written += 1

    def close(self, failed: bool = False):
        if self._f is None:
            return
        self._f.close()
        self._f = None
        if failed and not self.done:  # nothing but a header: leave no file behind
            for p in (self.path, self.sidecar):
                if os.path.exists(p):
                    os.unlink(p)
        self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(failed=exc_type is not None)


# ---------------------------------------------------------------- which inputs a run covers
def _env_int(env, name):
    try:
        return int(env[name])
    except ValueError:
        raise CertifyNetError(f"{name}={env[name]!r} is not an integer") from None


def parse_shard(text: str | None, env=os.environ):
    """'i/n' → (i, n) with 0 ≤ i < n. Default: (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP
    of SLURM_ARRAY_TASK_COUNT when set (so --array=1-16 and --array=0-30:2 work too), else (0, 1)."""
    if text is None:
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            i = _env_int(env, "SLURM_ARRAY_TASK_ID") - (_env_int(env, "SLURM_ARRAY_TASK_MIN")
                                                        if env.get("SLURM_ARRAY_TASK_MIN") else 0)
            step = _env_int(env, "SLURM_ARRAY_TASK_STEP") if env.get("SLURM_ARRAY_TASK_STEP") else 1
            if step < 1 or i % step:
                raise CertifyNetError(f"SLURM_ARRAY_TASK_ID {env['SLURM_ARRAY_TASK_ID']} is off the array's step {step}; "
                                      "use a plain range such as --array=0-15, or pass --shard i/n")
            return _checked_shard(i // step, _env_int(env, "SLURM_ARRAY_TASK_COUNT"), "SLURM_ARRAY_TASK_ID")
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


def check_selection(start: int = 0, end: int | None = None, skip: int = 1, max_count: int | None = None,
                    n_total: int | None = None) -> None:
    """One-line errors naming the flag at fault for --start/--end/--skip/--max (against the dataset size)."""
    if start < 0:
        raise CertifyNetError(f"--start must be >= 0, got {start}")
    if end is not None and end <= start:
        raise CertifyNetError(f"--end ({end}) must be greater than --start ({start})")
    if skip < 1:
        raise CertifyNetError(f"--skip must be >= 1, got {skip}")
    if max_count is not None and max_count < 1:
        raise CertifyNetError(f"--max must be >= 1, got {max_count}")
    if n_total is not None and start >= n_total:
        raise CertifyNetError(f"--start {start} is beyond the last input (the split has {n_total})")


def select_indices(n_total: int, start: int = 0, end: int | None = None, skip: int = 1,
                   max_count: int | None = None, shard=(0, 1)):
    """Inputs start, start+skip, ... < end (at most max_count), then the contiguous part `shard` = (i, n)."""
    check_selection(start, end, skip, max_count, n_total if n_total > 0 else None)
    end = n_total if end is None else min(end, n_total)
    idx = list(range(start, end, skip))
    return shard_part(idx if max_count is None else idx[:max_count], shard)


def shard_part(items, shard):
    """The i-th of n contiguous parts of `items` (sizes differ by at most one)."""
    i, n = shard
    return items[len(items) * i // n: len(items) * (i + 1) // n]


def select_rows(rows, start: int = 0, end: int | None = None, skip: int = 1, max_count: int | None = None):
    """Rows (in file order) with start ≤ idx < end, then every skip-th of them, then at most max_count."""
    check_selection(start, end, skip, max_count)
    picked = [r for r in rows if int(r["idx"]) >= start and (end is None or int(r["idx"]) < end)][::skip]
    return picked if max_count is None else picked[:max_count]


def shard_path(path: str, shard) -> str:
    """`results/x.tsv` → `results/x.shard2of4.tsv` for shard (2, 4); unchanged for a single shard."""
    i, n = shard
    if n == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.shard{i}of{n}{ext}"

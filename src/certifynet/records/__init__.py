"""Append-only row logs with a JSON metadata sidecar: one writer at a time, resumable, accident-evident
(forgery-evident with a key).

A log is a delimited text file with a header line; `<file>.meta.json` names what produced it (model, σ, k,
N, α, seed, ...). Guarantees, each with the class or function that keeps it:

- **Nothing that is not ours is touched** (`RowLog`). An existing output must be a log of the same kind
  with a sidecar that agrees with the new run (every non-volatile field, `sidecar.meta_conflict`) and the
  same header; anything else (a checkpoint given as the output by mistake, a sidecar, a counts file where
  a certify log is expected, a file without its sidecar) is refused before a single byte changes.
- **One writer** (`WriterLock`). An exclusive `fcntl.flock` on `<file>.lock` is held while the log is open;
  a second writer is refused naming the holder's pid (`writer_active` tells readers). The kernel releases
  the lock when a process dies (kill -9, preemption), so a rerun resumes at once; the lock file is removed
  on a clean close.
- **Resume after any crash damage** (`RowLog`, `parse_log`). Each row is written and flushed at once. On
  reopen, what follows the last complete row (half a row, NUL bytes) is cut off with a warning; a damaged
  row in the middle is an error naming its line; the indices already present are skipped.
- **Integrity that says what it is** (counts files, `integrity=True`; `records.integrity`). The sidecar
  records a digest of its settings and one per field, every row carries `check` = digest(settings, row),
  and a completed run records its row count and a digest over its rows in order (`complete`), so an edited
  field or row, and a deleted, reordered or appended row, are detected; counts without digests are refused.
  Plain SHA-256 by default: **accident-evident** only (a forger can recompute it). With a secret key file
  in `$CERTIFYNET_KEY_FILE` the digests are HMAC-SHA-256: **forgery-evident** for whoever lacks the key.
- **A counts file is certified only when every check passes** (`read_counts`): not being written, a valid
  sidecar, matching columns, no incomplete row, every row within its sidecar's N, N0 and classes, the
  digests matching; a file without completion record (interrupted, a shard) is read with a warning.
- **Whole files are replaced atomically** (`atomic_write`): readers see the old file or the new one.
- **Shards cover the selection exactly once** (`select_indices`, `shard_part`); merging them
  (`records.merge.merge_files`) writes nothing while an index is missing, unless told to.
- A run that fails before writing any row leaves no file behind (`RowLog.close`).

Modules: `files` (atomic writes), `sidecar` (metadata), `integrity` (digests, key, completion record),
`lock`, `rowlog`, `counts` (reading counts files), `selection` (which inputs a run or shard covers),
`merge` (shards → one file).
Torch-free: used by sampling (counts files) and certification (logs).
"""
from __future__ import annotations

from certifynet.records.counts import read_counts, validate_counts_meta, validate_counts_rows
from certifynet.records.files import atomic_write
from certifynet.records.integrity import KEY_ENV, Digester, load_key
from certifynet.records.lock import WriterLock, writer_active
from certifynet.records.rowlog import RowLog, parse_log, read_rows
from certifynet.records.selection import (
    check_selection,
    parse_shard,
    select_indices,
    select_rows,
    shard_part,
    shard_path,
)
from certifynet.records.sidecar import (
    CHECK_COLUMN,
    INTEGRITY_IGNORE,
    VOLATILE_META,
    meta_conflict,
    meta_path,
    read_meta,
    row_check,
    settings_integrity,
    verify_settings,
    write_meta,
)

__all__ = [
    "CHECK_COLUMN", "INTEGRITY_IGNORE", "KEY_ENV", "Digester", "RowLog", "VOLATILE_META", "WriterLock",
    "atomic_write", "check_selection", "load_key", "meta_conflict", "meta_path", "parse_log", "parse_shard",
    "read_counts", "read_meta", "read_rows", "row_check", "select_indices", "select_rows", "settings_integrity",
    "shard_part", "shard_path", "validate_counts_meta", "validate_counts_rows", "verify_settings", "write_meta",
    "writer_active",
]

"""Append-only row logs (`RowLog`) and how they are read back (`parse_log`, `read_rows`).

A log is a delimited text file with a header line and a JSON sidecar (`records.sidecar`). Each row is
written and flushed at once; what follows the last complete line after a crash (half a row, NUL bytes)
is incomplete and is cut off when the log is resumed. A counts file (`integrity=True`) gets its digests
and, when a clean close finds every input of its selection written, its completion record
(`records.integrity`); appending to a completed file first removes the record.
"""
from __future__ import annotations

import csv
import datetime
import math
import os

from certifynet._version import __version__
from certifynet.errors import CertifyNetError, warn
from certifynet.paths import check_output_file
from certifynet.records.guard import check_file, check_linked
from certifynet.records.integrity import (
    CHECK_COLUMN,
    VOLATILE_META,
    Digester,
    completion_record,
    row_check,
    settings_integrity,
)
from certifynet.records.lock import WriterLock
from certifynet.records.selection import select_indices
from certifynet.records.sidecar import meta_path, read_meta, write_meta


# ---------------------------------------------------------------- reading
def _format(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def _split_complete(data: bytes) -> tuple[bytes, bytes]:
    """(complete text, bytes after the last complete line): what follows the last newline, and trailing NUL
    bytes (a crash can leave a zero-filled tail), is incomplete."""
    body = data.rstrip(b"\x00")
    cut = body.rfind(b"\n") + 1
    return body[:cut], data[cut:]


def _check_idx(path: str, row: dict, lineno: int, seen: dict) -> None:
    """`idx` must be an integer not seen on an earlier line."""
    try:
        idx = int(row["idx"])
    except ValueError:
        raise CertifyNetError(f"'{path}' line {lineno}: idx {row['idx']!r} is not an integer") from None
    if idx in seen:
        raise CertifyNetError(f"'{path}' line {lineno}: idx {idx} is already on line {seen[idx]} "
                              f"(each input must appear once)")
    seen[idx] = lineno


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
            _check_idx(path, row, lineno, seen)
        rows.append(row)
    return header, rows, len(complete), tail


def read_rows(path: str, sep: str | None = None, allow_torn: bool = False) -> tuple[list[str], list[dict]]:
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
def _keyed(integrity: dict) -> str:
    key_id = integrity.get("key_id")
    return f"with the key {key_id}" if key_id else "without a key"


def _selection_written(meta: dict, done: set) -> bool:
    """Every index of the run's selection (n_inputs, start, end, skip, max, shard) is in `done`; False when the
    sidecar cannot tell (no n_inputs)."""
    if meta.get("n_inputs") is None:
        return False
    try:
        wanted = select_indices(int(meta["n_inputs"]), meta.get("start") or 0, meta.get("end"),
                                meta.get("skip") or 1, meta.get("max"), tuple(meta.get("shard") or (0, 1)))
    except (CertifyNetError, TypeError, ValueError):
        return False
    return set(wanted) <= done


class RowLog:
    """Append rows (dicts) to a delimited file, flushing each; single-writer, resume-aware (`records` doc).

    `done` holds the keys already in the file: the `idx` column (or the first column, e.g. a training
    log's `epoch`). `integrity=True` (counts files) adds the `check` column, the sidecar's settings digest
    (keyed when `$CERTIFYNET_KEY_FILE` is set) and, on a clean close with the selection written, the
    completion record. `sidecar`: the metadata file when it is not `<path>.meta.json` (a training run's
    `log.meta.json`).
    """

    def __init__(self, path: str, columns, meta: dict, sep: str = "\t", integrity: bool = False,
                 sidecar: str | None = None):
        check_output_file(path)
        self.sidecar = sidecar or meta_path(path)
        self.path, self.sep, self.integrity = path, sep, integrity
        self.digester = Digester.from_env() if integrity else None  # a bad key file: refused before any file
        self.columns = list(columns) + ([CHECK_COLUMN] if integrity else [])
        self.key = "idx" if "idx" in self.columns else self.columns[0]
        meta = {**meta, "columns": self.columns, "version": __version__,
                "created": datetime.datetime.now().isoformat(timespec="seconds")}
        meta.pop("integrity", None)
        meta.pop("complete", None)
        if integrity:
            meta["integrity"] = settings_integrity(meta, self.digester)
        self.meta, self.done, self.written, self._f = meta, set(), 0, None
        self._drop_completion = False
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

    def _check_same_run(self) -> None:
        """The existing file must be ours (a sidecar), of the same kind and settings (`guard.check_file`), and
        written with the same key."""
        old = check_file(self.path, self.meta, sidecar=self.sidecar, ignore=VOLATILE_META | {"integrity", "complete"})
        if self.integrity:
            was, now = old.get("integrity") or {}, self.meta["integrity"]
            if (was.get("scheme", "sha256"), was.get("key_id")) != (now["scheme"], now.get("key_id")):
                raise CertifyNetError(f"'{self.path}' was written {_keyed(was)}, this run would write {_keyed(now)} "
                                      f"($CERTIFYNET_KEY_FILE differs); resume it with the key it was started with")
        self._drop_completion = "complete" in old

    def _open_existing(self) -> None:
        """Resume a log of ours with the same settings; refuse anything else untouched.

        A torn last row is cut off with a warning (not a log line): the file is changed and the bytes of an
        interrupted row are discarded; its input is computed again."""
        self._check_same_run()
        with open(self.path, "rb") as f:
            data = f.read()
        header, rows, size, tail = parse_log(self.path, data, self.sep, expect_header=self.columns)
        if tail:
            warn(f"'{self.path}': dropped {len(tail)} bytes of a half-written last row "
                 f"(the previous run was interrupted)", stacklevel=3)
            with open(self.path, "rb+") as f:
                f.truncate(size)
        try:
            self.done = {int(r[self.key]) for r in rows}
        except ValueError:
            raise CertifyNetError(f"'{self.path}': a {self.key} value is not an integer; "
                                  f"was the file edited?") from None
        self._f = open(self.path, "a", newline="", encoding="utf-8")
        if header is None:
            self._write_line(self.columns)

    def _write_line(self, values) -> None:
        self._f.write(self.sep.join(values) + "\n")
        self._f.flush()
        check_linked(self._f, self.path)  # its folder deleted mid-run: an error, not rows lost in silence

    def write(self, row: dict) -> None:
        idx = int(row["idx"] if "idx" in row else row[self.key])
        if idx in self.done:
            raise CertifyNetError(f"internal error: idx {idx} written twice to '{self.path}'")
        values = [_format(row.get(c, "")) for c in self.columns if c != CHECK_COLUMN]
        if self.integrity:
            values.append(row_check(self.meta["integrity"]["sha256"], values, self.digester))
        if self._drop_completion:  # rows follow the completed ones: the old record no longer describes the file
            old = read_meta(self.path, True, self.sidecar)
            old.pop("complete", None)
            write_meta(self.path, old, self.sidecar)
            self._drop_completion = False
        self._write_line(values)
        self.done.add(idx)
        self.written += 1

    def close(self, failed: bool = False) -> None:
        if self._f is None:
            return
        self._f.close()
        self._f = None
        try:
            if failed and not self.done:  # nothing but a header: leave no file behind
                for p in (self.path, self.sidecar):
                    if os.path.exists(p):
                        os.unlink(p)
            elif not failed and self.integrity and _selection_written(self.meta, self.done):
                self._record_completion()
        finally:
            self._lock.release()

    def _record_completion(self) -> None:
        """Add the completion record (row count, digest over the rows in order) to the sidecar on disk."""
        with open(self.path, "rb") as f:
            _, rows, _, _ = parse_log(self.path, f.read(), self.sep)
        meta = read_meta(self.path, True, self.sidecar)
        meta["complete"] = completion_record(meta, [r[CHECK_COLUMN] for r in rows], self.digester)
        write_meta(self.path, meta, self.sidecar)

    def __enter__(self) -> RowLog:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)

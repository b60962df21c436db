"""Merge the shard outputs of one run (counts CSVs, certify or predict logs) into one file, by idx.

Inputs must agree on every non-volatile metadata field (model, σ, N, α, seed, method, columns, ...).
The expected index set is rebuilt from each input's sidecar: the full (unsharded) selection of its run
(`n_inputs`, start, end, skip, max through `records.select_indices`), or the `indices` a previous merge
stored. Missing indices are an error unless `allow_missing`: nothing is written and the inputs are never
touched, so rerunning the failed shard (it resumes) and merging again loses nothing. Duplicate rows that
agree on every column but `time` (numbers by value: 0.5 = 0.50) are dropped with a warning; conflicting
duplicates are an error.
The output is held (`WriterLock`) from its check to its last byte, so two merges into one file cannot
interleave; an existing output must be an earlier merge of the same run (`records.guard.check_replace`),
unless `force`, which records what it replaced in the new sidecar (`forced`).
Counts files (inputs with digests, `records.integrity`) are verified first (settings, row checks, each
shard's completion record), and the merged file gets its own completion record over its rows.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from certifynet._version import __version__
from certifynet.errors import CertifyNetError
from certifynet.errors import warn as _warn
from certifynet.paths import check_output_file
from certifynet.records.files import atomic_write
from certifynet.records.guard import check_replace, same_value
from certifynet.records.integrity import CHECK_COLUMN, completion_record, file_digester, verify_counts_digests
from certifynet.records.lock import WriterLock, writer_active
from certifynet.records.rowlog import read_rows
from certifynet.records.selection import select_indices
from certifynet.records.sidecar import VOLATILE_META, meta_conflict, meta_path, read_meta

# Also ignored when comparing inputs: bookkeeping of earlier merges (so merged files can be merged again).
MERGE_IGNORE = VOLATILE_META | {"merged_from", "missing", "complete"}
# Also ignored when comparing an earlier merge output with this one: what the merge itself decides.
OUTPUT_IGNORE = MERGE_IGNORE | {"columns", "forced", "integrity"}
MERGE_OUTPUT = "the output of a merge"
# Columns that may differ between two computations of the same row.
TIMING_COLUMNS = {"time"}
# Receives each warning: a message, or a CertifyNetError whose fields name arguments (default: errors.warn).
Warn = Callable[["str | CertifyNetError"], object]


@dataclass
class MergeReport:
    out: str
    inputs: list
    rows: int = 0
    duplicates: int = 0
    missing: list = field(default_factory=list)
    expected_known: bool = True  # False: some input had no dataset size, only idx gaps were checked


# ---------------------------------------------------------------- index sets as compact ranges
def to_ranges(indices) -> list[list[int]]:
    """Sorted ints → [[start, stop, step], ...] (Python range arguments), greedily compressed."""
    xs, out = sorted(set(indices)), []
    i = 0
    while i < len(xs):
        if i + 1 == len(xs):
            out.append([xs[i], xs[i] + 1, 1])
            break
        step, j = xs[i + 1] - xs[i], i + 1
        while j + 1 < len(xs) and xs[j + 1] - xs[j] == step:
            j += 1
        if j == i + 1 and step > 1:  # two lone points: keep the first alone, the second may start a run
            out.append([xs[i], xs[i] + 1, 1])
            i += 1
            continue
        out.append([xs[i], xs[j] + 1, step])
        i = j + 1
    return out


def from_ranges(ranges) -> set[int]:
    return {i for r in ranges for i in range(*r)}


def describe(indices, limit: int = 8) -> str:
    """'0-9, 20, 40-80 step 20, ...' for messages."""
    parts = []
    for a, b, s in to_ranges(indices):
        last = b - 1 if s == 1 else a + (b - 1 - a) // s * s
        parts.append(str(a) if a == last else f"{a}-{last}" + (f" step {s}" if s > 1 else ""))
    return ", ".join(parts[:limit]) + (f", ... ({len(parts) - limit} more ranges)" if len(parts) > limit else "")


# ---------------------------------------------------------------- what an input says it covers
def run_selection(meta: dict, shard=(0, 1)) -> set[int] | None:
    """Indices the input's run selects (its shard of it with `shard`); None when its metadata can't tell."""
    if meta.get("indices") is not None:
        return from_ranges(meta["indices"]) if shard == (0, 1) else None
    n_total = meta.get("n_inputs")
    if n_total is None:
        n_total = meta.get("end")  # `end` bounds the selection when the dataset size is unknown
    if n_total is None:
        return None
    try:
        return set(select_indices(int(n_total), meta.get("start") or 0, meta.get("end"), meta.get("skip") or 1,
                                  meta.get("max"), tuple(shard)))
    except CertifyNetError:
        return None


def _shard_of(meta: dict) -> tuple[int, int]:
    return tuple(meta.get("shard") or (0, 1))


def _glob_inputs(pat: str, out: str | None, warn: Warn | None) -> list[str]:
    """The files `pat` matches (sidecars, temp files and logs skipped; OUT dropped with a warning)."""
    found = [p for p in sorted(glob.glob(pat)) if not p.endswith((".meta.json", ".tmp", ".log"))]
    if not found:
        raise CertifyNetError(f"no files match '{pat}'")
    out_real = os.path.realpath(out) if out else None
    if out_real and any(os.path.realpath(p) == out_real for p in found):
        found = [p for p in found if os.path.realpath(p) != out_real]
        warn and warn(f"'{out}' matches '{pat}'; it is the output, not an input")
    return found


def _named_input(path: str, out: str | None) -> list[str]:
    """[path] for an input named as a file: it must exist and must not be OUT."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"file '{path}' not found")
    if out and os.path.realpath(path) == os.path.realpath(out):
        raise CertifyNetError(f"'{path}' is both the output and an input; choose another OUT")
    return [path]


def expand_inputs(patterns, out: str | None = None, warn: Warn | None = None) -> list[str]:
    """Paths from file names and glob patterns (sidecars skipped); OUT is dropped from glob matches."""
    paths, seen = [], set()
    for pat in patterns:
        found = _glob_inputs(pat, out, warn) if any(c in pat for c in "*?[") else _named_input(pat, out)
        for p in found:
            if os.path.realpath(p) not in seen:
                seen.add(os.path.realpath(p))
                paths.append(p)
    if not paths:
        raise CertifyNetError("no input files to merge")
    return paths


def _sniff_sep(path: str) -> str:
    with open(path, newline="") as f:
        return "\t" if "\t" in f.readline() else ","


# ---------------------------------------------------------------- the merge
def merge_files(out: str, inputs, allow_missing: bool = False, force: bool = False, warn: Warn = _warn) -> MergeReport:
    """Merge shard files `inputs` (paths or glob patterns) into `out` (+ sidecar); see the module doc.

    `warn` receives each warning (default `certifynet.errors.warn`; a message or a CertifyNetError)."""
    check_output_file(out, what="OUT")
    paths = expand_inputs(inputs, out, warn)
    metas = _input_metas(paths)
    check_merge_output(out, metas[0], force)
    lock = WriterLock(out).acquire(out)
    try:
        forced = check_merge_output(out, metas[0], force)  # again, under the lock
        sep = _sniff_sep(paths[0])
        report = MergeReport(out, paths)
        header, by_idx, file_idx = _collect_rows(paths, sep, report, warn, metas)
        expected = _check_coverage(paths, metas, file_idx, set(by_idx), report, warn)
        if report.missing and not allow_missing:
            raise CertifyNetError(f"{len(report.missing)} of {len(expected)} inputs missing "
                                  f"(idx {describe(report.missing, 4)}); nothing written. Rerun the failed shards "
                                  "with the same command (they resume), or pass {allow_missing}", "allow_missing")
        if report.missing:
            warn(CertifyNetError(f"writing {out} without {len(report.missing)} inputs ({{allow_missing}})",
                                 "allow_missing"))
        meta = _merged_meta(metas, paths, header, expected, report.missing)
        if forced:
            meta["forced"] = forced  # bookkeeping, outside the settings digest (integrity.INTEGRITY_IGNORE)
        rows = [by_idx[i] for i in sorted(by_idx)]
        if "integrity" in meta:  # a counts file: its own completion record, over the merged rows in order
            meta["complete"] = completion_record(meta, [r[CHECK_COLUMN] for r in rows],
                                                 file_digester(meta, f"sidecar '{paths[0]}.meta.json'"))
        _write(out, sep, header, rows, meta)
    finally:
        lock.release()
    report.rows = len(by_idx)
    return report


def check_merge_output(out: str, meta: dict | None, force: bool = False) -> dict | None:
    """An existing OUT must be an earlier merge of the run whose sidecar is `meta` (the first input's; None
    before the run is known: any merge output); else it is refused, unless `force`: then the record of what
    is replaced (for the new sidecar's `forced`)."""
    return check_replace(out, meta, another="OUT", what=MERGE_OUTPUT, ours=lambda old: "merged_from" in old,
                         ignore=OUTPUT_IGNORE | {"shard"}, force=force)


def _input_metas(paths: list[str]) -> list[dict]:
    """The inputs' sidecars, after checking that no input is being written and that all are of one run."""
    for p in paths:
        holder = writer_active(p)
        if holder:
            raise CertifyNetError(f"'{p}' is still being written by {holder}; merge when its shard has finished")
    metas = [read_meta(p) for p in paths]
    for p, m in zip(paths[1:], metas[1:]):
        key = meta_conflict(metas[0], m, MERGE_IGNORE)
        if key:
            raise CertifyNetError(f"'{paths[0]}' and '{p}' disagree on {key} "
                                  f"({metas[0].get(key)!r} vs {m.get(key)!r}); they are not shards of one run")
    return metas


def _row_idx(path: str, row: dict, lineno: int) -> int:
    try:
        return int(row["idx"])
    except ValueError:
        raise CertifyNetError(f"'{path}' line {lineno}: idx '{row['idx']}' is not an integer") from None


def _verify_digests(path: str, meta: dict, header: list[str], rows: list[dict]) -> None:
    """An input that is a counts file (digests, or kind counts) must pass every digest check, so a tampered shard
    is refused instead of blessed by the merge's completion record (its incomplete-file warning is moot)."""
    if "integrity" in meta or meta.get("kind") == "counts":
        verify_counts_digests(meta, header, rows, path)


def _collect_rows(paths: list[str], sep: str, report: MergeReport, warn: Warn, metas=None):
    """(header, {idx: row}, {path: its idx set}) over all inputs, each input's digests checked first when
    `metas` are given; duplicates that agree on every column but TIMING_COLUMNS are kept once (counted in
    report.duplicates), conflicting ones are an error."""
    header, by_idx, origin, file_idx = None, {}, {}, {}
    for k, p in enumerate(paths):
        cols, rows = read_rows(p, sep)
        if metas is not None:
            _verify_digests(p, metas[k], cols, rows)
        if header is None:
            header = cols
            if "idx" not in header:
                raise CertifyNetError(f"'{p}' has no idx column")
        elif cols != header:
            raise CertifyNetError(f"'{paths[0]}' and '{p}' have different columns ({header} vs {cols})")
        compared = [c for c in header if c not in TIMING_COLUMNS]
        for lineno, r in enumerate(rows, start=2):
            idx = _row_idx(p, r, lineno)
            file_idx.setdefault(p, set()).add(idx)
            if idx not in by_idx:
                by_idx[idx], origin[idx] = r, p
                continue
            old = by_idx[idx]
            diff = next((c for c in compared if not same_value(old[c], r[c])), None)  # '0.5' == '0.50'
            if diff:
                raise CertifyNetError(f"idx {idx} is in '{origin[idx]}' and '{p}' with different {diff} "
                                      f"({old[diff]!r} vs {r[diff]!r})")
            if not report.duplicates:
                warn(f"idx {idx} is in both '{origin[idx]}' and '{p}' (same values); keeping one copy")
            report.duplicates += 1
    if report.duplicates > 1:
        warn(f"dropped {report.duplicates} duplicate rows in all")
    return header, by_idx, file_idx


def _merged_meta(metas: list[dict], paths: list[str], header: list[str], expected: set[int], missing) -> dict:
    """The first input's sidecar without its shard, with the merge's bookkeeping (inputs, indices, missing)."""
    meta = {k: v for k, v in metas[0].items() if k not in ("shard", "missing", "complete")}
    for k in ("start", "end"):  # volatile: may legitimately differ between inputs
        if len({json.dumps(m.get(k)) for m in metas}) > 1:
            meta[k] = None
    meta.update(merged_from=[os.path.abspath(p) for p in paths], indices=to_ranges(expected),
                missing=to_ranges(missing), columns=header, version=__version__,
                command=" ".join(sys.argv), created=datetime.datetime.now().isoformat(timespec="seconds"))
    return meta


def _check_coverage(paths, metas, file_idx, got, report, warn):
    """Expected index set (union over inputs); fills report.missing and warns where each gap comes from."""
    expected, shards_seen = set(), {}
    for p, m in zip(paths, metas):
        full = run_selection(m)
        if full is None:  # no dataset size: only gaps inside this file's idx range are visible
            report.expected_known = False
            own = file_idx.get(p)
            full = set(range(min(own), max(own) + 1, m.get("skip") or 1)) if own else set()
        expected |= full
        i, n = _shard_of(m)
        key = json.dumps([m.get(k) for k in ("n_inputs", "start", "end", "skip", "max", "indices")] + [n])
        shards_seen.setdefault(key, (m, set()))[1].add(i)
    report.missing = sorted(expected - got)
    if report.missing:
        _explain_gaps(paths, metas, shards_seen, got, report, warn)
    return expected


def _explain_gaps(paths, metas, shards_seen, got, report, warn) -> None:
    """Warn about each shard absent from the inputs and each input that lacks some of its own rows."""
    for m, seen in shards_seen.values():
        n = _shard_of(m)[1]
        for i in sorted(set(range(n)) - seen):
            part = run_selection(m, (i, n)) or set()
            if part - got:
                warn(f"shard {i}/{n} is not among the inputs ({len(part)} inputs: {describe(part)})")
    for p, m in zip(paths, metas):
        own = run_selection(m, _shard_of(m))
        lack = sorted((own or set()) - got)
        if lack:
            warn(f"'{p}' lacks {len(lack)} of its {len(own)} inputs ({describe(lack)}): was it stopped? "
                 "rerun its command to resume it")
    if not report.expected_known:
        warn(f"missing idx {describe(report.missing)} (some inputs have no dataset size in their metadata: "
             "only gaps inside the idx range were checked)")


def _write(out: str, sep: str, header: list[str], rows: list[dict], meta: dict) -> None:
    """Write the data, then its sidecar, each atomically (temp file in the same folder, fsync, rename)."""
    def data(f):
        f.write(sep.join(header) + "\n")
        for r in rows:
            f.write(sep.join(r[c] for c in header) + "\n")

    atomic_write(out, data)
    atomic_write(meta_path(out), lambda f: json.dump(meta, f, indent=1, sort_keys=True))

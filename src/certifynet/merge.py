"""Merge the shard outputs of one run (counts CSVs, certify or predict logs) into one file, by idx.

Inputs must agree on every non-volatile metadata field (model, σ, N, α, seed, method, columns, ...).
The expected index set is rebuilt from each input's sidecar: the full (unsharded) selection of its run
(`n_inputs`, start, end, skip, max through `records.select_indices`), or the `indices` a previous merge
stored. Missing indices are an error unless `allow_missing`: nothing is written and the inputs are never
touched, so rerunning the failed shard (it resumes) and merging again loses nothing. Duplicate rows that
agree on every column but `time` are dropped with a warning; conflicting duplicates are an error.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import sys
from dataclasses import dataclass, field

from certifynet._version import __version__
from certifynet.errors import CertifyNetError
from certifynet.paths import check_output_file
from certifynet.records import (VOLATILE_META, meta_conflict, meta_path, read_meta, read_rows, select_indices,
                                writer_active)

# Also ignored when comparing inputs: bookkeeping of earlier merges (so merged files can be merged again).
MERGE_IGNORE = VOLATILE_META | {"merged_from", "missing"}
# Columns that may differ between two computations of the same row.
TIMING_COLUMNS = {"time"}


@dataclass
class MergeReport:
    out: str
    inputs: list
    rows: int = 0
    duplicates: int = 0
    missing: list = field(default_factory=list)
    expected_known: bool = True  # False: some input had no dataset size, only idx gaps were checked


# ---------------------------------------------------------------- index sets as compact ranges
def to_ranges(indices):
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


def from_ranges(ranges):
    return {i for r in ranges for i in range(*r)}


def describe(indices, limit: int = 8) -> str:
    """'0-9, 20, 40-80 step 20, ...' for messages."""
    parts = []
    for a, b, s in to_ranges(indices):
        last = b - 1 if s == 1 else a + (b - 1 - a) // s * s
        parts.append(str(a) if a == last else f"{a}-{last}" + (f" step {s}" if s > 1 else ""))
    return ", ".join(parts[:limit]) + (f", ... ({len(parts) - limit} more ranges)" if len(parts) > limit else "")


# ---------------------------------------------------------------- what an input says it covers
def run_selection(meta: dict, shard=(0, 1)):
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


def _shard_of(meta):
    return tuple(meta.get("shard") or (0, 1))


def expand_inputs(patterns, out: str | None = None, warn=None):
    """Paths from file names and glob patterns (sidecars skipped); OUT is dropped from glob matches."""
    paths, seen = [], set()
    out_real = os.path.realpath(out) if out else None
    for pat in patterns:
        if any(c in pat for c in "*?["):
            found = [p for p in sorted(glob.glob(pat)) if not p.endswith((".meta.json", ".tmp", ".log"))]
            if not found:
                raise CertifyNetError(f"no files match '{pat}'")
            if out_real and any(os.path.realpath(p) == out_real for p in found):
                found = [p for p in found if os.path.realpath(p) != out_real]
                warn and warn(f"'{out}' matches '{pat}'; it is the output, not an input")
        else:
            if not os.path.isfile(pat):
                raise CertifyNetError(f"file '{pat}' not found")
            if out_real and os.path.realpath(pat) == out_real:
                raise CertifyNetError(f"'{pat}' is both the output and an input; choose another OUT")
            found = [pat]
        for p in found:
            if os.path.realpath(p) not in seen:
                seen.add(os.path.realpath(p))
                paths.append(p)
    if not paths:
        raise CertifyNetError("no input files to merge")
    return paths


def _sniff_sep(path):
    with open(path, newline="") as f:
        return "\t" if "\t" in f.readline() else ","


def _warn_stderr(msg):
    print(f"warning: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- the merge
def merge_files(out: str, inputs, allow_missing: bool = False, force: bool = False, warn=_warn_stderr) -> MergeReport:
    """Merge shard files `inputs` (paths or glob patterns) into `out` (+ sidecar); see the module doc."""
    check_output_file(out, "OUT")
    paths = expand_inputs(inputs, out, warn)
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
    if os.path.exists(out) and not force and "merged_from" not in read_meta(out, required=False):
        raise CertifyNetError(f"'{out}' exists and is not the output of a merge; pass --force to replace it "
                              "or choose another OUT")
    sep = _sniff_sep(paths[0])
    header = None
    by_idx, origin, file_idx, report = {}, {}, {}, MergeReport(out, paths)
    for p in paths:
        cols, rows = read_rows(p, sep)
        if header is None:
            header = cols
            if "idx" not in header:
                raise CertifyNetError(f"'{p}' has no idx column")
        elif cols != header:
            raise CertifyNetError(f"'{paths[0]}' and '{p}' have different columns ({header} vs {cols})")
        compared = [c for c in header if c not in TIMING_COLUMNS]
        for lineno, r in enumerate(rows, start=2):
            try:
                idx = int(r["idx"])
            except ValueError:
                raise CertifyNetError(f"'{p}' line {lineno}: idx '{r['idx']}' is not an integer") from None
            file_idx.setdefault(p, set()).add(idx)
            if idx in by_idx:
                old = by_idx[idx]
                diff = next((c for c in compared if old[c] != r[c]), None)
                if diff:
                    raise CertifyNetError(f"idx {idx} is in '{origin[idx]}' and '{p}' with different {diff} "
                                          f"({old[diff]!r} vs {r[diff]!r})")
                if not report.duplicates:
                    warn(f"idx {idx} is in both '{origin[idx]}' and '{p}' (same values); keeping one copy")
                report.duplicates += 1
                continue
            by_idx[idx], origin[idx] = r, p
    if report.duplicates > 1:
        warn(f"dropped {report.duplicates} duplicate rows in all")

    expected = _check_coverage(paths, metas, file_idx, set(by_idx), report, warn)
    if report.missing and not allow_missing:
        raise CertifyNetError(f"{len(report.missing)} of {len(expected)} inputs missing "
                              f"(idx {describe(report.missing, 4)}); nothing written. Rerun the failed shards "
                              "with the same command (they resume), or pass --allow-missing")
    if report.missing:
        warn(f"writing {out} without {len(report.missing)} inputs (--allow-missing)")

    meta = {k: v for k, v in metas[0].items() if k not in ("shard", "missing")}
    for k in ("start", "end"):  # volatile: may legitimately differ between inputs
        if len({json.dumps(m.get(k)) for m in metas}) > 1:
            meta[k] = None
    meta.update(merged_from=[os.path.abspath(p) for p in paths], indices=to_ranges(expected),
                missing=to_ranges(report.missing), columns=header, version=__version__,
                command=" ".join(sys.argv), created=datetime.datetime.now().isoformat(timespec="seconds"))
    _write(out, sep, header, [by_idx[i] for i in sorted(by_idx)], meta)
    report.rows = len(by_idx)
    return report


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
    if not report.missing:
        return expected
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
    return expected


def _write(out, sep, header, rows, meta):
    """Write data and sidecar to temporary files, then rename them into place."""
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        f.write(sep.join(header) + "\n")
        for r in rows:
            f.write(sep.join(r[c] for c in header) + "\n")
    with open(meta_path(tmp), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    os.replace(tmp, out)
    os.replace(meta_path(tmp), meta_path(out))

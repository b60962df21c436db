"""The JSON sidecar `<file>.meta.json` of a log or counts file: reading, writing, comparing.

The sidecar names what produced the file (model, σ, k, N, α, seed, ...). For counts files it also records
`integrity` (the settings digest and per-field digests) and, once the run has written every input of its
selection, `complete` (row count and a digest over the rows in order): `records.integrity`, whose names
`settings_integrity`, `verify_settings` and `row_check` are also importable from here.
"""
from __future__ import annotations

import json
import os

from certifynet.errors import CertifyNetError
from certifynet.paths import SIDECAR_SUFFIX
from certifynet.records.files import atomic_write
from certifynet.records.integrity import (  # noqa: F401 (re-exported: their historical home)
    CHECK_COLUMN,
    INTEGRITY_IGNORE,
    VOLATILE_META,
    row_check,
    settings_integrity,
    verify_settings,
)


def meta_path(path: str) -> str:
    return path + SIDECAR_SUFFIX


def read_meta(path: str, required: bool = True, sidecar: str | None = None) -> dict:
    """The JSON sidecar of `path` as a dict ({} when absent and not required)."""
    mp = sidecar or meta_path(path)
    if not os.path.isfile(mp):
        if required:
            raise CertifyNetError(f"metadata sidecar '{mp}' not found "
                                  "(it is written next to every counts file and log)")
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
    """Write the sidecar of `path` atomically."""
    atomic_write(sidecar or meta_path(path), lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True) + "\n"))


def meta_conflict(a: dict, b: dict, ignore=VOLATILE_META) -> str | None:
    """First key (sorted) on which two metadata dicts disagree, ignoring volatile keys; None if they agree."""
    for key in sorted((set(a) | set(b)) - set(ignore)):
        if a.get(key) != b.get(key):
            return key
    return None

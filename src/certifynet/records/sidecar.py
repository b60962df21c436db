"""The JSON sidecar `<file>.meta.json` of a log or counts file, and its tamper evidence.

The sidecar names what produced the file (model, σ, k, N, α, seed, ...). For counts files it also records
`integrity`: a SHA-256 of its settings and one short digest per field (`settings_integrity`), and every row
carries `check` = SHA-256(settings digest, row) truncated to 16 hex digits (`row_check`). An edited field or
row is detected and named (`verify_settings`). It guards against accidents, not against a forger.
"""
from __future__ import annotations

import hashlib
import json
import os

from certifynet.errors import CertifyNetError
from certifynet.paths import SIDECAR_SUFFIX
from certifynet.records.files import atomic_write

# Metadata keys that may differ between a run and its resumption (or between shards of one run).
VOLATILE_META = {"created", "version", "command", "shard", "start", "end", "indices"}
# Not covered by the settings digest: volatile keys, merge bookkeeping and the digest itself.
INTEGRITY_IGNORE = VOLATILE_META | {"merged_from", "missing", "integrity"}
CHECK_COLUMN = "check"


def meta_path(path: str) -> str:
    return path + SIDECAR_SUFFIX


def read_meta(path: str, required: bool = True, sidecar: str | None = None) -> dict:
    """The JSON sidecar of `path` as a dict ({} when absent and not required)."""
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
    """Write the sidecar of `path` atomically."""
    atomic_write(sidecar or meta_path(path), lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True) + "\n"))


def meta_conflict(a: dict, b: dict, ignore=VOLATILE_META) -> str | None:
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

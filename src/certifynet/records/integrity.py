"""The digests of counts files, and the optional secret key that makes them forgery-evident.

What a counts file (sample.py's output, or a merge of its shards) carries, each kept by the function named:

- **Settings digest** (`settings_integrity`, `verify_settings`): the sidecar records a digest of every
  setting (all keys but `INTEGRITY_IGNORE`) and one short digest per field, so an edited, added or removed
  field is named.
- **Row checks** (`row_check`): every row carries `check` = digest(settings digest, the row's fields), 16 hex
  digits: an edited row is named by its line, and a row cannot be moved to a file of other settings.
- **Completion record** (`completion_record`, `check_completion`): when a run has written every input of its
  selection, the sidecar records the row count and a digest over the row checks in order and over the scope
  fields (`COMPLETION_SCOPE`: shard, start, end, and a merge's indices, missing and inputs). A deleted,
  reordered or appended row, or an edited scope, no longer matches. A merge verifies its inputs and records
  its own. A file without the record (a run still going or interrupted) certifies with a warning.
- **No digests, no certificate** (`verify_settings`): a counts file without them is refused; there is no
  "written before digests" path, so stripping them does not bypass the checks.

The digests are SHA-256 by default, or HMAC-SHA-256 with a secret key when `$CERTIFYNET_KEY_FILE` names a
file of at least 16 bytes (`load_key`; one mechanism for every writer and reader: sample.py, merge.py,
certify.py, attack.py, the web app). What that gives:

- **Without a key: accident-evident.** Edits, truncations, deleted, reordered or mixed rows and files are
  detected. Anyone can recompute SHA-256, so a deliberate forger who recomputes the digests passes.
- **With a key: forgery-evident**, for whoever does not hold the key: the digests cannot be recomputed
  without it. With the variable set, a reader refuses files written without a key (else a forger would
  write an unkeyed file) and files written with another key (`key_id` names the key without revealing it).
- **Not covered, either way:** the model checkpoint and the data (the sidecar records their SHA-256, not
  checked here); certify, predict and audit logs (no digests); whether the sampling itself was honest (a
  key holder can write any file); deleting a whole file or its completion record (the rest then certifies
  with the incomplete-file warning); and the volatile sidecar fields `created`, `version` and `command`.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass

from certifynet.errors import CertifyNetError

KEY_ENV = "CERTIFYNET_KEY_FILE"
MIN_KEY_BYTES = 16
CHECK_COLUMN = "check"
# Sidecar keys that may differ between a run and its resumption, or between the shards of one run.
VOLATILE_META = {"created", "version", "command", "shard", "start", "end", "indices"}
# Not covered by the settings digest: volatile keys, merge bookkeeping, the digests and the completion record.
INTEGRITY_IGNORE = VOLATILE_META | {"merged_from", "missing", "integrity", "complete", "forced"}
# Bound by the completion record instead: which part of the run the rows are.
COMPLETION_SCOPE = ("shard", "start", "end", "indices", "missing", "merged_from")
_SCHEMES = ("sha256", "hmac-sha256")


def load_key(environ=None) -> bytes | None:
    """The secret key: the bytes of the file `$CERTIFYNET_KEY_FILE` names (one trailing newline ignored), or
    None when the variable is unset or empty. A file that cannot be read or holds < 16 bytes is an error."""
    path = (os.environ if environ is None else environ).get(KEY_ENV, "")
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            key = f.read(1 << 16)
    except OSError as e:
        raise CertifyNetError(f"${KEY_ENV} names '{path}', which cannot be read ({e.strerror or e})") from None
    key = key[:-2] if key.endswith(b"\r\n") else key[:-1] if key.endswith(b"\n") else key
    if len(key) < MIN_KEY_BYTES:
        raise CertifyNetError(f"the key file '{path}' (${KEY_ENV}) holds {len(key)} bytes; use at least "
                              f"{MIN_KEY_BYTES} random bytes, e.g. head -c 32 /dev/urandom > '{path}'")
    return key


@dataclass(frozen=True)
class Digester:
    """SHA-256 (key None) or HMAC-SHA-256 under `key`: the one hash behind every digest of a file."""
    key: bytes | None = None

    @classmethod
    def from_env(cls) -> Digester:
        return cls(load_key())

    @property
    def scheme(self) -> str:
        return "sha256" if self.key is None else "hmac-sha256"

    @property
    def key_id(self) -> str | None:
        """A name for the key that reveals nothing about it: HMAC(key, 'certifynet key id'), 16 hex digits."""
        return None if self.key is None else self.digest("certifynet key id", 16)

    def hasher(self):
        return hashlib.sha256() if self.key is None else hmac.new(self.key, digestmod=hashlib.sha256)

    def digest(self, text: str, length: int = 64) -> str:
        h = self.hasher()
        h.update(text.encode("utf-8"))
        return h.hexdigest()[:length]


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def settings_integrity(meta: dict, digester: Digester | None = None) -> dict:
    """{'scheme', 'key_id' (keyed only), 'sha256': digest of all settings, 'fields': {key: 12-hex digest of
    key=value}} over the keys of `meta` outside INTEGRITY_IGNORE (the same for every shard and their merge).
    'sha256' keeps its historical name; under a key it is the HMAC-SHA-256."""
    d = digester or Digester()
    settings = {k: v for k, v in meta.items() if k not in INTEGRITY_IGNORE}
    out = {"scheme": d.scheme, "sha256": d.digest(_canonical(settings)),
           "fields": {k: d.digest(f"{k}={_canonical(v)}", 12) for k, v in settings.items()}}
    if d.key_id:
        out["key_id"] = d.key_id
    return out


def file_digester(meta: dict, where: str, digester: Digester | None = None) -> Digester:
    """The digester that checks a file: the reader's key (`$CERTIFYNET_KEY_FILE`) must match how it was written.
    No digests at all, a keyed file without the key, an unkeyed file with a key set, or another key: errors."""
    recorded = meta.get("integrity")
    if recorded is None:
        raise CertifyNetError(f"{where} lacks the digest its rows are checked against (no 'integrity' entry): "
                              "counts files without digests are refused, as their rows could have been edited "
                              "unseen; sample them again with this version")
    if not (isinstance(recorded, dict) and isinstance(recorded.get("fields"), dict)):
        raise CertifyNetError(f"{where}: its 'integrity' entry was edited (expected the digests certifynet wrote)")
    d = digester or Digester.from_env()
    scheme = recorded.get("scheme", "sha256")  # files of 0.x before keys: plain SHA-256
    if scheme not in _SCHEMES:
        raise CertifyNetError(f"{where}: unknown digest scheme {scheme!r} (was its 'integrity' entry edited?)")
    if scheme == "hmac-sha256" and d.key is None:
        raise CertifyNetError(f"{where} was written with a secret key (key id {recorded.get('key_id')}): set "
                              f"${KEY_ENV} to that key's file to check it")
    if scheme == "sha256" and d.key is not None:
        raise CertifyNetError(f"{where} was written without a secret key, so anyone can recompute its digests; "
                              f"with ${KEY_ENV} set only files written with the key are accepted (unset it to "
                              f"accept accident-evident digests)")
    if d.key is not None and recorded.get("key_id") != d.key_id:
        raise CertifyNetError(f"{where} was written with another key (key id {recorded.get('key_id')}, "
                              f"${KEY_ENV} has {d.key_id})")
    return d


def verify_settings(meta: dict, where: str, digester: Digester | None = None) -> str:
    """The settings digest of a sidecar after checking it against its fields (`file_digester` first). A mismatch
    is an error naming the edited (or added/removed) field."""
    d = file_digester(meta, where, digester)
    recorded, now = meta["integrity"], settings_integrity(meta, d)
    fields = recorded["fields"]
    for key in sorted(set(fields) | set(now["fields"])):
        if fields.get(key) != now["fields"].get(key):
            change = "added" if key not in fields else "removed" if key not in now["fields"] else "changed"
            raise CertifyNetError(f"{where} was edited after the run: field '{key}' was {change} "
                                  f"(it no longer matches the digest recorded with the data)")
    if recorded.get("sha256") != now["sha256"]:
        raise CertifyNetError(f"{where}: its settings digest was edited")
    return now["sha256"]


def row_check(settings_sha256: str, values, digester: Digester | None = None) -> str:
    """check = first 16 hex digits of digest(settings digest, the row's fields as written)."""
    return (digester or Digester()).digest("\x1f".join([settings_sha256, *values]), 16)


def completion_record(meta: dict, checks, digester: Digester | None = None) -> dict:
    """{'rows': n, 'digest'}: digest over the settings digest, the scope fields and the n row checks in order."""
    h = (digester or Digester()).hasher()
    scope = {k: meta.get(k) for k in COMPLETION_SCOPE}
    h.update("\x1f".join(["complete", meta["integrity"]["sha256"], _canonical(scope)]).encode("utf-8"))
    n = 0
    for c in checks:
        h.update(("\x1e" + c).encode("utf-8"))
        n += 1
    h.update(f"\x1d{n}".encode())
    return {"rows": n, "digest": h.hexdigest()}


def check_completion(meta: dict, checks: list[str], where: str, digester: Digester | None = None) -> str | None:
    """None for a complete file whose record matches its rows; the warning to give for an incomplete one (no
    record: a run still going or interrupted; a shard; a merge with missing inputs). A record that does not
    match is an error saying what changed."""
    rec = meta.get("complete")
    if rec is None:
        return (f"'{where}' is incomplete: it has no completion record (its run is still going, was interrupted, "
                f"or the record was removed); certificates cover only its {len(checks)} rows")
    if not (isinstance(rec, dict) and isinstance(rec.get("rows"), int) and isinstance(rec.get("digest"), str)):
        raise CertifyNetError(f"{where}: its completion record was edited")
    if len(checks) != rec["rows"]:
        what = "deleted" if len(checks) < rec["rows"] else "appended"
        raise CertifyNetError(f"'{where}' has {len(checks)} rows, but its run completed with {rec['rows']}: rows "
                              f"were {what} after the run")
    if completion_record(meta, checks, digester)["digest"] != rec["digest"]:
        raise CertifyNetError(f"'{where}' no longer matches its completion record: rows were reordered or replaced, "
                              f"or its shard/selection fields were edited")
    shard = meta.get("shard") or [0, 1]
    if list(shard) != [0, 1]:
        return (f"'{where}' is shard {shard[0]}/{shard[1]} of its run: certificates cover only its "
                f"{len(checks)} rows (merge the shards for the whole run)")
    if meta.get("missing"):
        return f"'{where}' was merged without some inputs of its run (its sidecar's 'missing'); they are not certified"
    return None


def verify_counts_digests(meta: dict, header: list[str], rows: list[dict], where: str,
                          digester: Digester | None = None) -> str | None:
    """Settings digest, every row's check, then the completion record; returns `check_completion`'s warning."""
    d = file_digester(meta, f"sidecar '{where}.meta.json'", digester)
    settings = verify_settings(meta, f"sidecar '{where}.meta.json'", d)
    if CHECK_COLUMN not in header:
        raise CertifyNetError(f"'{where}' lacks its '{CHECK_COLUMN}' column (the sidecar records a digest)")
    for lineno, r in enumerate(rows, start=2):
        verify_row(r, header, settings, f"{where} line {lineno} (idx {r.get('idx')})", d)
    return check_completion(meta, [r[CHECK_COLUMN] for r in rows], where, d)


def verify_row(row: dict, header: list[str], settings: str, where: str, digester: Digester) -> None:
    values = [row[c] for c in header if c != CHECK_COLUMN]
    if row[CHECK_COLUMN] != row_check(settings, values, digester):
        raise CertifyNetError(f"{where} was edited after sampling: its '{CHECK_COLUMN}' digest does not match its "
                              f"values and the sidecar's settings")

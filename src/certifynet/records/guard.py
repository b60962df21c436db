"""The output guard: the one place that decides whether a command may write a file or a folder.

An output is ours when certifynet can tell what wrote it:

- a **file** by its JSON sidecar (`<file>.meta.json`, or a named one such as a training run's
  `log.meta.json`) with a `kind`: logs, counts files, merge outputs (`check_file`, `check_replace`);
- a **folder** by its marker `.certifynet.json` — {"kind", "settings", "files", "changes", "created",
  "version"} — written when a command claims it (`claim_folder`): quickstart and analysis folders, web jobs.

The rules, each kept here:

1. **Not ours → refused untouched**: a file without our sidecar or with a sidecar of another kind, a
   non-empty folder without our marker (`adopt(entries)` may recognise what an older version of the command
   wrote), a damaged marker.
2. **Ours but of another run → refused, naming the first differing field** (`settings_conflicts`: numbers
   compare by value, so 0.5, 0.50, 5e-1 and "0.5" agree), unless `force`; a forced change is recorded
   (`changes`: field, was, now, when).
3. **Every writer holds the lock**: `claim_folder` holds `.certifynet.lock` in the folder for the whole run
   and checks again under it; files are held by `records.lock.WriterLock`. `lock.covered(path)` tells
   whether this process holds a claim on a path (tests check every write of every command against it).
   A claim inside a folder this process already holds is nested: the outer claim decides.
4. **Deleting only our own**: `FolderClaim.remove_own` removes the entries its marker lists (what the command
   that claimed it wrote, `record`), nothing else.
5. **A file deleted while written is an error** (`check_linked`), never a silent loss.

`records.runlog.rewrite_log` replaces a per-epoch log and its sidecar atomically for a resumed run.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable

from certifynet._version import __version__
from certifynet.errors import CertifyNetError
from certifynet.paths import LOCK_SUFFIX, SIDECAR_SUFFIX, check_output_folder, shown
from certifynet.records.files import atomic_write
from certifynet.records.lock import WriterLock, holding_folder
from certifynet.records.sidecar import read_meta

MARKER = ".certifynet.json"
FOLDER_LOCK = ".certifynet"            # WriterLock(folder/.certifynet) → folder/.certifynet.lock
OWN_ENTRIES = (MARKER, FOLDER_LOCK + LOCK_SUFFIX)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


# ---------------------------------------------------------------- comparing settings
def _number(x):
    """An int or float as compared: exact ints beyond 2⁵³ stay ints (so distinct ones never round together)."""
    if isinstance(x, int) and abs(x) >= 1 << 53:
        return x
    f = float(x)
    return "nan" if math.isnan(f) else f


def canonical(value):
    """A value as compared: bools and None stay, numbers (and strings that spell one: '0.50', '5e-1') become
    numbers, NaN a marker, containers element by element; anything else as it is."""
    if value is None:
        return value
    if isinstance(value, bool):
        return ("bool", value)  # True is not 1
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        text = value.strip()
        for parse in (int, float):
            try:
                return _number(parse(text))
            except (ValueError, OverflowError):
                continue
        return value
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    return value


def same_value(a, b) -> bool:
    return canonical(a) == canonical(b)


# Sub-keys that only name a setting: the normalisation 'identity' and the checkpoint's mean 0 / std 1 are one
# normalisation, so a resume that spells it another way is the same run.
NAMES_ONLY = {"normalization": ("kind",)}


def _effect(key: str, value):
    drop = NAMES_ONLY.get(key)
    if drop and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in drop}
    return value


def settings_conflicts(old: dict, new: dict, ignore: Iterable[str] = ()) -> list[str]:
    """The keys (sorted) on which two settings dicts disagree, `ignore`d keys aside; [] when they agree."""
    return [k for k in sorted((set(old) | set(new)) - set(ignore))
            if not same_value(_effect(k, old.get(k)), _effect(k, new.get(k)))]


def describe_changes(old: dict, new: dict, keys: Iterable[str]) -> str:
    """'lr 0.1 → 0.01, batch 32 → 64'."""
    return ", ".join(f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in keys)


def change_records(old: dict, new: dict, keys: Iterable[str], **where) -> list[dict]:
    """What a forced change records: one {"field", "was", "now", "at", ...where} per key."""
    at = _now()
    return [{"field": k, "was": old.get(k), "now": new.get(k), "at": at, **where} for k in keys]


def resume_changes(old: dict, new: dict, names: Iterable[str], *, force: bool, path: str, recorded_in: str,
                   epoch: int) -> list[dict]:
    """A resume's hyper-parameters (`names`) that differ from those the checkpoint was trained with (`old`):
    refused, naming them, unless `force`; then the records of the changes (`change_records`, at `epoch`)."""
    keys = [k for k in names if k in old and not same_value(old[k], new[k])]
    if keys and not force:
        raise CertifyNetError(f"{{resume}} '{path}' was trained with other hyper-parameters "
                              f"({describe_changes(old, new, keys)}); resume with the same ones, or pass {{force}} "
                              f"to continue with the new ones (the change is recorded in {recorded_in})",
                              "resume", "force")
    return change_records(old, new, keys, epoch=epoch)


# ---------------------------------------------------------------- files with a sidecar
def read_sidecar(path: str, sidecar: str | None = None) -> dict | None:
    """The sidecar of `path` (None when absent); a sidecar that is not a JSON object is an error."""
    side = sidecar or path + SIDECAR_SUFFIX
    return read_meta(path, True, side) if os.path.isfile(side) else None


def check_file(path: str, meta: dict, *, sidecar: str | None = None, ignore: Iterable[str] = ()) -> dict:
    """An existing log that a run appends to must be ours (a sidecar), of the run's kind and settings
    (every key outside `ignore`); returns its sidecar. Anything else is refused before a byte changes."""
    side = sidecar or path + SIDECAR_SUFFIX
    old = read_sidecar(path, side)
    if old is None:
        raise CertifyNetError(f"'{path}' exists and has no sidecar {os.path.basename(side)}: it is not a log this "
                              f"run can resume; give another output path (or delete the file if it is yours)")
    kind = meta.get("kind")
    if old.get("kind") != kind:
        raise CertifyNetError(f"'{path}' is a {old.get('kind') or 'file of unknown kind'}, not a {kind}; "
                              f"give another output path")
    keys = settings_conflicts(old, meta, ignore)
    if keys:
        key = keys[0]
        raise CertifyNetError(f"'{path}' exists and was made with a different {key} "
                              f"({old.get(key)!r} vs {meta.get(key)!r}); use another output path or delete it")
    return old


def check_run_log(path: str, meta: dict, *, sidecar: str | None = None, ignore: Iterable[str] = (),
                  resumed: bool = False, replace: bool = False, name: str = "outdir",
                  replace_name: str | None = None) -> dict | None:
    """A per-epoch log that a training run rewrites (`rewrite_log`): absent → None; without its sidecar or
    with one of another kind → refused untouched; of another run (a key of `meta` outside `ignore` differs)
    → refused naming it, unless a fresh run may `replace` it (the argument `replace_name`). Returns the old
    sidecar. `meta` may be part of the run's sidecar: only its keys are compared."""
    side = sidecar or path + SIDECAR_SUFFIX
    old = read_sidecar(path, side)
    if old is None:
        if os.path.lexists(path) and (not os.path.isfile(path) or os.path.getsize(path) > 0):
            raise CertifyNetError(f"'{path}' exists and has no sidecar {os.path.basename(side)}: it is not a log of "
                                  f"certifynet and is left untouched; give another {{{name}}} (or delete the file if "
                                  f"it is yours)", name)
        return None
    if old.get("kind") != meta.get("kind"):
        raise CertifyNetError(f"'{side}' describes a {old.get('kind') or 'file of unknown kind'}, not a "
                              f"{meta.get('kind')}; it is left untouched: give another {{{name}}}", name)
    keys = settings_conflicts(old, meta, set(ignore) | (set(old) - set(meta)))
    if keys and (resumed or not replace):
        how = f"give another {{{name}}}" + (f", or pass {{{replace_name}}} to replace it"
                                            if replace_name and not resumed else "")
        raise CertifyNetError(f"'{path}' is the log of another run ({describe_changes(old, meta, keys[:3])}); it is "
                              f"left untouched: {how}", name, *([replace_name] if replace_name else []))
    return old


def check_replace(path: str, meta: dict | None, *, another: str, ours: Callable[[dict], bool], what: str,
                  ignore: Iterable[str] = (), force: bool = False) -> dict | None:
    """A file rewritten whole (a merge output): absent → None; `ours(sidecar)` and of the same run → None;
    else refused naming why (`another`: how the error names the output argument), unless `force`, which
    returns the record of what is replaced. `meta` None: ownership only (a check before the run is known)."""
    if not os.path.lexists(path):
        return None
    old = read_sidecar(path) if os.path.isfile(path) else None
    if old is None or not ours(old):
        if not force:
            raise CertifyNetError(f"'{path}' exists and is not {what}; pass {{force}} to replace it or choose "
                                  f"another {another}", "force")
        return {"replaced": f"a file that was not {what}", "at": _now()}
    keys = settings_conflicts(old, meta, ignore) if meta is not None else []
    if not keys:
        return None
    if not force:
        raise CertifyNetError(f"'{path}' is {what} of another run ({describe_changes(old, meta, keys[:3])}), whose "
                              f"inputs may be gone; pass {{force}} to replace it or choose another {another}",
                              "force")
    return {"replaced": f"{what} of another run", "changes": change_records(old, meta, keys)}


def write_beside(path: str, suffix: str, write: Callable) -> str:
    """Write `path + suffix` (what a command derives from its output `path`, e.g. a summary) atomically,
    holding `path`'s lock; returns the path written."""
    lock = WriterLock(path).acquire(path)
    try:
        atomic_write(path + suffix, write)
    finally:
        lock.release()
    return path + suffix


def check_linked(f, path: str) -> None:
    """Refuse to go on writing through `f` once `path` no longer names its file (deleted with its folder, or
    replaced): what is written would be lost while the run reports success."""
    try:
        st = os.fstat(f.fileno())
        now = os.stat(path)
        linked = st.st_nlink > 0 and (st.st_ino, st.st_dev) == (now.st_ino, now.st_dev)
    except FileNotFoundError:
        linked = False
    if not linked:
        raise CertifyNetError(f"'{path}' was deleted or replaced while this run wrote it (was its folder "
                              f"removed?); the rows written since are lost: rerun the command to write it again")


# ---------------------------------------------------------------- folders with a marker
def read_marker(folder: str) -> dict | None:
    """The folder's marker (None when absent); a damaged one is an error."""
    path = os.path.join(folder, MARKER)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        marker = None
    ok = (isinstance(marker, dict) and isinstance(marker.get("kind"), str)
          and isinstance(marker.get("files", []), list) and all(_plain_name(n) for n in marker.get("files", []))
          and isinstance(marker.get("settings"), (dict, type(None))))
    if not ok:
        raise CertifyNetError(f"'{shown(folder)}' has a damaged {MARKER} (not the marker certifynet writes): it is "
                              f"left untouched; delete the folder if it is yours, or choose another output folder")
    return marker


def _plain_name(name) -> bool:
    """A marker may only list entries of its own folder."""
    return (isinstance(name, str) and name not in ("", ".", "..") and os.path.basename(name) == name
            and name not in OWN_ENTRIES)


def _entries(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder)) - set(OWN_ENTRIES)
    except FileNotFoundError:
        return set()


def _decide_folder(folder: str, kind: str, settings: dict | None, name: str, force: bool, ignore,
                   adopt: Callable[[set], bool] | None, force_name: str) -> tuple[dict | None, list[str]]:
    """(the existing marker or None, the conflicting keys that `force` lets through); raises otherwise."""
    check_output_folder(folder, name=name)
    if not os.path.isdir(folder):
        return None, []
    marker = read_marker(folder)
    if marker is None:
        entries = _entries(folder)
        if not entries:
            return None, []
        if adopt is not None and adopt(entries):  # an older version's outputs, without a marker
            return {"kind": kind, "settings": None, "files": sorted(entries)}, []
        raise CertifyNetError(f"{{{name}}} '{shown(folder)}' is not empty and was not written by a certifynet "
                              f"{kind} (it has no {MARKER}); it is left untouched: give a new or empty folder", name)
    if marker["kind"] != kind:
        raise CertifyNetError(f"{{{name}}} '{shown(folder)}' holds the output of a certifynet {marker['kind']}, not "
                              f"of a {kind}; it is left untouched: give another folder", name)
    keys = settings_conflicts(marker["settings"], settings or {}, ignore) if marker["settings"] is not None else []
    if keys and not force:
        changed = describe_changes(marker["settings"], settings or {}, keys[:3])
        raise CertifyNetError(f"{{{name}}} '{shown(folder)}' holds a certifynet {kind} of another run ({changed}); "
                              f"pass {{{force_name}}} to replace it, or give another folder", name, force_name)
    return marker, keys


def check_folder(folder: str, kind: str, settings: dict | None = None, *, name: str = "out", force: bool = False,
                 ignore: Iterable[str] = (), adopt: Callable[[set], bool] | None = None,
                 force_name: str = "force") -> None:
    """Whether `claim_folder` would accept `folder` (nothing is created): the early check of a command.
    `force_name`: the argument that sets `force` (named in the refusal)."""
    if not holding_folder(folder):
        _decide_folder(os.path.abspath(folder), kind, settings, name, force, ignore, adopt, force_name)


class FolderClaim:
    """A folder held by this process: its lock and marker. `record` adds what appeared since the claim to the
    marker's `files`; `remove_own` deletes what the marker lists; `release` records and unlocks."""

    def __init__(self, folder: str, kind: str, marker: dict | None, lock: WriterLock | None, created: bool):
        self.folder, self.kind, self.marker, self.lock, self.created = folder, kind, marker, lock, created
        self._seen = _entries(folder)

    @property
    def nested(self) -> bool:
        """Inside a folder that another claim of this process holds: that claim records and releases."""
        return self.lock is None

    def _write_marker(self) -> None:
        atomic_write(os.path.join(self.folder, MARKER),
                     lambda f: f.write(json.dumps(self.marker, indent=1, sort_keys=True) + "\n"))

    def record(self) -> None:
        """Add the entries that appeared since the claim (or the last record) to the marker's `files`."""
        if self.nested:
            return
        now = _entries(self.folder)
        new = sorted((now - self._seen) - set(self.marker["files"]))
        self._seen = now
        if new:
            self.marker["files"] = sorted(set(self.marker["files"]) | set(new))
            self._write_marker()

    def remove_own(self) -> list[str]:
        """Delete the entries the marker lists (what earlier runs of this command wrote); others stay."""
        if self.nested:
            raise CertifyNetError(f"'{shown(self.folder)}' is held by an enclosing run; it cannot be emptied here")
        removed = []
        for entry in self.marker["files"]:
            path = os.path.join(self.folder, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
            removed.append(entry)
        self.marker["files"] = []
        self._write_marker()
        self._seen = _entries(self.folder)
        return removed

    def release(self, failed: bool = False) -> None:
        if self.lock is None or not self.lock.held:
            return
        try:
            self.record()
        finally:
            self.lock.release()
        if failed and self.created and not self.marker["files"]:  # nothing written: leave nothing behind
            for entry in OWN_ENTRIES:
                try:
                    os.unlink(os.path.join(self.folder, entry))
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(self.folder)
            except OSError:
                pass

    def __enter__(self) -> FolderClaim:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.release(failed=exc_type is not None)


def claim_folder(folder: str, kind: str, settings: dict | None = None, *, name: str = "out", force: bool = False,
                 ignore: Iterable[str] = (), adopt: Callable[[set], bool] | None = None,
                 force_name: str = "force") -> FolderClaim:
    """Hold `folder` for a run of `kind` with `settings` (see the module doc): checked, created if needed,
    locked, checked again under the lock, marked. Use as a context manager or call `release()`."""
    folder = os.path.abspath(folder)
    if holding_folder(folder):  # inside a folder this process holds: that claim decides and records
        check_output_folder(folder, name=name)
        created = not os.path.isdir(folder)
        os.makedirs(folder, exist_ok=True)
        return FolderClaim(folder, kind, None, None, created)
    decide = (folder, kind, settings, name, force, ignore, adopt, force_name)
    _decide_folder(*decide)  # refuse before creating anything
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    lock = WriterLock(os.path.join(folder, FOLDER_LOCK), covers=[(folder, True)])
    try:
        lock.acquire(shown(folder))
        old, forced = _decide_folder(*decide)
        old = old or {}
        changes = list(old.get("changes") or [])
        if forced and old.get("settings") is not None:
            changes += change_records(old["settings"], settings or {}, forced)
        marker = {"kind": kind, "settings": settings, "files": sorted(old.get("files") or []),
                  "created": old.get("created") or _now(), "version": __version__, "changes": changes}
        claim = FolderClaim(folder, kind, marker, lock, created)
        claim._write_marker()
    except BaseException:
        lock.release()
        if created:
            try:
                os.rmdir(folder)  # only if empty: another run may have claimed it meanwhile
            except OSError:
                pass
        raise
    return claim

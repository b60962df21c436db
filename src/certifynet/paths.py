"""Where outputs go, and whether a path may be written: checked before any file is created.

Default outputs (`results/…`, `models/…`, `data/`) live under the project root: the checkout that holds
this package (`src/certifynet` beside `setup.py`), else `$CERTIFYNET_ROOT`, else the current directory.
So `python scripts/sample.py` run from `scripts/` still writes `<checkout>/results/…`, which .gitignore
covers. Paths the user types (`--out x.tsv`) are taken relative to the current directory, as usual.
"""
from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from certifynet.errors import CertifyNetError

# File names that are ours alongside a log and must never be given as an output.
SIDECAR_SUFFIX, LOCK_SUFFIX = ".meta.json", ".lock"


def project_root() -> str:
    """$CERTIFYNET_ROOT, else the checkout holding this package (an editable install), else the cwd."""
    env = os.environ.get("CERTIFYNET_ROOT")
    if env:
        return os.path.abspath(env)
    here = Path(__file__).resolve().parents[2]
    if (here / "setup.py").is_file() and (here / "src" / "certifynet").is_dir():
        return str(here)
    return os.getcwd()


def default_path(relative: str) -> str:
    """A default output path (e.g. 'results/counts.csv') under the project root."""
    return os.path.join(project_root(), relative)


def shown(path: str) -> str:
    """`path` relative to the cwd when it lies below it, else absolute (for the 'wrote …' lines)."""
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute)
    return absolute if rel.startswith("..") else rel


def safe_filename(label: str, max_len: int = 120) -> str:
    """An ASCII file-name stem without spaces from a display label: 'NP σ=0.25 N=2000' → 'np_sigma0.25_N2000'.
    Greek letters are spelled out; other characters outside [A-Za-z0-9._+-] become '_'."""
    greek = {"σ": "sigma", "ε": "eps", "α": "alpha", "ρ": "rho", "δ": "delta", "λ": "lambda", "η": "eta"}
    text = "".join(greek.get(ch, ch) for ch in str(label))
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"\s*=\s*", "", text)                     # 'σ=0.25' → 'sigma0.25'
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", text)
    text = re.sub(r"_*\+_*", "+", text).strip("._+-")
    if not text:
        raise CertifyNetError(f"cannot make a file name from the label {label!r}")
    head, _, tail = text.partition("_")
    return (head.lower() + (f"_{tail}" if tail else ""))[:max_len]


def _first_existing_parent(folder: str) -> str:
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def check_output_folder(folder: str, what: str = "output folder", name: str | None = None) -> str:
    """Refuse a folder that is a file, lies under a file, or cannot be created/written. Creates nothing.
    `name`: the argument that gave the folder, named in the error as the field `{name}` (`what` may place it,
    e.g. "the folder of {out}"); without it, `what` describes the folder."""
    folder = os.path.abspath(folder or ".")
    fields = (name,) if name else ()
    if name and f"{{{name}}}" not in what:
        what = f"{{{name}}}"
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CertifyNetError(f"{what} '{shown(folder)}' is a file, not a folder", *fields)
    base = _first_existing_parent(folder)
    if not os.path.isdir(base):
        raise CertifyNetError(f"cannot create {what} '{shown(folder)}': '{shown(base)}' is a file, not a folder",
                              *fields)
    if not os.access(base, os.W_OK | os.X_OK):
        raise CertifyNetError(f"cannot write to '{shown(base)}' (permission denied); choose another {what}", *fields)
    return folder


def check_output_file(path: str, name: str | None = "out", what: str | None = None) -> str:
    """Refuse an output path that names a folder, a sidecar or lock file of ours, or lies where nothing can be
    written (under a regular file, in a read-only folder). Creates nothing; returns the path. The errors name
    the argument `name` as a field (`{out}`: --out on the command line), or use `what` (e.g. a positional's
    metavar) as it is."""
    fields = () if what else (name,)
    arg = what or f"{{{name}}}"
    if not path or path.endswith(os.sep):
        raise CertifyNetError(f"{arg} '{path}' names a folder; give a file name", *fields)
    if os.path.isdir(path):
        raise CertifyNetError(f"{arg} '{path}' is a folder; give a file name inside it", *fields)
    if path.endswith((SIDECAR_SUFFIX, LOCK_SUFFIX)):
        raise CertifyNetError(f"{arg} '{path}' names a sidecar/lock file, which certifynet writes itself; "
                              f"give the data file's name", *fields)
    check_output_folder(os.path.dirname(os.path.abspath(path)), f"the folder of {arg}", *fields)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CertifyNetError(f"{arg} '{path}' exists and is read-only", *fields)
    return path

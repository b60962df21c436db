"""What a checkpoint file may be, checked like user input: its inflated size before it is read, and every
header field after (one place for classifier and denoiser files).

- **Size** (`check_archive`). A torch checkpoint is a zip file whose central directory lists each entry's
  uncompressed size; torch writes entries uncompressed, but reads deflated ones too, so a small file can
  inflate to gigabytes (a zip bomb). The total uncompressed size must stay within
  `MAX_INFLATION` × the file size + `INFLATION_SLACK` and within the machine's memory, else the file is refused
  before torch reads a byte of it. A legacy (non-zip) torch file holds its tensors as raw bytes, bounded by
  its size.
- **Header** (`validate_header`, `validate_denoiser_header`). Every field a header of ours can carry is
  checked for type, range and finiteness (`noise.k` a non-negative integer, `noise.sigma` a finite σ ≥ 0, the
  normalisation finite with std > 0, `num_classes` the dataset's, `epoch` a non-negative integer, ...); of a
  reference file, the fields certifynet reads. A bad field is a one-line error naming it, never a crash in
  the code that trusted it (the web app's model pages, the CLI).
"""
from __future__ import annotations

import math
import os
import zipfile

from certifynet.bounds import human_bytes, memory_bytes
from certifynet.errors import CertifyNetError

MAX_INFLATION = 2                 # uncompressed ≤ 2 × file size + slack (torch stores entries uncompressed)
INFLATION_SLACK = 64 << 20        # small compressed entries (the pickle, version records) of any file
MAX_ENTRIES = 100_000
DENOISER_LIMITS = {"in_channels": (1, 64), "channels": (1, 4096), "nb": (1, 64), "depth": (1, 512)}


# ---------------------------------------------------------------- size before reading
def check_archive(path: str) -> None:
    """Refuse a zip checkpoint whose entries inflate beyond the bound of the module doc (reads only the
    central directory). Legacy files pass: their tensors are bounded by their size."""
    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CertifyNetError(f"checkpoint '{path}' is corrupt (its zip directory is unreadable)") from None
    if len(infos) > MAX_ENTRIES:
        raise CertifyNetError(f"checkpoint '{path}' lists {len(infos):,} entries: not a torch checkpoint")
    total = sum(max(0, int(i.file_size)) for i in infos)
    bound = min(MAX_INFLATION * size + INFLATION_SLACK, memory_bytes())
    if total > bound:
        raise CertifyNetError(f"checkpoint '{path}' would inflate from {human_bytes(size)} to {human_bytes(total)} "
                              f"(more than {human_bytes(bound)}): refused before reading it (a torch checkpoint "
                              f"stores its tensors uncompressed)")


# ---------------------------------------------------------------- header fields
def _where(path: str, field: str) -> str:
    return f"checkpoint '{path}': header field '{field}'"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def header_int(value, path: str, field: str, low: int = 0, high: int | None = None) -> int:
    """An integer field (an integral float is accepted) in [low, high]."""
    ok = _number(value) and math.isfinite(value) and float(value) == int(value)
    if ok:
        value = int(value)
        ok = value >= low and (high is None or value <= high)
    if not ok:
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise CertifyNetError(f"{_where(path, field)} must be an integer {rng}, got {value!r}")
    return value


def _finite(value, path: str, field: str, low: float = 0.0, strict: bool = False) -> float:
    if not (_number(value) and math.isfinite(value) and (value > low if strict else value >= low)):
        raise CertifyNetError(f"{_where(path, field)} must be a finite number {'>' if strict else '>='} {low:g}, "
                              f"got {value!r}")
    return float(value)


def _kind(value, kinds, path: str, field: str, what: str):
    if not isinstance(value, kinds):
        raise CertifyNetError(f"{_where(path, field)} must be {what}, got {type(value).__name__} {value!r:.60}")
    return value


def _normalization(value, path: str) -> None:
    """{'mean': [...], 'std': [...]}: finite numbers, std > 0, 1 to 4 channels each."""
    _kind(value, dict, path, "normalization", "a dict {'mean', 'std'}")
    for key, strict in (("mean", False), ("std", True)):
        values = _kind(value.get(key), (list, tuple), path, f"normalization.{key}", "a list of numbers")
        if not 1 <= len(values) <= 4:
            raise CertifyNetError(f"{_where(path, f'normalization.{key}')} must hold 1 to 4 values, got {len(values)}")
        for v in values:
            if not (_number(v) and math.isfinite(v)) or (strict and not v > 0):
                raise CertifyNetError(f"{_where(path, f'normalization.{key}')} must hold finite numbers"
                                      f"{' > 0' if strict else ''}, got {list(values)!r:.80}")


def _training(value, path: str) -> None:
    _kind(value, dict, path, "training", "a dict")
    if value.get("method") is not None:
        _kind(value["method"], str, path, "training.method", "a string")
    for key, low in (("global_step", 0), ("k_current", 0), ("world_size", 1)):
        if value.get(key) is not None:
            header_int(value[key], path, f"training.{key}", low)


def validate_header(raw: dict, path: str, ours: bool) -> None:
    """The header of a classifier checkpoint (`raw`, already known to be a dict): every field of ours, and of
    a reference file the ones certifynet reads (a numeric `epoch`, a `noise` dict)."""
    if raw.get("epoch") is not None and (ours or _number(raw["epoch"])):
        header_int(raw["epoch"], path, "epoch")
    noise = raw.get("noise")
    if noise is not None and (ours or isinstance(noise, dict)):
        _kind(noise, dict, path, "noise", "a dict {'sigma', 'k'}")
        if noise.get("sigma") is not None:
            _finite(noise["sigma"], path, "noise.sigma")
        if noise.get("k") is not None:
            header_int(noise["k"], path, "noise.k")
    if not ours:
        return
    from certifynet.data import DATASETS, dataset_info
    for key in ("arch", "dataset", "version"):
        if raw.get(key) is not None:
            _kind(raw[key], str, path, key, "a string")
    if raw.get("dataset") is not None and raw["dataset"] not in DATASETS:
        raise CertifyNetError(f"{_where(path, 'dataset')} names an unknown dataset {raw['dataset']!r:.40} "
                              f"({', '.join(DATASETS)})")
    if raw.get("normalization") is not None:
        _normalization(raw["normalization"], path)
    if isinstance(raw.get("dataset"), str) and raw.get("num_classes") is not None:
        want = dataset_info(raw["dataset"]).num_classes
        if header_int(raw["num_classes"], path, "num_classes", 1) != want:
            raise CertifyNetError(f"{_where(path, 'num_classes')} is {raw['num_classes']}, but its dataset "
                                  f"'{raw['dataset']}' has {want} classes")
    for key in ("optimizer", "scheduler", "args"):
        if raw.get(key) is not None:
            _kind(raw[key], dict, path, key, "a dict")
    if raw.get("training") is not None:
        _training(raw["training"], path)


def _config(value, path: str) -> None:
    """A denoiser's architecture record: known name, sizes in DENOISER_LIMITS (they size the model built
    before any weight is read)."""
    _kind(value, dict, path, "config", "a dict")
    _kind(value.get("name"), str, path, "config.name", "a string")
    for key, (low, high) in DENOISER_LIMITS.items():
        v = value.get(key)
        for i, item in enumerate(v if isinstance(v, (list, tuple)) else [] if v is None else [v]):
            header_int(item, path, f"config.{key}" + (f"[{i}]" if isinstance(v, (list, tuple)) else ""), low, high)


def _sigma_spec(value, path: str) -> None:
    """{'values': [finite σ ...], 'mode': fixed | choice | uniform (optional)}: σ > 0 (a uniform range's low
    end ≥ 0)."""
    _kind(value, dict, path, "sigma", "a dict {'mode', 'values'}")
    if value.get("mode", "fixed") not in ("fixed", "choice", "uniform"):
        raise CertifyNetError(f"{_where(path, 'sigma.mode')} must be fixed, choice or uniform, "
                              f"got {value.get('mode')!r:.40}")
    values = _kind(value.get("values"), (list, tuple), path, "sigma.values", "a list of numbers")
    if not 1 <= len(values) <= 1000:
        raise CertifyNetError(f"{_where(path, 'sigma.values')} must hold 1 to 1000 values, got {len(values)}")
    for i, v in enumerate(values):
        _finite(v, path, f"sigma.values[{i}]", strict=not (value.get("mode") == "uniform" and i == 0))


def validate_denoiser_header(raw: dict, path: str) -> None:
    """The header of a denoiser file of ours (`config`, `sigma`, `objective`, `epoch`, ...)."""
    _config(raw.get("config"), path)
    if raw.get("sigma") is not None:
        _sigma_spec(raw["sigma"], path)
    if raw.get("objective") is not None:
        _kind(raw["objective"], str, path, "objective", "a string")
    if raw.get("epoch") is not None:
        header_int(raw["epoch"], path, "epoch")
    for key in ("optimizer", "scheduler", "args"):
        if raw.get(key) is not None:
            _kind(raw[key], dict, path, key, "a dict")

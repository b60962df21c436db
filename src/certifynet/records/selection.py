"""Which inputs a run covers: Cohen's selection (start, end, skip, max), then the contiguous shard i of n.

`select_indices` gives the dataset indices of a run, `select_rows` the rows of a counts file, `shard_part`
the i-th of n contiguous parts (sizes differ by at most one), `shard_path` the file of one shard.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from certifynet.errors import CertifyNetError


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise CertifyNetError(f"{name}={env[name]!r} is not an integer") from None


def _slurm_shard(env: Mapping[str, str]) -> tuple[int, int]:
    """(SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP of SLURM_ARRAY_TASK_COUNT."""
    i = _env_int(env, "SLURM_ARRAY_TASK_ID") - (_env_int(env, "SLURM_ARRAY_TASK_MIN")
                                                if env.get("SLURM_ARRAY_TASK_MIN") else 0)
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP") if env.get("SLURM_ARRAY_TASK_STEP") else 1
    if step < 1 or i % step:
        raise CertifyNetError(f"SLURM_ARRAY_TASK_ID {env['SLURM_ARRAY_TASK_ID']} is off the array's step {step}; "
                              "use a plain range such as --array=0-15, or pass {shard} i/n", "shard")
    return _checked_shard(i // step, _env_int(env, "SLURM_ARRAY_TASK_COUNT"), "SLURM_ARRAY_TASK_ID")


def parse_shard(text: str | None, env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """'i/n' → (i, n) with 0 ≤ i < n. Default: (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP
    of SLURM_ARRAY_TASK_COUNT when set (so --array=1-16 and --array=0-30:2 work too), else (0, 1)."""
    if text is None:
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            return _slurm_shard(env)
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise CertifyNetError(f"{{shard}} must look like i/n (e.g. 0/4), got '{text}'", "shard") from None
    return _checked_shard(i, n, "{shard}", "shard")


def _checked_shard(i: int, n: int, what: str, *names: str) -> tuple[int, int]:
    """(i, n) when 0 ≤ i < n; `what` names the source (an argument field given in `names`, or a variable)."""
    if n < 1 or not (0 <= i < n):
        raise CertifyNetError(f"{what}: shard {i} of {n} is out of range (need 0 <= i < n)", *names)
    return i, n


def check_selection(start: int = 0, end: int | None = None, skip: int = 1, max_count: int | None = None,
                    n_total: int | None = None) -> None:
    """One-line errors naming the argument at fault among start/end/skip/max (against the dataset size)."""
    if start < 0:
        raise CertifyNetError(f"{{start}} must be >= 0, got {start}", "start")
    if end is not None and end <= start:
        raise CertifyNetError(f"{{end}} ({end}) must be greater than {{start}} ({start})", "end", "start")
    if skip < 1:
        raise CertifyNetError(f"{{skip}} must be >= 1, got {skip}", "skip")
    if max_count is not None and max_count < 1:
        raise CertifyNetError(f"{{max}} must be >= 1, got {max_count}", "max")
    if n_total is not None and start >= n_total:
        raise CertifyNetError(f"{{start}} {start} is beyond the last input (the split has {n_total})", "start")


def select_indices(n_total: int, start: int = 0, end: int | None = None, skip: int = 1,
                   max_count: int | None = None, shard: tuple[int, int] = (0, 1)) -> list[int]:
    """Inputs start, start+skip, ... < end (at most max_count), then the contiguous part `shard` = (i, n)."""
    check_selection(start, end, skip, max_count, n_total if n_total > 0 else None)
    end = n_total if end is None else min(end, n_total)
    idx = list(range(start, end, skip))
    return shard_part(idx if max_count is None else idx[:max_count], shard)


def shard_part(items: Sequence, shard: tuple[int, int]) -> Sequence:
    """The i-th of n contiguous parts of `items` (sizes differ by at most one)."""
    i, n = shard
    return items[len(items) * i // n: len(items) * (i + 1) // n]


def select_rows(rows: list[dict], start: int = 0, end: int | None = None, skip: int = 1,
                max_count: int | None = None) -> list[dict]:
    """Rows (in file order) with start ≤ idx < end, then every skip-th of them, then at most max_count."""
    check_selection(start, end, skip, max_count)
    picked = [r for r in rows if int(r["idx"]) >= start and (end is None or int(r["idx"]) < end)][::skip]
    return picked if max_count is None else picked[:max_count]


def shard_path(path: str, shard: tuple[int, int]) -> str:
    """`results/x.tsv` → `results/x.shard2of4.tsv` for shard (2, 4); unchanged for a single shard."""
    i, n = shard
    if n == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.shard{i}of{n}{ext}"

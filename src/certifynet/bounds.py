"""Sizes that can never fit are refused before any work: one-line errors naming the flag (torch-free).

The checks are necessary conditions only, so they never refuse a run that could fit:

- **Noisy batches** (`check_batch_memory`): a forward pass holds at least `TENSORS_PER_ROW` float32 tensors
  of `rows × d` values (the input repeated, the noise, their sum). `rows × d × 4 B × TENSORS_PER_ROW` must not
  exceed the machine's physical memory (`memory_bytes`); a GPU has less, and the model's activations add more.
- **Sequential schedules** (`check_schedule_length`): the batches up to the cap N (doubling from 32 to
  --batch, then --batch each) are at most `MAX_SCHEDULE` (10⁶): `batch_schedule` builds them as an array.
- **Data-loader workers** (`check_workers`): at most `MAX_WORKERS` processes.
- **Checkpoint files** (`models.header.check_archive`): their uncompressed size is bounded before inflating.
"""
from __future__ import annotations

import math
import os

from certifynet.errors import CertifyNetError

FLOAT_BYTES = 4
TENSORS_PER_ROW = 3        # x repeated, δ, x + δ: the least a noisy forward pass holds
MAX_SCHEDULE = 10 ** 6     # batches of one sequential input
MAX_WORKERS = 256          # data-loader worker processes (each imports torch: ~0.3 GB)
# d of each dataset (`data.DATASETS`, which needs torch; tests keep the two equal) and the smallest of them
INPUT_DIMS = {"mnist5k": 784, "mnist": 784, "cifar10": 3 * 32 * 32, "imagenet": 3 * 224 * 224}
SMALLEST_INPUT = min(INPUT_DIMS.values())


def memory_bytes() -> int:
    """Physical memory of this machine ($CERTIFYNET_MEMORY_BYTES overrides it, e.g. for a cluster's limit)."""
    env = os.environ.get("CERTIFYNET_MEMORY_BYTES")
    if env:
        try:
            return max(1, int(float(env)))
        except ValueError:
            raise CertifyNetError(f"$CERTIFYNET_MEMORY_BYTES must be a number of bytes, got {env!r}") from None
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        return 1 << 40


def human_bytes(n: float) -> str:
    """1.5e12 → '1.5 TB' (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover


def input_dim(dataset: str | None) -> int:
    """d of `dataset` when it is known by name, else the smallest supported d (a lower bound)."""
    return INPUT_DIMS.get(dataset or "", SMALLEST_INPUT)


def check_batch_memory(rows: int, dim: int, names: tuple[str, ...] = ("batch",), what: str = "noisy copies") -> None:
    """Refuse `rows` noisy rows of d = `dim` values per forward pass when their float32 tensors alone exceed the
    physical memory. `names` are the arguments that set `rows` (named in the error)."""
    need = float(rows) * float(dim) * FLOAT_BYTES * TENSORS_PER_ROW
    have = memory_bytes()
    if need > have:
        fields = " × ".join(f"{{{n}}}" for n in names)
        raise CertifyNetError(f"{fields} asks for {rows:,} {what} of {dim:,} values per forward pass: at least "
                              f"{human_bytes(need)}, more than this machine's {human_bytes(have)} of memory; "
                              f"lower {fields}", *names)


def schedule_length(n_max: int, batch: int, first: int = 32) -> int:
    """How many batches `certify.sequential.batch_schedule(n_max, batch, first)` makes (without building it)."""
    n_max, batch = int(n_max), int(batch)
    if n_max < 1 or batch < 1:
        return 0
    size, total, count = min(int(first), batch), 0, 0
    while size < batch and total < n_max:  # the doubling part: at most log2(batch / first) batches
        total, count, size = total + size, count + 1, min(2 * size, batch)
    if total >= n_max:
        return count
    return count + math.ceil((n_max - total) / batch)


def check_schedule_length(n_max: int, batch: int, names: tuple[str, str] = ("N", "batch")) -> None:
    """Refuse a sequential run whose schedule would hold more than MAX_SCHEDULE batches."""
    steps = schedule_length(n_max, batch)
    if steps > MAX_SCHEDULE:
        raise CertifyNetError(f"{{{names[0]}}} {n_max:,} in batches of {{{names[1]}}} {batch:,} makes a sequential "
                              f"schedule of {steps:,} batches per input, more than {MAX_SCHEDULE:,}; raise "
                              f"{{{names[1]}}} or lower {{{names[0]}}}", *names)


def check_workers(workers: int, name: str = "workers") -> None:
    if workers > MAX_WORKERS:
        raise CertifyNetError(f"{{{name}}} {workers:,} data-loader processes cannot run (at most {MAX_WORKERS})",
                              name)


def check_run_sizes(config) -> None:
    """The sizes of a per-input run (a `SamplingConfig`) that could never fit: its noisy batch (d of its
    dataset when given, else the smallest d) and, sequentially, its schedule. Before anything is loaded."""
    check_batch_memory(config.batch, input_dim(config.dataset))
    if config.sequential:
        check_schedule_length(config.N, config.batch)

"""Distributed data parallel helpers for the training loop (``torchrun`` environment).

``torchrun --nproc_per_node=G scripts/train.py ...`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT in each worker. ``init_distributed`` reads them: with WORLD_SIZE > 1 it opens a process group
(nccl when the worker trains on CUDA, gloo on CPU) and pins worker r to ``cuda:LOCAL_RANK``; without them it
is a plain single-process run. Only rank 0 logs, prints a progress bar and writes checkpoints (``is_main``).

Noise is drawn from a per-rank ``torch.Generator`` seeded by ``rank_seed(seed, rank, stream)`` (a
SeedSequence hash), so ranks never share noise and a run is reproducible for a fixed world size.
"""
from __future__ import annotations

import datetime
import gc
import os
import traceback
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from certifynet.errors import CertifyNetError
from certifynet.sampling.device import resolve_device  # the one device resolver (also ddp.resolve_device)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank among world_size workers, its device and the process-group backend."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None          # 'nccl' | 'gloo' when distributed, else None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise CertifyNetError(f"environment variable {name}='{value}' is not an integer") from None


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Set up this worker from the torchrun environment (or a single process when WORLD_SIZE is unset/1)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise CertifyNetError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    distributed = world > 1
    dev = resolve_device(device, local_rank if distributed else None)
    if not distributed:
        return DistInfo(0, 1, 0, dev, None)
    if not dist.is_available():
        raise CertifyNetError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (ValueError, RuntimeError) as e:
            raise CertifyNetError(f"could not start the {backend} process group: {str(e).splitlines()[0]}") from e
    return DistInfo(rank, world, local_rank, dev, backend)


def is_main() -> bool:
    """True on rank 0, or when no process group is running."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op in a single process); returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s Python object on every rank (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_seed(seed: int, rank: int, *stream: int) -> int:
    """A 63-bit seed for (seed, rank, *stream); distinct streams and ranks give unrelated seeds."""
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, int(rank), *(int(s) for s in stream)]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel around `model` (already on info.device) when distributed, else the model."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP/DataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def release(exc: BaseException) -> None:
    """Let go of what a failed run's traceback holds before `cleanup`: its finished frames keep their locals
    alive (the DDP module in `train`'s run and in the epoch's frames), and a DDP module alive while the gloo
    group is torn down, with another rank not finished yet, can abort the process ("terminate called without
    an active exception"). The traceback keeps its lines; only the locals go. A no-op without a group."""
    if dist.is_available() and dist.is_initialized():
        traceback.clear_frames(exc.__traceback__)


def cleanup() -> None:
    """Destroy the process group if one is running (safe to call always), after collecting any DDP module
    that only a reference cycle still keeps (none may outlive the group: see `release`)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError):  # pragma: no cover - best effort at exit
            pass

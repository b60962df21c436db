"""A training run's data: the two splits (optionally fixed random subsets), their loaders, and the noise δ.

- **Subsets.** ``train_subset``/``test_subset`` pick the same images whatever ``seed`` is (`SUBSET_SEED`).
- **Order.** The train loader always goes through ``DistributedSampler(seed)`` (one process too), so
  ``set_epoch(t)`` fixes epoch t's order and a resumed run replays the uninterrupted one. The test split is
  sharded by rank without padding: each image is counted once.
- **Noise.** `NoiseSource` draws δ in [0,1] pixel space from ``certifynet.noise`` (the samplers of
  certification): N(0, σ²I) at k = 0, else the generalized Gaussian of the same σ; σ = 0 adds nothing.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from certifynet.data import get_dataset
from certifynet.noise import GaussianNoise, GeneralizedGaussianNoise
from certifynet.training import ddp
from certifynet.training.config import TrainConfig

SUBSET_SEED = 0  # --train-subset/--test-subset pick the same images whatever --seed is


def _subset(ds: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(SUBSET_SEED)
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].sort().values.tolist())


def load_datasets(cfg: TrainConfig, info: ddp.DistInfo) -> tuple[Dataset, Dataset]:
    """(train, test) datasets; with --download under DDP rank 0 fetches first and the others wait."""
    def get(split: str, download: bool) -> Dataset:
        return get_dataset(cfg.dataset, split, cfg.data_dir, download)

    if cfg.download and info.distributed and not info.is_main:
        ddp.barrier()
    train = get("train", cfg.download and info.is_main)
    test = get("test", cfg.download and info.is_main)
    if cfg.download and info.distributed and info.is_main:
        ddp.barrier()
    return _subset(train, cfg.train_subset), _subset(test, cfg.test_subset)


def make_loaders(train_set: Dataset, test_set: Dataset, cfg: TrainConfig,
                 info: ddp.DistInfo) -> tuple[DataLoader, DistributedSampler, DataLoader]:
    """Train loader (DistributedSampler over world_size ranks, even in one process) and a rank-sharded test loader."""
    per_rank = cfg.batch // info.world_size
    kw = {"num_workers": cfg.workers, "pin_memory": info.device.type == "cuda",
          "persistent_workers": cfg.workers > 0}
    sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    train = DataLoader(train_set, batch_size=per_rank, sampler=sampler, drop_last=False, **kw)
    test_idx = list(range(info.rank, len(test_set), info.world_size))  # no padding: each image counted once
    test = DataLoader(test_set, batch_size=per_rank, sampler=test_idx, **kw)
    return train, sampler, test


class NoiseSource:
    """δ for a batch at a given k (cached samplers), drawn from one generator; σ = 0 gives no noise."""

    def __init__(self, sigma: float, dim: int, generator: torch.Generator | None = None):
        self.sigma, self.dim, self.generator = sigma, dim, generator
        self._cache: dict[int, GaussianNoise | GeneralizedGaussianNoise] = {}

    def sampler(self, k: int) -> GaussianNoise | GeneralizedGaussianNoise:
        if k not in self._cache:
            self._cache[k] = GaussianNoise(self.sigma) if k == 0 else GeneralizedGaussianNoise(self.sigma, k, self.dim)
        return self._cache[k]

    def fn(self, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """x ↦ δ with δ ~ the noise of shape k (zeros when σ = 0)."""
        if self.sigma == 0:
            return torch.zeros_like
        noise, gen = self.sampler(k), self.generator
        return lambda x: noise.sample_like(x, gen)

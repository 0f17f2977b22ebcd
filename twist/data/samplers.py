"""A shuffling sampler whose order is a function of (seed, epoch) and that can start mid-epoch."""
from __future__ import annotations

from typing import Iterator

import torch


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` keys: a fresh permutation per epoch, split across ranks.

    Each rank takes every ``world_size``-th index of the permutation after it is truncated to a
    multiple of ``world_size * batch_size``, so every rank runs the same number of full batches.
    ``set_epoch(epoch, start_batch)`` skips the batches a resumed run has already trained on.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        usable = num_samples // (world_size * batch_size) * batch_size
        if usable == 0:
            raise ValueError(f"dataset of {num_samples} samples is smaller than one global batch "
                             f"({world_size} x {batch_size}); lower train.batch_size")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = usable
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        mine = order[: self.per_rank * self.world_size][self.rank:: self.world_size]
        for index in mine[self.start_batch * self.batch_size:].tolist():
            yield self.epoch, index

    def __len__(self) -> int:
        return self.per_rank - self.start_batch * self.batch_size

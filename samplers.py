"""Training and evaluation samplers: which samples each process reads, in which order.

Training batches are lists of :data:`DrawKey`; a draw's randomness is a function of its key alone
(``dataset.TrainingDraws``), so the batches below fix a run's data completely whatever the number of
DataLoader workers or processes, and resuming at global batch ``start`` continues the same stream.
"""
from __future__ import annotations

import itertools
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

DrawKey = tuple[int, int, int]  # (index into the training concatenation, epoch, position of the draw in that epoch)


class EndlessBatchSampler(Sampler[list[DrawKey]]):
    """This rank's training batches, epoch after epoch without end, starting at global batch ``start``.

    Epoch ``e``'s batches depend only on the seed and ``e``; batch ``k`` of the run is the same set of
    draws for any world size with the same global batch (each rank holds its share), which is what
    makes resumption exact (``start`` = the iterations done) and multi-process runs comparable.
    """

    batches_per_epoch: int

    def __init__(self, start: int = 0):
        self.start = start

    def epoch_batches(self, epoch: int) -> Iterator[list[DrawKey]]:
        """This rank's batches of epoch ``epoch``, a function of the seed and ``epoch`` only."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[DrawKey]]:
        epoch, skip = divmod(self.start, self.batches_per_epoch)
        while True:
            yield from itertools.islice(self.epoch_batches(epoch), skip, None)
            epoch, skip = epoch + 1, 0


class ShuffledBatchSampler(EndlessBatchSampler):
    """Uniform sampling without replacement over the concatenation (the official SIGA_R order):
    a :class:`DistributedSampler` shuffles each epoch (``set_epoch``) and deals the permutation out
    round-robin to the ranks; incomplete batches at the end of an epoch are dropped."""

    def __init__(self, dataset_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        super().__init__(start)
        self.sampler = DistributedSampler(range(dataset_size), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{dataset_size} training samples, fewer than one global batch of "
                             f"{batch_size} × {world_size} processes")

    def epoch_batches(self, epoch: int) -> Iterator[list[DrawKey]]:
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        size, world, rank = self.batch_size, self.world_size, self.rank
        for first in range(0, self.batches_per_epoch * size, size):
            yield [(order[q], epoch, q * world + rank) for q in range(first, first + size)]


class RatioBatchSampler(EndlessBatchSampler):
    """Global batches with a fixed share of each group (``--batch_ratio``), indices into their
    concatenation; each rank takes every ``world_size``-th slot of the global batch.

    Each group is drawn without replacement in its own shuffled order, restarting when exhausted;
    the epoch length is that of the largest group at its share.
    """

    def __init__(self, group_sizes: Sequence[int], ratios: Sequence[float], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start: int = 0):
        super().__init__(start)
        if len(group_sizes) != len(ratios):
            raise ValueError(f"{len(ratios)} batch ratios given for {len(group_sizes)} selected datasets")
        if any(size == 0 for size in group_sizes):
            raise ValueError(f"a selected dataset is empty (sizes {list(group_sizes)})")
        global_batch = batch_size * world_size
        shares = np.asarray(ratios, dtype=np.float64) / float(np.sum(ratios))
        counts = np.maximum(1, np.floor(shares * global_batch).astype(int))
        counts[int(np.argmax(shares))] += global_batch - counts.sum()
        self.counts = counts.tolist()
        self.sizes = list(group_sizes)
        self.offsets = np.concatenate([[0], np.cumsum(group_sizes)[:-1]]).tolist()
        self.seed, self.rank, self.world_size, self.global_batch = seed, rank, world_size, global_batch
        self.batches_per_epoch = max(-(-size // count) for size, count in zip(self.sizes, self.counts))

    def epoch_batches(self, epoch: int) -> Iterator[list[DrawKey]]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        streams = []
        for size, count, offset in zip(self.sizes, self.counts, self.offsets):
            repeats = -(-self.batches_per_epoch * count // size)
            order = torch.cat([torch.randperm(size, generator=generator) for _ in range(repeats)])
            streams.append(order[: self.batches_per_epoch * count].view(self.batches_per_epoch, count) + offset)
        slots = range(self.rank, self.global_batch, self.world_size)
        for number, row in enumerate(torch.cat(streams, 1).tolist()):
            yield [(row[slot], epoch, number * self.global_batch + slot) for slot in slots]


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, with no padding: the ranks' shards partition the
    dataset exactly, so summed results equal one process's."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = range(rank, size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

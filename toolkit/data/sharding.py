"""Even, seeded sharding of a dataset over ranks.

Training: every epoch a permutation seeded by (seed, epoch) is drawn identically on all
ranks, cut to a whole number of global batches (drop_last over world_size * batch_size),
and dealt round-robin. Every rank therefore runs exactly the same number of steps, which
collective-based strategies need to avoid stalls, and a resumed run sees the same order.
Evaluation: every sample is used exactly once across ranks (counts are summed later).
"""
import torch
from torch.utils.data import DataLoader


def steps_per_epoch(n_samples, batch_size, world_size):
    return n_samples // (batch_size * world_size)


def _epoch_permutation(n, seed, epoch):
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen)


def shard_indices(n, batch_size, rank, world_size, seed, epoch, train):
    """Index batches (lists of ints) for `rank`."""
    if train:
        steps = steps_per_epoch(n, batch_size, world_size)
        order = _epoch_permutation(n, seed, epoch)[: steps * batch_size * world_size]
        mine = order[rank::world_size].tolist()
    else:
        mine = list(range(rank, n, world_size))
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def shard_loader(dataset, batch_size, rank, world_size, seed, epoch, train, start_step=0):
    """A DataLoader over this rank's shard; len() is the number of steps.
    start_step skips batches already consumed (resuming in the middle of an epoch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if train and steps_per_epoch(len(dataset), batch_size, world_size) == 0:
        raise ValueError(f"batch size {batch_size} x {world_size} ranks exceeds the "
                         f"{len(dataset)} training samples: not one full step per epoch")
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    batches = shard_indices(len(dataset), batch_size, rank, world_size, seed, epoch, train)
    batches = batches[start_step:]
    return DataLoader(dataset, batch_sampler=batches, num_workers=0)

"""Batch samplers. ``ScaleBatchSampler``: single-scale batches for multi-scale integer training (IGConv).

Mirrors BasicSR's ``EnlargedRandomScaleSampler``: per epoch the indices are shuffled
(identically on every rank) and sharded over DDP ranks; each rank then draws one scale per mini-batch,
uniformly from ``scales`` and independently of the other ranks, and yields lists of ``(index, scale)``
for ``DataLoader(dataset, batch_sampler=sampler)`` with an ``sr-integer-downsampled`` dataset.

Everything is a function of (seed, epoch[, rank]): the permutation comes from
``PCG64(SeedSequence([seed, epoch], spawn_key=(1,)))`` and the scales of a rank from
``PCG64(SeedSequence([seed, epoch, rank], spawn_key=(2,)))`` (the spawn keys keep these streams apart
from the per-item generators of the wrappers). Call ``set_epoch(epoch)`` before each epoch.

Configs name it ``batch_sampler: {name: per-batch-random-scale, args: {scales: [2, 3, 4]}}``; build it
with ``make_batch_sampler`` (``scales`` default to the dataset's own ``scales``).
"""
import math

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from utils.untrusted import excerpt

from .registry import DatasetError, DatasetSpecError


def _rng(words, stream):
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words, spawn_key=(stream,))))


class ScaleBatchSampler(Sampler):
    """Yields batches ``[(index, scale), ...]`` with one scale per batch.

    Args:
        data_source: the dataset (or its length).
        batch_size: samples per batch (per rank).
        scales: the scales to draw from, uniformly, once per batch.
        seed: non-negative integer.
        shuffle: permute the indices every epoch (otherwise in order).
        drop_last: drop a final incomplete batch (the published behaviour).
        rank, world_size: DDP shard; by default taken from ``torch.distributed`` when initialised, else
            (0, 1). The permutation is truncated to a multiple of ``world_size`` so that shards are
            disjoint and equally long (every rank runs the same number of batches).
    """

    def __init__(self, data_source, batch_size, scales=(2, 3, 4), seed=0, shuffle=True, drop_last=True,
                 rank=None, world_size=None):
        self.num_samples = data_source if isinstance(data_source, int) else len(data_source)
        if rank is None or world_size is None:
            ddp = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if ddp else 0) if rank is None else rank
            world_size = (dist.get_world_size() if ddp else 1) if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise DatasetError(f'ScaleBatchSampler: need 0 <= rank < world_size, got rank {rank}, '
                               f'world_size {world_size}')
        if batch_size < 1 or not scales or seed < 0:
            raise DatasetError(f'ScaleBatchSampler: need batch_size >= 1, some scales and seed >= 0; '
                               f'got {batch_size}, {scales!r}, {seed}')
        self.batch_size, self.scales, self.seed = int(batch_size), list(scales), int(seed)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        if len(self) == 0:
            raise DatasetError(f'ScaleBatchSampler: {self.num_samples} samples make no batch of {batch_size} '
                               f'on each of {world_size} rank(s)')

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def shard(self):
        """This rank's indices for the current epoch (numpy int64 array)."""
        order = (_rng([self.seed, self.epoch], 1).permutation(self.num_samples) if self.shuffle
                 else np.arange(self.num_samples))
        per_rank = self.num_samples // self.world_size
        return order[:per_rank * self.world_size][self.rank::self.world_size]

    def __len__(self):
        per_rank = self.num_samples // self.world_size
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self):
        indices = self.shard()
        choice = _rng([self.seed, self.epoch, self.rank], 2).integers(len(self.scales), size=len(self))
        for b, k in enumerate(choice):
            scale = self.scales[int(k)]
            yield [(int(i), scale) for i in indices[b * self.batch_size:(b + 1) * self.batch_size]]


BATCH_SAMPLERS = {'per-batch-random-scale': ScaleBatchSampler}


def make_batch_sampler(spec, dataset, batch_size, seed=0, rank=0, world=1, shuffle=True):
    """Build a batch sampler from ``{'name': 'per-batch-random-scale'[, 'args': {scales, drop_last}]}``.

    ``scales`` default to ``dataset.scales`` (``sr-integer-downsampled``); ``drop_last`` defaults to
    ``shuffle`` (training drops the incomplete last batch, validation keeps every sample).
    """
    if not isinstance(spec, dict) or spec.get('name') not in BATCH_SAMPLERS:
        raise DatasetSpecError(f'unknown batch sampler {excerpt(spec, 100)}; registered batch samplers: '
                               f'{", ".join(BATCH_SAMPLERS)}')
    args = dict(spec.get('args') or {})
    unknown = sorted(set(args) - {'scales', 'drop_last'})
    if unknown:
        raise DatasetSpecError(f'batch sampler {spec["name"]!r} does not take argument(s) '
                               f'{", ".join(map(repr, unknown))}; it takes: scales, drop_last')
    scales = args.get('scales', getattr(dataset, 'scales', None))
    if scales is None:
        raise DatasetSpecError(f'batch sampler {spec["name"]!r} needs "scales" (the dataset has none)')
    return BATCH_SAMPLERS[spec['name']](dataset, batch_size, scales=scales, seed=seed, shuffle=shuffle,
                                        drop_last=args.get('drop_last', shuffle), rank=rank, world_size=world)

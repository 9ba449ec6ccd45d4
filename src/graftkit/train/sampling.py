"""Reproducible batches: the order of every epoch follows from the seed.

`EpochBatches` yields the batches of one epoch as lists of (epoch, index) keys,
from any batch position on (so a resumed run starts where the interrupted one
stopped) and, under DDP, only this rank's share. Each sample's own randomness
follows from its key (graftkit.data.seeding).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _mix(*xs: int) -> int:
    """The order's seed; not data.seeding.mix, so that every run keeps the batch order it had."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class EpochBatches(Sampler):
    def __init__(self, n: int, batch_size: int, seed: int, *, shuffle: bool = True, labels: Sequence[int] | None = None,
                 balanced: bool = False, rank: int = 0, world: int = 1, drop_last: bool = False, keep_all: bool = False):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.labels, self.balanced = shuffle, labels, balanced
        self.rank, self.world, self.drop_last, self.keep_all = rank, world, drop_last, keep_all
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(_mix(self.seed, epoch, 1))
        if self.balanced and self.labels is not None:
            # label shuffling: every class drawn up to the size of the largest one
            by_class: dict[int, list[int]] = {}
            for i, y in enumerate(self.labels):
                by_class.setdefault(int(y), []).append(i)
            most = max(len(v) for v in by_class.values())
            idx = []
            for _, members in sorted(by_class.items()):
                reps = -(-most // len(members))
                pool = torch.tensor(members * reps)
                idx += pool[torch.randperm(len(pool), generator=g)[:most]].tolist()
            idx = torch.tensor(idx)[torch.randperm(len(idx), generator=g)].tolist()
        elif self.shuffle:
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.world > 1:  # pad (wrapping round) so every rank gets as many samples, then deal
            total = -(-len(idx) // self.world) * self.world
            while len(idx) < total:
                idx = idx + idx[:total - len(idx)]
            idx = idx[self.rank::self.world]
        return idx

    def batches(self, epoch: int) -> list[list[int]]:
        idx = self.order(epoch)
        out = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        # a last batch of one breaks BatchNorm in training mode
        if not self.keep_all and out and (len(out[-1]) < self.batch_size and (self.drop_last or len(out[-1]) < 2)) and len(out) > 1:
            out.pop()
        return out

    def __len__(self) -> int:
        return max(0, len(self.batches(self.epoch)) - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b in self.batches(self.epoch)[self.start:]:
            yield [(self.epoch, i) for i in b]

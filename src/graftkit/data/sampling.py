"""Samplers for imbalanced data: class-balanced label shuffling and weighted sampling, seeded.

ClassBalancedSampler ("label shuffling", as in the ImageNet/Places-era Caffe
recipes): every epoch each class contributes as many draws as the largest class
has images - its own images in a shuffled order, repeated (each pass reshuffled)
until that count is reached - and the whole epoch is shuffled. Small classes are
seen more often, no image of a large class is dropped.

WeightedSampler: draws `num_samples` indices with replacement, with given
per-sample weights or inverse class frequency (each class equally likely).

Both are deterministic given (seed, epoch): call `set_epoch(e)` before each epoch;
the order does not depend on the number of DataLoader workers.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import GraftError


def _labels(labels) -> np.ndarray:
    a = np.asarray(getattr(labels, "targets", labels), dtype=np.int64)
    if a.ndim != 1 or len(a) == 0:
        raise GraftError("a sampler needs one integer label per sample", "pass dataset.targets")
    return a


class ClassBalancedSampler(Sampler[int]):
    def __init__(self, labels: Sequence[int], seed: int = 0):
        self.labels = _labels(labels)
        self.seed = int(seed)
        self.epoch = 0
        self.by_class = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        self.per_class = max(len(ix) for ix in self.by_class)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = []
        for ix in self.by_class:
            reps = -(-self.per_class // len(ix))
            drawn = np.concatenate([rng.permutation(ix) for _ in range(reps)])[: self.per_class]
            chunks.append(drawn)
        return rng.permutation(np.concatenate(chunks))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.per_class * len(self.by_class)


class WeightedSampler(Sampler[int]):
    def __init__(self, labels: Sequence[int] | None = None, weights: Sequence[float] | None = None,
                 num_samples: int | None = None, replacement: bool = True, seed: int = 0):
        if weights is None:
            if labels is None:
                raise GraftError("WeightedSampler needs labels or weights", "pass dataset.targets")
            lab = _labels(labels)
            counts = np.bincount(lab)
            weights = 1.0 / counts[lab]
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise GraftError("sampling weights must be finite, non-negative and not all zero", "check the weights")
        self.weights = torch.as_tensor(w)
        self.num_samples = int(num_samples or len(w))
        self.replacement = replacement
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.multinomial(self.weights, self.num_samples, self.replacement, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples

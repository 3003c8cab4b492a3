"""Batching: a TensorDataset of equal-length arrays and a seeded, shuffling DataLoader."""

from __future__ import annotations

import math

import numpy as np

from tinytorch.core.rng import generator


class TensorDataset:
    """Equal-length arrays indexed together: dataset[idx] -> tuple of arrays."""

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(np.asarray(a) for a in arrays)
        lengths = [len(a) for a in self.arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"TensorDataset arrays must have the same length, got lengths {lengths}")

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index) -> tuple:
        return tuple(a[index] for a in self.arrays)


class DataLoader:
    """Iterate over a dataset in batches (tuples of ndarrays).

    shuffle=True draws a new permutation each epoch from a generator seeded by `seed`
    (or from tinytorch's global generator when seed is None): the same seed gives the
    same sequence of batches, epoch after epoch.
    """

    def __init__(self, dataset, batch_size: int = 32, shuffle: bool = False, seed: int | None = None,
                 drop_last: bool = False):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset if hasattr(dataset, "__getitem__") and not isinstance(dataset, (tuple, list)) \
            else TensorDataset(*dataset)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.rng = np.random.default_rng(seed) if seed is not None else generator()

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.dataset[order[start : start + self.batch_size]]

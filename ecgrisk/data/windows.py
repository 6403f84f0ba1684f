"""Torch datasets over a cache: random crops for training, sliding windows for evaluation.

The benchmark protocol: train on random 2.5 s crops; evaluate on 2.5 s windows at 1.25 s
stride and aggregate the window outputs per record (max, or mean).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ecgrisk.data.cache import ECGCache
from ecgrisk.preprocess import Scaler
from ecgrisk.windowing import evaluation_windows


class CropDataset(Dataset):
    """One random crop per record per epoch: ``(x [leads, crop], y [C])``.

    ``y`` is an empty tensor for unlabeled caches. ``targets [records in the cache, C]``, when
    given, replaces the cache's labels as ``y`` (self-training: a teacher's probabilities for
    records without labels). Randomness comes from torch's generator, so Lightning's
    ``seed_everything(workers=True)`` makes crops reproducible.
    """

    def __init__(self, cache: ECGCache, indices: np.ndarray, crop: int, scaler: Scaler,
                 targets: np.ndarray | None = None):
        self.cache, self.indices, self.crop, self.scaler = cache, np.asarray(indices), crop, scaler
        self.targets = targets

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        n = int(self.cache.lengths[i])
        start = int(torch.randint(0, max(n - self.crop, 0) + 1, (1,)).item())
        x = self.scaler(self.cache.window(i, start, self.crop))
        y = _label(self.cache, i) if self.targets is None else torch.from_numpy(self.targets[i])
        return torch.from_numpy(x), y


class WindowDataset(Dataset):
    """Every evaluation window of the selected records: ``(x, y, k)``, ``k`` the window's index.

    ``positions[k]`` is the record's position within ``indices``; the evaluation step gathers
    ``k`` with the outputs (across DDP ranks too) and aggregates windows back into one prediction
    per record with :func:`ecgrisk.windowing.aggregate_windows`.
    """

    def __init__(self, cache: ECGCache, indices: np.ndarray, window: int, stride: int, scaler: Scaler):
        self.cache, self.indices, self.window, self.scaler = cache, np.asarray(indices), window, scaler
        lengths = np.asarray(cache.lengths)[self.indices.astype(np.int64)]
        self.starts, self.positions = evaluation_windows(lengths, window, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, k: int):
        i = int(self.indices[self.positions[k]])
        x = self.scaler(self.cache.window(i, int(self.starts[k]), self.window))
        return torch.from_numpy(x), _label(self.cache, i), k


def _label(cache: ECGCache, i: int) -> torch.Tensor:
    if cache.labels is None:
        return torch.zeros(0)
    return torch.from_numpy(cache.labels[i].astype(np.float32))

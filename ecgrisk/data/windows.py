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


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Start offsets of the evaluation windows of one record (one window when it is shorter)."""
    if length <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, length - window + 1, stride, dtype=np.int64)
    return starts


class CropDataset(Dataset):
    """One random crop per record per epoch: ``(x [leads, crop], y [C])``.

    ``y`` is an empty tensor for unlabeled caches. Randomness comes from torch's generator, so
    Lightning's ``seed_everything(workers=True)`` makes crops reproducible.
    """

    def __init__(self, cache: ECGCache, indices: np.ndarray, crop: int, scaler: Scaler):
        self.cache, self.indices, self.crop, self.scaler = cache, np.asarray(indices), crop, scaler

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        n = int(self.cache.lengths[i])
        start = int(torch.randint(0, max(n - self.crop, 0) + 1, (1,)).item())
        x = self.scaler(self.cache.window(i, start, self.crop))
        return torch.from_numpy(x), _label(self.cache, i)


class WindowDataset(Dataset):
    """Every evaluation window of the selected records: ``(x, y, k)``, ``k`` the window's index.

    ``positions[k]`` is the record's position within ``indices``; the evaluation step gathers
    ``k`` with the outputs (across DDP ranks too) and aggregates windows back into one prediction
    per record with :func:`aggregate_windows`.
    """

    def __init__(self, cache: ECGCache, indices: np.ndarray, window: int, stride: int, scaler: Scaler):
        self.cache, self.indices, self.window, self.scaler = cache, np.asarray(indices), window, scaler
        pos, starts = [], []
        for p, i in enumerate(self.indices):
            s = window_starts(int(cache.lengths[i]), window, stride)
            pos.append(np.full(len(s), p, dtype=np.int64))
            starts.append(s)
        self.positions = np.concatenate(pos) if pos else np.zeros(0, np.int64)
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)

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


def aggregate_windows(window_idx: torch.Tensor, logits: torch.Tensor, positions: np.ndarray,
                      n_records: int, how: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-record logits ``[n_records, C]`` from window logits ``[W, C]``, and which records had
    any window (all of them, unless evaluation was cut short by ``limit_*_batches``).

    ``window_idx`` are the datasets' ``k``; ``positions`` maps ``k`` to the record position.
    Windows seen twice (DDP pads its last batch by repeating samples) count once. Max over
    logits equals the logit of the max over probabilities (sigmoid is monotone), so this
    matches the benchmark's max over predicted probabilities.
    """
    window_idx = window_idx.long().cpu()
    uniq, first = np.unique(window_idx.numpy(), return_index=True)
    logits = logits[torch.from_numpy(first).to(logits.device)]
    positions = torch.from_numpy(np.asarray(positions)[uniq]).to(logits.device)
    C = logits.shape[1]
    if how == "max":
        out = torch.full((n_records, C), float("-inf"), dtype=logits.dtype, device=logits.device)
        out.scatter_reduce_(0, positions[:, None].expand(-1, C), logits, reduce="amax")
    elif how == "mean":
        probs = torch.sigmoid(logits)
        s = torch.zeros((n_records, C), dtype=probs.dtype, device=probs.device)
        s.index_add_(0, positions, probs)
        cnt = torch.bincount(positions, minlength=n_records).clamp(min=1).to(probs.dtype)
        p = (s / cnt[:, None]).clamp(1e-7, 1 - 1e-7)
        out = torch.log(p) - torch.log1p(-p)
    else:
        raise ValueError(f"aggregation must be 'max' or 'mean', got {how!r}")
    return out, torch.bincount(positions.cpu(), minlength=n_records).to(out.device) > 0

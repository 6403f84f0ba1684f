"""The ECGs refinement works on: evaluation windows embedded once by the frozen base encoder.

:class:`WindowSet` holds a set of records' window embeddings (and, for ``train="all"``, the
window signals); :mod:`ecgrisk.refine.pools` builds the sets the loop asks, guards and reports on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

@dataclass
class WindowSet:
    """The evaluation windows of a set of records, embedded once by the frozen base encoder.

    Attributes
    ----------
    record_ids
        ``N`` record ids (text).
    labels
        ``[N, C]`` 0/1 labels.
    positions
        ``[W]`` record position of each window.
    embeddings
        ``[W, D]`` float32 window embeddings (``encoder.embed``).
    inputs
        ``[W, leads, T]`` window signals, kept only for ``train="all"``.
    """

    record_ids: list[str]
    labels: np.ndarray
    positions: np.ndarray
    embeddings: Tensor
    inputs: Tensor | None = None
    _order: np.ndarray = field(init=False, repr=False)
    _bounds: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.int64)
        if len(self.positions) != len(self.embeddings):
            raise ValueError(f"positions [{len(self.positions)}] and embeddings "
                             f"[{len(self.embeddings)}] must have one entry per window")
        if len(self.labels) != len(self.record_ids):
            raise ValueError(f"labels [{len(self.labels)}] and record_ids "
                             f"[{len(self.record_ids)}] must have one entry per record")
        self._order = np.argsort(self.positions, kind="stable")
        self._bounds = np.searchsorted(self.positions[self._order], np.arange(len(self) + 1))
        if np.any(np.diff(self._bounds) == 0):
            raise ValueError("every record needs at least one window")

    def __len__(self) -> int:
        return len(self.record_ids)

    def windows_of(self, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows of ``records`` ``[n]``: window indices ``[m]`` and their positions in ``records``."""
        parts = [self._order[self._bounds[r]:self._bounds[r + 1]] for r in records]
        pos = np.repeat(np.arange(len(records)), [len(p) for p in parts])
        return np.concatenate(parts), pos

    def record_embeddings(self) -> np.ndarray:
        """``[N, D]`` float32: the mean of each record's window embeddings."""
        sums = torch.zeros(len(self), self.embeddings.shape[1])
        sums.index_add_(0, torch.from_numpy(self.positions), self.embeddings.float().cpu())
        counts = np.bincount(self.positions, minlength=len(self))
        return (sums.numpy() / counts[:, None]).astype(np.float32)

    def subset(self, records: Sequence[int]) -> WindowSet:
        """The records at ``records``, in that order."""
        records = np.asarray(records, dtype=np.int64)
        win, pos = self.windows_of(records)
        return WindowSet([self.record_ids[r] for r in records], self.labels[records], pos,
                         self.embeddings[win],
                         None if self.inputs is None else self.inputs[win])


@torch.no_grad()
def embed_windows(model: torch.nn.Module, dataset: Any, labels: np.ndarray,
                  record_ids: Sequence[str], batch_size: int = 256, keep_inputs: bool = False,
                  progress: str | None = None) -> WindowSet:
    """Embed every window of a :class:`~ecgrisk.data.windows.WindowDataset` once.

    Parameters
    ----------
    model
        An :class:`~ecgrisk.models.classifier.ECGClassifier` (its ``embed`` is used).
    dataset
        The windows (``(x [leads, T], y, k)`` items and ``positions``).
    labels, record_ids
        ``[N, C]`` labels and ``N`` ids of the dataset's records.
    progress
        A progress bar's description (None: no bar): a pool of thousands of ECGs takes minutes.
    """
    from torch.utils.data import DataLoader

    from ecgrisk.progress import progress_bar

    model.eval()
    embs, inputs, ks = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with progress_bar(len(loader), progress or "", progress is not None) as tick:
        for x, _, k in loader:
            embs.append(model.embed(x).float())
            ks.append(k.numpy())
            if keep_inputs:
                inputs.append(x)
            tick()
    k = np.concatenate(ks)
    return WindowSet(list(record_ids), np.asarray(labels), np.asarray(dataset.positions)[k],
                     torch.cat(embs), torch.cat(inputs) if keep_inputs else None)

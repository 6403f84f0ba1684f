"""The LightningDataModule every stage trains from: cache -> crops (train) / windows (eval)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset, DataLoader, WeightedRandomSampler

from ecgrisk.data.base import RecordSet
from ecgrisk.data.cache import ECGCache, get_or_build
from ecgrisk.data.sources import load_source
from ecgrisk.data.splits import (
    TEST_FOLDS,
    TRAIN_FOLDS,
    VAL_FOLDS,
    fold_indices,
    record_folds,
    train_fraction_subset,
)
from ecgrisk.data.windows import CropDataset, WindowDataset
from ecgrisk.preprocess import Preprocessing, Scaler

log = logging.getLogger(__name__)


class ECGDataModule(L.LightningDataModule):
    """Train on random crops, evaluate on sliding windows, from compiled caches.

    Parameters
    ----------
    sources : one RecordSet (labelled: fine-tuning) or several (pooled, labels ignored:
        pretraining). Sources without folds get stable hash folds 1-10.
    cache_dir : where cache entries live.
    preprocessing : resampling/filter settings baked into the cache.
    crop_s, window_s, stride_s : train crop length; eval window length and stride, in seconds.
    train_fraction, seed : a seeded stratified fraction of the training records, drawn by
        patient where the source knows patients (``RecordSet.groups``).
    scaler : a fitted Scaler to reuse (e.g. the fine-tuned bundle's); fitted on the training
        records when None.
    source_weights : per-record draw rate of each source in training epochs (pooled sources):
        a record of a weight-2 source is drawn twice as often as one of a weight-1 source, so a
        source's share of the draws is ``weight * records / sum(weight * records)``. An epoch
        still draws as many crops as there are training records, with replacement (some
        records twice, some not at all). None, or all 1: plain shuffling, every record once.
    """

    def __init__(self, sources: RecordSet | list[RecordSet], cache_dir: str | Path,
                 preprocessing: Preprocessing | None = None, batch_size: int = 128,
                 crop_s: float = 2.5, window_s: float = 2.5, stride_s: float = 1.25,
                 num_workers: int = 0, train_fraction: float = 1.0, seed: int = 0,
                 train_folds=TRAIN_FOLDS, val_folds=VAL_FOLDS, test_folds=TEST_FOLDS,
                 cache_workers: int = 2, scaler: Scaler | None = None, progress: bool = True,
                 source_weights: Sequence[float] | None = None):
        super().__init__()
        self.sources = [sources] if isinstance(sources, RecordSet) else list(sources)
        if not self.sources:
            raise ValueError("ECGDataModule needs at least one source")
        self.source_weights = [1.0] * len(self.sources) if source_weights is None else list(source_weights)
        if len(self.source_weights) != len(self.sources) or not all(
                math.isfinite(w) and w > 0 for w in self.source_weights):
            raise ValueError(f"ECGDataModule: source_weights must be one finite number > 0 per "
                             f"source ({len(self.sources)}), got {self.source_weights}")
        self.labelled = len(self.sources) == 1 and self.sources[0].labels is not None
        self.cache_dir, self.prep = Path(cache_dir), preprocessing or Preprocessing()
        self.batch_size, self.num_workers = batch_size, num_workers
        fs = self.prep.fs
        self.crop, self.window, self.stride = round(crop_s * fs), round(window_s * fs), round(stride_s * fs)
        self.train_fraction, self.seed = train_fraction, seed
        self.folds = {"train": tuple(train_folds), "val": tuple(val_folds), "test": tuple(test_folds)}
        shared = {f for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
                  for f in set(self.folds[a]) & set(self.folds[b])}
        if shared:
            raise ValueError(f"folds {sorted(shared)} are in more than one split of {self.folds}: "
                             "a record must not train and score the same model")
        self.cache_workers, self.progress = cache_workers, progress
        self.scaler = scaler
        self.caches: list[ECGCache] = []
        # self-training: the first cache's training targets, labels or a teacher's probabilities
        self.targets: np.ndarray | None = None
        self.teacher_labelled = np.zeros(0, dtype=np.int64)

    # -- setup --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Lightning calls this before every fit/validate/test; the caches open once per process
        if self.caches:
            return
        for s in self.sources:
            get_or_build(s, self.cache_dir, self.prep, self.cache_workers, self.progress)

    def setup(self, stage: str | None = None) -> None:
        if self.caches:
            return
        self.caches = [get_or_build(s, self.cache_dir, self.prep, self.cache_workers, self.progress)
                       for s in self.sources]
        self.split = {name: [self._indices(c, name) for c in self.caches] for name in self.folds}
        if self.labelled and self.train_fraction < 1:
            idx = self.split["train"][0]
            drawn = train_fraction_subset(self.caches[0].labels[idx], self.train_fraction, self.seed,
                                          self._groups(idx))
            self.split["train"][0] = idx[drawn]
        n = {k: sum(len(i) for i in v) for k, v in self.split.items()}
        if n["train"] == 0:
            raise ValueError(f"no training records in folds {self.folds['train']} of "
                             f"{[s.name for s in self.sources]}")
        if self.scaler is None:
            self.scaler = Scaler.fit(c.record(int(i)) for c, idx in zip(self.caches, self.split["train"], strict=True) for i in idx)
        log.info("records: %d train, %d val, %d test; scaler mean %.4f std %.4f",
                 n["train"], n["val"], n["test"], self.scaler.mean, self.scaler.std)

    def _indices(self, cache: ECGCache, split: str) -> np.ndarray:
        return fold_indices(record_folds(cache.folds, cache.record_ids), self.folds[split])

    def _groups(self, indices: np.ndarray) -> np.ndarray | None:
        """Group ids of the first cache's records at ``indices``, or None when the source has none.

        Looked up by record id: the cache leaves out records it could not read, so its positions
        are not the source's.
        """
        source = self.sources[0]
        if source.groups is None:
            return None
        group_of = dict(zip(source.record_ids, source.groups, strict=True))
        ids = self.caches[0].record_ids
        return np.asarray([group_of[ids[i]] for i in indices])

    def left_out(self) -> np.ndarray:
        """Cache positions of the first source's training-fold records that ``train_fraction``
        left out: the records a teacher labels for self-training."""
        return np.setdiff1d(self._indices(self.caches[0], "train"), self.split["train"][0])

    def add_teacher_targets(self, indices: np.ndarray, probs: np.ndarray) -> None:
        """Train also on the first cache's records at ``indices``, towards ``probs [len, C]``
        (a teacher's probabilities) rather than their labels, which stay unread."""
        indices = np.asarray(indices, dtype=np.int64)
        if probs.shape != (len(indices), len(self.classes)):
            raise ValueError(f"teacher targets: expected shape {(len(indices), len(self.classes))}, "
                             f"got {probs.shape}")
        if np.intersect1d(indices, self.split["train"][0]).size:
            raise ValueError("teacher targets: some records already train on their labels")
        if self.targets is None:
            self.targets = self.caches[0].labels.astype(np.float32)
        self.targets[indices] = probs
        self.teacher_labelled = np.union1d(self.teacher_labelled, indices)
        self.split["train"][0] = np.union1d(self.split["train"][0], indices)

    # -- what the stages read -----------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self.caches[0].classes if self.labelled else []

    def eval_dataset(self, split: str) -> WindowDataset:
        """The windows of ``split`` ('val' or 'test') of the first source."""
        return WindowDataset(self.caches[0], self.split[split][0], self.window, self.stride, self.scaler)

    def labels(self, split: str) -> np.ndarray:
        """The first source's labels of ``split``; for 'train', the targets it trains towards."""
        labels = self.targets if split == "train" and self.targets is not None else self.caches[0].labels
        return labels[self.split[split][0]]

    def record_ids(self, split: str) -> list[str]:
        c = self.caches[0]
        return [c.record_ids[i] for i in self.split[split][0]]

    # -- loaders ------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        targets = [self.targets] + [None] * (len(self.caches) - 1)
        kept = [(CropDataset(c, idx, self.crop, self.scaler, t), w) for c, idx, w, t in
                zip(self.caches, self.split["train"], self.source_weights, targets, strict=True)
                if len(idx)]
        parts = [part for part, _ in kept]
        ds = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        drop_last = len(ds) > self.batch_size
        if all(w == 1 for _, w in kept):
            return self._loader(ds, shuffle=True, drop_last=drop_last)
        rates = torch.cat([torch.full((len(part),), float(w), dtype=torch.float64) for part, w in kept])
        # torch's global generator, as shuffling uses: seed_everything makes the draws reproducible
        sampler = WeightedRandomSampler(rates, num_samples=len(ds), replacement=True)
        return self._loader(ds, shuffle=False, drop_last=drop_last, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("test"), shuffle=False)

    def _loader(self, ds, shuffle: bool, drop_last: bool = False, sampler=None) -> DataLoader:
        return data_loader(ds, self.batch_size, self.num_workers, shuffle=shuffle,
                           drop_last=drop_last, sampler=sampler,
                           persistent_workers=self.num_workers > 0)


def data_loader(dataset, batch_size: int, num_workers: int, **kwargs) -> DataLoader:
    """A DataLoader whose worker processes are spawned, never forked.

    A forked worker inherits every lock another thread of this process held at that instant,
    and training processes have such threads (DDP's gloo threads, the queue feeders of a loader
    already running): on 2 CPU ranks the validation loader's worker of rank 0 once never ran a
    line of Python, and both ranks waited for ever (tests/test_kill_safety.py, 1 run in 13 to
    55). A spawned worker starts an interpreter and imports what the command imports (torch,
    lightning: 3-4 s of CPU here), once per fit with persistent workers.
    """
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      multiprocessing_context="spawn" if num_workers > 0 else None, **kwargs)


def build_datamodule(data: DictConfig, seed: int, scaler: Scaler | None = None,
                     progress: bool = True) -> ECGDataModule:
    """The labelled DataModule a ``data`` config node (``conf/data/*.yaml``) describes."""
    node = OmegaConf.to_container(data, resolve=True)
    records = load_source(**node)
    if records.labels is None:
        raise ValueError(f"data.source={node['source']} ({node['root']}) has no labels to train or "
                         f"evaluate a classifier on; an unlabeled folder is for pretraining "
                         f"(ecgrisk-pretrain data={node['source']} data.root=...)")
    return ECGDataModule(
        records, cache_dir=data.cache_dir,
        preprocessing=Preprocessing.from_dict(node["preprocessing"]),
        batch_size=data.batch_size, crop_s=data.crop_s, window_s=data.window_s, stride_s=data.stride_s,
        num_workers=data.num_workers, train_fraction=data.train_fraction, seed=seed,
        train_folds=data.train_folds, val_folds=data.val_folds, test_folds=data.test_folds,
        cache_workers=data.cache_workers, scaler=scaler, progress=progress)

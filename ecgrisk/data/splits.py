"""Train/validation/test selection: official folds, stable folds for fold-less sources, label fractions."""

from __future__ import annotations

import hashlib

import numpy as np

TRAIN_FOLDS = (1, 2, 3, 4, 5, 6, 7, 8)
VAL_FOLDS = (9,)
TEST_FOLDS = (10,)


def stable_folds(record_ids: list[str]) -> np.ndarray:
    """Folds 1-10 from a hash of each id: fold-less sources get the same 8/1/1 split, reproducibly."""
    return np.asarray(
        [int(hashlib.md5(r.encode()).hexdigest(), 16) % 10 + 1 for r in record_ids], dtype=np.int64
    )


def fold_indices(folds: np.ndarray, which) -> np.ndarray:
    return np.flatnonzero(np.isin(folds, np.asarray(which)))


def label_fraction_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Positions of a seeded, stratified ``fraction`` of the rows of ``labels [n, C]``.

    Multi-label stratification by each row's rarest positive class: rows are grouped by it
    (unlabeled rows form one group) and every group keeps ``ceil(fraction * size)`` rows, so rare
    classes survive small fractions. Nested: a smaller fraction is a subset of a larger one
    under the same seed, which keeps label-efficiency curves comparable.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    n = len(labels)
    if fraction == 1 or n == 0:
        return np.arange(n)
    labels = np.asarray(labels, dtype=bool)
    freq = labels.sum(axis=0)
    rank = np.where(labels, freq[None, :], np.iinfo(np.int64).max)
    group = np.where(labels.any(axis=1), rank.argmin(axis=1), -1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)  # one permutation shared by all fractions -> nested subsets
    keep = []
    for g in np.unique(group):
        members = order[group[order] == g]
        keep.append(members[: int(np.ceil(fraction * len(members)))])
    return np.sort(np.concatenate(keep))

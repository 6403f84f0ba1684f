"""Train/validation/test selection: official folds, stable folds for fold-less sources, training fractions."""

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


def record_folds(folds: np.ndarray | None, record_ids: list[str]) -> np.ndarray:
    """Each record's fold: the source's own (``folds``), else :func:`stable_folds`."""
    return np.asarray(folds) if folds is not None else stable_folds(record_ids)


def fold_indices(folds: np.ndarray, which) -> np.ndarray:
    return np.flatnonzero(np.isin(folds, np.asarray(which)))


def train_fraction_subset(labels: np.ndarray, fraction: float, seed: int = 0,
                          groups: np.ndarray | None = None) -> np.ndarray:
    """Positions of a seeded, stratified ``fraction`` of the rows of ``labels``, drawn by group.

    Parameters
    ----------
    labels : ``[n, C]`` 0/1 multi-hot rows (the training records).
    fraction : in (0, 1]; the share of groups kept in every stratum.
    seed : the draw's seed.
    groups : ``[n]`` group id of each row (PTB-XL: the patient); a group's rows are all kept or
        all dropped, so no patient is on both sides. None: each row is its own group.

    Returns
    -------
    np.ndarray
        ``[m]`` sorted int positions into ``labels``; the rows not listed are the complement.

    Notes
    -----
    Multi-label stratification by each group's rarest positive class (a group's labels are the
    union over its rows; unlabeled groups form one stratum), and every stratum keeps
    ``ceil(fraction * groups in it)`` groups, so rare classes survive small fractions. Nested: a
    smaller fraction is a subset of a larger one under the same seed, which keeps
    label-efficiency curves comparable.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels, dtype=bool)
    n = len(labels)
    if fraction == 1 or n == 0:
        return np.arange(n)
    if groups is None:
        member, per_group = np.arange(n), labels
    else:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} group ids for {n} rows")
        _, member = np.unique(np.asarray(groups), return_inverse=True)
        per_group = np.zeros((member.max() + 1, labels.shape[1]), dtype=bool)
        np.logical_or.at(per_group, member, labels)
    freq = per_group.sum(axis=0)
    rank = np.where(per_group, freq[None, :], np.iinfo(np.int64).max)
    stratum = np.where(per_group.any(axis=1), rank.argmin(axis=1), -1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(per_group))  # one permutation shared by all fractions -> nested
    keep = []
    for s in np.unique(stratum):
        members = order[stratum[order] == s]
        keep.append(members[: int(np.ceil(fraction * len(members)))])
    return np.flatnonzero(np.isin(member, np.concatenate(keep)))

"""The one shape every dataset takes before it enters the cache: a list of records with labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RecordSet:
    """Records of one source, aligned by position.

    Attributes
    ----------
    name : short source name (``"ptbxl"``, ``"challenge"``, ``"folder"``, ``"synthetic"``).
    record_ids : ``[n]`` unique ids within the source (PTB-XL: the ``ecg_id`` as a string).
    paths : ``[n]`` paths ``read_ecg`` accepts (WFDB records without extension are fine).
    classes : label names in column order; empty for unlabeled sources.
    labels : ``[n, len(classes)]`` uint8 0/1, or None when unlabeled.
    folds : ``[n]`` int fold numbers (PTB-XL ``strat_fold``), or None.
    missing : ids listed by the source whose files are absent (already excluded above).
    groups : ``[n]`` group id of each record (PTB-XL: the patient), so that a training fraction
        keeps or drops a patient's records together; None: each record is its own group.
    attributes : per record, what a model is checked within where the source knows it
        (PTB-XL: ``age``, ``sex``, ``site``, ``device``), ``name -> [n]`` values, None where a
        record has none; the review band is fitted within their groups (``review_by``).
    """

    name: str
    record_ids: list[str]
    paths: list[str]
    classes: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    folds: np.ndarray | None = None
    missing: list[str] = field(default_factory=list)
    groups: np.ndarray | None = None
    attributes: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.record_ids)

    def __post_init__(self) -> None:
        n = len(self.record_ids)
        if len(self.paths) != n:
            raise ValueError(f"{self.name}: {n} record ids but {len(self.paths)} paths")
        if self.labels is not None and self.labels.shape != (n, len(self.classes)):
            raise ValueError(f"{self.name}: labels shape {self.labels.shape} != ({n}, {len(self.classes)})")
        if self.folds is not None and len(self.folds) != n:
            raise ValueError(f"{self.name}: {len(self.folds)} folds for {n} records")
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"{self.name}: {len(self.groups)} group ids for {n} records")
        for name, values in self.attributes.items():
            if len(values) != n:
                raise ValueError(f"{self.name}: {len(values)} values of {name!r} for {n} records")

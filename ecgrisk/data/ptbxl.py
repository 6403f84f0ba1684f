"""PTB-XL index with labels built exactly as the published benchmark builds them.

The label rules follow Strodthoff et al. 2021 (helme/ecg_ptbxl_benchmarking,
``code/utils/utils.py``: ``compute_label_aggregations`` then ``select_data`` with
``min_samples=0``): every key of ``scp_codes`` counts whatever its likelihood (0.0 included),
statements are mapped through ``scp_statements.csv``, records left without a label are dropped
and the classes are the sorted label names (``MultiLabelBinarizer`` order).

A stricter labelling convention (``min_likelihood``: a statement counts only when the reading
cardiologist gave it at least that likelihood) relabels those same records with those same
classes, so models trained under either convention are compared on one record set.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ecgrisk.data.base import RecordSet
from ecgrisk.data.splits import TEST_FOLDS, TRAIN_FOLDS, VAL_FOLDS, fold_indices

log = logging.getLogger(__name__)

TASKS = ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")
DATABASE_CSV = "ptbxl_database.csv"
STATEMENTS_CSV = "scp_statements.csv"
FILENAME_COLUMN = {100: "filename_lr", 500: "filename_hr"}


def _is_set(value) -> bool:
    # scp_statements.csv marks membership with 1.0 and leaves the cell empty otherwise
    return value == 1.0


def statement_labels(scp_codes: dict, statements: pd.DataFrame, task: str,
                     min_likelihood: float = 0) -> list[str]:
    """Labels of one record for ``task``, as the benchmark's ``compute_label_aggregations``.

    Parameters
    ----------
    scp_codes : ``{statement: likelihood}`` of one record, likelihood 0-100.
    statements : ``scp_statements.csv`` indexed by statement code.
    task : one of :data:`TASKS`.
    min_likelihood : statements with a lower likelihood are left out; 0 (the benchmark's rule)
        counts every key.

    Returns
    -------
    list of str
        Sorted, de-duplicated labels; empty when the record has none for this task.
    """
    if task not in TASKS:
        raise ValueError(f"unknown PTB-XL task {task!r}; choose one of {TASKS}")
    if min_likelihood:
        scp_codes = {k: p for k, p in scp_codes.items() if p >= min_likelihood}
    if task == "all":
        return sorted(set(scp_codes))
    column = "diagnostic" if task in ("diagnostic", "subdiagnostic", "superdiagnostic") else task
    labels = set()
    for key in scp_codes:
        if key not in statements.index or not _is_set(statements.at[key, column]):
            continue
        if task == "subdiagnostic":
            value = statements.at[key, "diagnostic_subclass"]
        elif task == "superdiagnostic":
            value = statements.at[key, "diagnostic_class"]
        else:
            value = key
        if isinstance(value, str) and value:
            labels.add(value)
    return sorted(labels)


def _read_csvs(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    db_path, st_path = root / DATABASE_CSV, root / STATEMENTS_CSV
    absent = [p.name for p in (db_path, st_path) if not p.is_file()]
    if absent:
        raise FileNotFoundError(
            f"PTB-XL root {root} lacks {' and '.join(absent)}; expected the PhysioNet layout "
            f"(ptbxl_database.csv, scp_statements.csv, records100/, records500/). "
            f"Fetch it with `ecgrisk download ptbxl --root {root}`."
        )
    db = pd.read_csv(db_path)
    needed = {"ecg_id", "patient_id", "scp_codes", "strat_fold", *FILENAME_COLUMN.values()}
    lacking = needed - set(db.columns)
    if lacking:
        raise ValueError(f"{db_path}: missing columns {sorted(lacking)}")
    statements = pd.read_csv(st_path, index_col=0)
    lacking = {"diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"} - set(
        statements.columns
    )
    if lacking:
        raise ValueError(f"{st_path}: missing columns {sorted(lacking)}")
    return db, statements


class PTBXL(RecordSet):
    """The PTB-XL records present under ``root``, labelled for one benchmark task.

    Parameters
    ----------
    root : folder in PhysioNet's layout (``ptbxl_database.csv``, ``scp_statements.csv``,
        ``records100/``, ``records500/``). A partial copy is fine: rows whose ``.hea``/``.dat``
        are absent are listed in ``missing`` and skipped.
    task : one of :data:`TASKS`.
    fs : 100 (``filename_lr``) or 500 (``filename_hr``).
    min_likelihood : 0-100; above 0 a statement counts only at that likelihood or higher. The
        records and classes stay those of the benchmark's rule (0), so a record may be left
        with no positive label.

    Attributes
    ----------
    record_ids : ``[n]`` ``ecg_id`` as strings, in CSV order.
    paths : ``[n]`` absolute record paths without extension.
    classes : ``[C]`` sorted label names of this task seen on the present records.
    labels : ``[n, C]`` uint8 multi-hot under ``min_likelihood``.
    folds : ``[n]`` int ``strat_fold`` (1-10).
    groups : ``[n]`` ``patient_id`` as strings.
    meta : the kept rows of ``ptbxl_database.csv`` (``scp_codes`` parsed to dicts), ``[n]`` rows.
    unlabeled : ids present on disk but without any label for this task (dropped, as the
        benchmark drops them).
    """

    TASKS = TASKS

    def __init__(self, root: str | Path, task: str = "superdiagnostic", fs: int = 100,
                 min_likelihood: float = 0):
        if task not in TASKS:
            raise ValueError(f"unknown PTB-XL task {task!r}; choose one of {TASKS}")
        if fs not in FILENAME_COLUMN:
            raise ValueError(f"PTB-XL fs must be 100 or 500, got {fs!r}")
        if not 0 <= min_likelihood <= 100:
            raise ValueError(f"PTB-XL min_likelihood must be in [0, 100], got {min_likelihood!r}")
        root = Path(root).expanduser().resolve()
        db, statements = _read_csvs(root)
        column = FILENAME_COLUMN[fs]

        paths = [root / str(f) for f in db[column]]
        present = np.array(
            [Path(f"{p}.hea").is_file() and Path(f"{p}.dat").is_file() for p in paths],
            dtype=bool,
        )
        ids = db["ecg_id"].astype(int).astype(str).to_numpy()
        missing = ids[~present].tolist()
        if not present.any():
            raise FileNotFoundError(
                f"PTB-XL root {root}: none of the {len(db)} records listed in {DATABASE_CSV} "
                f"has its {column} files (<path>.hea and <path>.dat, e.g. {paths[0]}.hea)"
                if paths else f"PTB-XL root {root}: {DATABASE_CSV} lists no records"
            )
        if missing:
            log.warning(
                "PTB-XL %s: %d of %d records listed in %s are absent (%s files); using the %d present",
                root, len(missing), len(db), DATABASE_CSV, column, int(present.sum()),
            )

        kept = db[present].reset_index(drop=True)
        kept["scp_codes"] = [_parse_codes(s, i) for s, i in zip(kept["scp_codes"], kept["ecg_id"], strict=True)]
        per_record = [statement_labels(c, statements, task) for c in kept["scp_codes"]]
        has_label = np.array([len(x) > 0 for x in per_record], dtype=bool)
        kept_paths = [str(p) for p, ok in zip(paths, present, strict=True) if ok]

        meta = kept[has_label].reset_index(drop=True)
        per_record = [x for x, ok in zip(per_record, has_label, strict=True) if ok]
        classes = sorted({c for x in per_record for c in x})

        self.root = root
        self.task = task
        self.fs = fs
        self.min_likelihood = min_likelihood
        self.meta = meta
        self._statements = statements
        # records and classes above come from the benchmark's rule; only the labels change
        labels = (self.labels_under(min_likelihood, classes) if min_likelihood
                  else _multi_hot(per_record, classes))
        self.unlabeled = kept.loc[~has_label, "ecg_id"].astype(int).astype(str).tolist()
        super().__init__(
            name="ptbxl",
            record_ids=meta["ecg_id"].astype(int).astype(str).tolist(),
            paths=[p for p, ok in zip(kept_paths, has_label, strict=True) if ok],
            classes=classes,
            labels=labels,
            folds=meta["strat_fold"].astype(int).to_numpy(),
            missing=missing,
            groups=meta["patient_id"].astype(int).astype(str).to_numpy(),
            attributes=attributes(meta),
        )

    def labels_under(self, min_likelihood: float, classes: list[str] | None = None) -> np.ndarray:
        """These records' ``[n, C]`` labels under another likelihood rule, same records and
        classes: what a model trained under one convention learned, beside data read under
        another (refinement's replay in the house-style scenario)."""
        if not 0 <= min_likelihood <= 100:
            raise ValueError(f"PTB-XL min_likelihood must be in [0, 100], got {min_likelihood!r}")
        return _multi_hot([statement_labels(c, self._statements, self.task, min_likelihood)
                           for c in self.meta["scp_codes"]], classes or self.classes)

    def split_indices(
        self,
        train_folds: tuple[int, ...] = TRAIN_FOLDS,
        val_folds: tuple[int, ...] = VAL_FOLDS,
        test_folds: tuple[int, ...] = TEST_FOLDS,
    ) -> dict[str, np.ndarray]:
        """Positions of the official splits (folds 1-8 train, 9 validation, 10 test).

        Returns
        -------
        dict
            ``{"train", "val", "test"}`` -> ``[n_split]`` int64 positions into this set.
        """
        return {name: fold_indices(self.folds, which).astype(np.int64)
                for name, which in (("train", train_folds), ("val", val_folds), ("test", test_folds))}

    def __repr__(self) -> str:
        return (
            f"PTBXL(root={str(self.root)!r}, task={self.task!r}, fs={self.fs}, "
            f"min_likelihood={self.min_likelihood}, "
            f"records={len(self)}, classes={len(self.classes)}, missing={len(self.missing)})"
        )


def attributes(meta: pd.DataFrame, with_folds: bool = False) -> dict[str, list]:
    """Per row of ``ptbxl_database.csv``, what a model is checked within: ``sex`` (male,
    female), ``age`` (90 for PTB-XL's ages over 89), ``site`` and ``device``; with
    ``with_folds`` also ``fold`` and ``patient``. None where the database has no value."""
    sex = {0: "male", 1: "female"}
    read = {
        "sex": ("sex", lambda s: sex.get(int(s))),
        "age": ("age", lambda a: min(float(a), 90.0)),  # PTB-XL stores ages over 89 as 300
        "site": ("site", float),
        "device": ("device", lambda d: str(d).strip()),
    }
    if with_folds:
        read.update(fold=("strat_fold", float), patient=("patient_id", float))
    return {name: [None if v != v else f(v) for v in meta[col]]
            for name, (col, f) in read.items() if col in meta}


def task_labels(root: str | Path, task: str) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """Every labelled record of ``ptbxl_database.csv`` for ``task``, whether or not its signal
    files are present (evaluating scores needs the labels, not the signals).

    Returns
    -------
    ``(meta, classes, labels)``: the database rows kept by the benchmark's rule, the sorted
    classes seen on them, and their ``[n, C]`` uint8 multi-hot labels.
    """
    if task not in TASKS:
        raise ValueError(f"unknown PTB-XL task {task!r}; choose one of {TASKS}")
    db, statements = _read_csvs(Path(root).expanduser().resolve())
    per_record = [statement_labels(_parse_codes(s, i), statements, task)
                  for s, i in zip(db["scp_codes"], db["ecg_id"], strict=True)]
    kept = np.array([len(x) > 0 for x in per_record], dtype=bool)
    per_record = [x for x, ok in zip(per_record, kept, strict=True) if ok]
    classes = sorted({c for x in per_record for c in x})
    return db[kept].reset_index(drop=True), classes, _multi_hot(per_record, classes)


def _multi_hot(per_record: list[list[str]], classes: list[str]) -> np.ndarray:
    col = {c: j for j, c in enumerate(classes)}
    labels = np.zeros((len(per_record), len(classes)), dtype=np.uint8)
    for i, x in enumerate(per_record):
        labels[i, [col[c] for c in x]] = 1
    return labels


def _parse_codes(text: str, ecg_id) -> dict:
    try:
        codes = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"{DATABASE_CSV}: ecg_id {ecg_id} has unreadable scp_codes {text!r}") from err
    if not isinstance(codes, dict):
        raise ValueError(f"{DATABASE_CSV}: ecg_id {ecg_id} scp_codes is not a dict: {text!r}")
    return codes

"""Age and sex of PTB-XL records, from the database CSV that ships beside the records.

The review page shows the patient's age and sex beside each ECG. ``read_ecg`` gives them where
the file carries them (Challenge/MIT-BIH header comments, the clinical exports), but PTB-XL's
WFDB headers have none: PTB-XL keeps them in ``ptbxl_database.csv`` (``age`` in years, ``sex``
0 = male, 1 = female). When ``--data`` is a PTB-XL folder, or a folder inside one, this reads
them from there.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

DATABASE_CSV = "ptbxl_database.csv"
# PTB-XL writes 300 for every patient older than 89 (HIPAA safe harbour): shown as 90+
HIPAA_AGE, OLDEST_SHOWN = 300.0, 90.0
_SEX = {"0": "M", "1": "F"}
_LEVELS_UP = 3  # records100/00000/ is two folders below the CSV; one more for a copied root


def find_database_csv(data_dir: str | os.PathLike) -> Path | None:
    """``ptbxl_database.csv`` in ``data_dir`` or one of its nearest parents, else None."""
    here = Path(data_dir).expanduser().resolve()
    for folder in [here, *here.parents][: _LEVELS_UP + 1]:
        if (folder / DATABASE_CSV).is_file():
            return folder / DATABASE_CSV
    return None


def _age(text: str) -> float | None:
    try:
        age = float(text)
    except ValueError:
        return None
    if not math.isfinite(age) or age < 0:
        return None
    return OLDEST_SHOWN if age >= HIPAA_AGE else age


def ptbxl_demographics(data_dir: str | os.PathLike) -> dict[str, tuple[float | None, str | None]]:
    """``record path (resolved, no extension) -> (age, sex)`` from PTB-XL's database CSV.

    Both sampling rates' records (``filename_lr``, ``filename_hr``) are listed; the path is the
    one :class:`~ecgrisk.data.folder.ECGFolder` gives a WFDB record. Empty when no CSV is found
    or it lacks the columns (a warning says which).

    Returns
    -------
    dict
        ``age`` in years (90 for PTB-XL's "older than 89") or None; ``sex`` ``"M"``, ``"F"``
        or None.
    """
    path = find_database_csv(data_dir)
    if path is None:
        return {}
    out: dict[str, tuple[float | None, str | None]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        needed = {"age", "sex", "filename_lr", "filename_hr"}
        lacking = needed - set(reader.fieldnames or ())
        if lacking:
            log.warning("%s lacks column(s) %s: age and sex not shown", path, sorted(lacking))
            return {}
        for row in reader:
            info = (_age(row["age"]), _SEX.get(row["sex"].strip().split(".")[0]))
            for column in ("filename_lr", "filename_hr"):
                if row[column]:
                    out[os.path.normpath(path.parent / row[column])] = info
    return out

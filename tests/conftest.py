"""Data fixtures: the real records in ../shared/data where present, synthetic stand-ins elsewhere.

``ptbxl_root`` and ``challenge_root`` are the shared PTB-XL subset and CinC 2021 sample when
../shared/data holds them, and otherwise synthetic trees in the same file layouts, built once per
session, so the end-to-end tests (fine-tuning, pretraining, refinement, scoring, review) run on
every machine. Assert only what holds for both through them; facts true of the real records alone
(counts, a record's labels) belong in tests that ask for ``real_ptbxl_root`` or ``shared``, which
skip without it. ``ptbxl_split_sizes`` gives the record counts a run should see, whichever tree.

``ECGRISK_SHARED_DATA=none`` makes these fixtures act as if ../shared/data were absent, to run the
synthetic path on a machine that has the data (tests only; ``ecgrisk.paths.shared_data`` ignores
it): ``ECGRISK_SHARED_DATA=none .venv/bin/python -m pytest``.
"""

from __future__ import annotations

import ast
import csv
import os
from pathlib import Path

import numpy as np
import pytest

from ecgrisk.paths import shared_data

SYNTHETIC_PTBXL = {"n_records": 500, "fs": (100, 500), "seed": 0}  # the shared subset's shape
SPLIT_FOLDS = {"train": range(1, 9), "val": (9,), "test": (10,)}  # PTB-XL's official folds


def _shared_root() -> Path | None:
    if os.environ.get("ECGRISK_SHARED_DATA", "").strip().lower() == "none":
        return None
    return shared_data()


@pytest.fixture(scope="session")
def shared():
    """../shared/data, or skip the test cleanly when it is absent."""
    root = _shared_root()
    if root is None:
        pytest.skip("../shared/data is absent (or ECGRISK_SHARED_DATA=none)")
    return root


@pytest.fixture(scope="session")
def real_ptbxl_root(shared):
    """The shared PTB-XL 1.0.3 subset (ecg_id 1-500), for facts true of those records only."""
    root = shared / "ptb-xl"
    if not (root / "ptbxl_database.csv").is_file():
        pytest.skip("shared PTB-XL subset is absent")
    return root


@pytest.fixture(scope="session")
def ptbxl_root(tmp_path_factory):
    """The shared PTB-XL subset, else a synthetic tree of the same shape: ecg_id 1-500,
    ``records100`` and ``records500``, the real column set and statement rows."""
    shared = _shared_root()
    if shared is not None and (shared / "ptb-xl" / "ptbxl_database.csv").is_file():
        return shared / "ptb-xl"
    from ecgrisk.data.synthetic import make_synthetic_ptbxl

    root = tmp_path_factory.mktemp("synthetic") / "ptb-xl"
    return make_synthetic_ptbxl(root, progress=False, **SYNTHETIC_PTBXL)


@pytest.fixture(scope="session")
def ptbxl_no_test_fold(tmp_path_factory):
    """A small synthetic PTB-XL (160 records) whose database lists folds 1-9 only, as the full
    data here withholds fold 10; read-only: tests put their caches and runs elsewhere."""
    import pandas as pd

    from ecgrisk.data.synthetic import make_synthetic_ptbxl

    root = make_synthetic_ptbxl(tmp_path_factory.mktemp("no-test-fold") / "ptbxl", n_records=160,
                                progress=False)
    db = pd.read_csv(root / "ptbxl_database.csv")
    db[db.strat_fold < 10].to_csv(root / "ptbxl_database.csv", index=False)
    return root


@pytest.fixture(scope="session")
def ptbxl_split_sizes(ptbxl_root):
    """``{task: {"train"|"val"|"test": records}}`` for tasks ``all`` and ``superdiagnostic``,
    counted from the two CSVs with plain loops (the benchmark's label rules, official folds)."""
    with open(ptbxl_root / "scp_statements.csv", newline="") as f:
        superclass = {row[""]: row["diagnostic_class"] for row in csv.DictReader(f)
                      if row["diagnostic"] == "1.0" and row["diagnostic_class"]}
    sizes = {task: dict.fromkeys(SPLIT_FOLDS, 0) for task in ("all", "superdiagnostic")}
    with open(ptbxl_root / "ptbxl_database.csv", newline="") as f:
        for row in csv.DictReader(f):
            codes = ast.literal_eval(row["scp_codes"])
            split = next((s for s, folds in SPLIT_FOLDS.items() if int(row["strat_fold"]) in folds))
            sizes["all"][split] += bool(codes)
            sizes["superdiagnostic"][split] += any(c in superclass for c in codes)
    return sizes


# SNOMED CT codes of the Challenge's scored statements for the generator's SCP codes.
_SNOMED = {"SR": "426783006", "AFIB": "164889003", "SBRAD": "426177001", "STACH": "427084000",
           "CLBBB": "164909002", "IVCD": "698252002", "LVH": "164873001", "IMI": "164865005",
           "ISC_": "164861001", "STD_": "429622005"}
_CHALLENGE_LABELS = ({"SR"}, {"SBRAD", "LVH"}, {"AFIB", "IVCD"}, {"STACH", "ISC_", "STD_"},
                     {"SR", "CLBBB"}, {"SR", "IMI"})


def write_challenge_record(folder: Path, name: str, labels: set[str], rng) -> Path:
    """A synthetic PhysioNet/CinC 2021 record as the Challenge ships them: ``name.hea`` and a
    MATLAB v4 ``name.mat`` (``val``, int16 [12, 5000], 1000 adu/mV at 500 Hz, byte offset 24)
    with ``# Age/Sex/Dx`` comments; the record's path without extension."""
    import scipy.io

    from ecgrisk.data.synthetic import LEADS, synth_ecg

    sig = synth_ecg(labels, fs=500, rng=rng)
    val = np.clip(np.round(sig * 1000.0), -32767, 32767).astype(np.int16)
    scipy.io.savemat(folder / f"{name}.mat", {"val": val}, format="4")
    lead_names = [lead.replace("AV", "aV") for lead in LEADS]  # the Challenge spells aVR
    lines = [f"{name} 12 500 {val.shape[1]}"]
    for lead, v in zip(lead_names, val, strict=True):
        checksum = (int(v.sum()) + 32768) % 65536 - 32768  # signed, as wfdb writes it
        lines.append(f"{name}.mat 16x1+24 1000.0(0)/mV 16 0 {v[0]} {checksum} 0 {lead}")
    dx = ",".join(sorted(_SNOMED[c] for c in labels))
    lines += [f"# Age: {rng.integers(20, 90)}", f"# Sex: {('Male', 'Female')[rng.integers(2)]}",
              f"# Dx: {dx}", "# Rx: Unknown", "# Hx: Unknown", "# Sx: Unknown"]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    return folder / name


@pytest.fixture(scope="session")
def challenge_root(tmp_path_factory):
    """The shared CinC 2021 sample (50 records), else six synthetic Challenge records
    ``SYN0001``-``SYN0006`` (500 Hz, 10 s, 12 leads, SNOMED CT ``# Dx:`` codes)."""
    shared = _shared_root()
    if shared is not None and (shared / "cinc2021-sample").is_dir():
        return shared / "cinc2021-sample"
    root = tmp_path_factory.mktemp("synthetic-challenge")
    for i, labels in enumerate(_CHALLENGE_LABELS, start=1):
        write_challenge_record(root, f"SYN{i:04d}", labels, np.random.default_rng([7, i]))
    return root


@pytest.fixture(scope="session")
def challenge_record(challenge_root):
    """The first Challenge record (``E07500`` in the shared sample), path without extension."""
    return min(challenge_root.glob("*.hea")).with_suffix("")

"""Training fractions: seeded, nested, stratified, and drawn by patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecgrisk.data.datamodule import ECGDataModule
from ecgrisk.data.ptbxl import PTBXL
from ecgrisk.data.splits import train_fraction_subset
from ecgrisk.data.synthetic import make_synthetic_ptbxl


def _patients(n_patients=300, seed=1):
    """Labels ``[n, 5]`` of 1-4 records per patient, and each record's patient id."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), rng.integers(1, 5, n_patients))
    y = (rng.random((len(groups), 5)) < [0.5, 0.2, 0.1, 0.05, 0.0]).astype(np.uint8)
    return y, np.asarray([f"p{g}" for g in groups])


def test_train_fraction_is_stratified_nested_and_seeded():
    rng = np.random.default_rng(1)
    y = (rng.random((400, 5)) < [0.5, 0.2, 0.1, 0.05, 0.02]).astype(np.uint8)
    small = train_fraction_subset(y, 0.1, seed=3)
    large = train_fraction_subset(y, 0.25, seed=3)
    assert set(small) <= set(large)
    assert (y[small].sum(0) > 0).all()  # the rarest class survives 10%
    np.testing.assert_array_equal(small, train_fraction_subset(y, 0.1, seed=3))
    assert not np.array_equal(small, train_fraction_subset(y, 0.1, seed=4))
    assert 0.08 * 400 <= len(small) <= 0.14 * 400
    np.testing.assert_array_equal(train_fraction_subset(y, 1.0), np.arange(400))
    with pytest.raises(ValueError):
        train_fraction_subset(y, 0.0)


def test_a_patient_is_all_drawn_or_all_left():
    y, groups = _patients()
    for fraction in (0.05, 0.1, 0.5):
        for seed in (0, 1):
            drawn = np.zeros(len(y), bool)
            drawn[train_fraction_subset(y, fraction, seed, groups)] = True
            per_patient = pd.Series(drawn).groupby(groups).nunique()
            assert (per_patient == 1).all(), (fraction, seed)


def test_patient_draw_is_nested_and_seeded():
    y, groups = _patients()
    small = train_fraction_subset(y, 0.1, seed=3, groups=groups)
    large = train_fraction_subset(y, 0.25, seed=3, groups=groups)
    assert set(small) <= set(large)
    np.testing.assert_array_equal(small, train_fraction_subset(y, 0.1, seed=3, groups=groups))
    assert not np.array_equal(small, train_fraction_subset(y, 0.1, seed=4, groups=groups))
    # the fraction counts patients, not records
    n_patients = len(set(groups))
    assert 0.08 * n_patients <= len(set(groups[small])) <= 0.14 * n_patients


def test_a_class_of_three_patients_survives_five_percent():
    y, groups = _patients()
    y[:, 4] = 0
    # the rare class on one record of each of three patients that have several records
    multi = [g for g in dict.fromkeys(groups) if (groups == g).sum() >= 2][:3]
    for g in multi:
        y[np.flatnonzero(groups == g)[-1], 4] = 1
    for seed in range(5):
        drawn = train_fraction_subset(y, 0.05, seed, groups)
        assert y[drawn, 4].sum() >= 1, seed


def test_no_groups_means_a_group_per_record():
    y, _ = _patients()
    np.testing.assert_array_equal(train_fraction_subset(y, 0.2, 7, np.arange(len(y))),
                                  train_fraction_subset(y, 0.2, 7))


@pytest.fixture(scope="module")
def shared_patients(tmp_path_factory):
    """A synthetic PTB-XL tree whose patients have 1-3 records (in one fold, as in PTB-XL), with
    one training record unreadable so that the cache's positions are not the source's."""
    root = make_synthetic_ptbxl(tmp_path_factory.mktemp("patients") / "ptb-xl", n_records=120,
                                progress=False)
    db = pd.read_csv(root / "ptbxl_database.csv")
    rng = np.random.default_rng(0)
    for fold, rows in db.groupby("strat_fold").groups.items():
        sizes = rng.integers(1, 4, len(rows))
        db.loc[rows, "patient_id"] = 1000.0 * fold + np.repeat(np.arange(len(rows)), sizes)[: len(rows)]
    db.to_csv(root / "ptbxl_database.csv", index=False)
    broken = db[db.strat_fold <= 8].iloc[3]
    (root / f"{broken.filename_lr}.dat").write_bytes(b"\0" * 10)
    return root, str(broken.ecg_id)


def test_datamodule_draws_whole_patients_from_folds_1_to_8(shared_patients, tmp_path):
    root, broken = shared_patients
    rs = PTBXL(root)
    patient = dict(zip(rs.record_ids, rs.groups, strict=True))
    assert len(set(rs.groups)) < len(rs)  # some patients have several records
    dm = ECGDataModule(rs, tmp_path / "cache", batch_size=8, train_fraction=0.3, seed=2,
                       progress=False)
    dm.setup()
    assert broken not in dm.caches[0].record_ids
    folds_1_8 = [r for r, f in zip(dm.caches[0].record_ids, dm.caches[0].folds, strict=True) if f <= 8]
    train = dm.record_ids("train")
    rest = [r for r in folds_1_8 if r not in set(train)]
    assert set(train) <= set(folds_1_8) and rest
    assert not {patient[r] for r in train} & {patient[r] for r in rest}
    assert 0.2 * len(folds_1_8) < len(train) < 0.5 * len(folds_1_8)
    assert dm.labels("train").shape == (len(train), len(dm.classes))
    assert len(dm.train_dataloader().dataset) == len(train)

    full = ECGDataModule(rs, tmp_path / "cache", batch_size=8, progress=False)
    full.setup()
    assert full.record_ids("train") == folds_1_8


def test_folds_from_the_data_config_choose_the_records(shared_patients, tmp_path):
    from ecgrisk.config import compose
    from ecgrisk.data.datamodule import build_datamodule

    root, _ = shared_patients
    cfg = compose("finetune", [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                               "data.train_folds=[1,2,3,4,5,6,7]", "data.val_folds=[8]"])
    dm = build_datamodule(cfg.data, 0, progress=False)
    dm.setup()
    fold = dict(zip(dm.caches[0].record_ids, dm.caches[0].folds, strict=True))
    assert {fold[r] for r in dm.record_ids("train")} == set(range(1, 8))
    assert dm.record_ids("val") == [r for r, f in fold.items() if f == 8]
    assert {fold[r] for r in dm.record_ids("test")} == {10}
    assert compose("finetune", []).data.val_folds == [9]  # the official split by default
    with pytest.raises(ValueError, match=r"folds \[9\] are in more than one split"):
        ECGDataModule(PTBXL(root), tmp_path / "cache", train_folds=range(1, 10), val_folds=[9])

"""PTB-XL index: labels checked against an independent plain-csv computation of the benchmark rules."""

from __future__ import annotations

import ast
import csv
import json
import shutil
from collections import Counter

import numpy as np
import pytest

from ecgrisk.data.ptbxl import PTBXL, TASKS, task_labels


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def expected_labels(root, task):
    """{ecg_id: set(labels)} for records with >= 1 label, via plain loops over csv rows."""
    statements = {}
    with open(root / "scp_statements.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        for row in reader:
            statements[row[0]] = dict(zip(header[1:], row[1:], strict=True))
    out = {}
    for row in _rows(root / "ptbxl_database.csv"):
        got = set()
        for key in ast.literal_eval(row["scp_codes"]):
            st = statements.get(key)
            if st is None:
                continue
            if task == "superdiagnostic" and st["diagnostic"] == "1.0" and st["diagnostic_class"]:
                got.add(st["diagnostic_class"])
            if task == "rhythm" and st["rhythm"] == "1.0":
                got.add(key)
        if got:
            out[str(int(row["ecg_id"]))] = got
    return out


@pytest.mark.parametrize("task", ["superdiagnostic", "rhythm"])
def test_labels_match_independent_computation(ptbxl_root, task):
    ds = PTBXL(ptbxl_root, task=task)
    expected = expected_labels(ptbxl_root, task)
    assert ds.record_ids == sorted(expected, key=int)
    assert ds.classes == sorted({c for s in expected.values() for c in s})
    assert ds.labels.dtype == np.uint8 and ds.labels.shape == (len(expected), len(ds.classes))
    for i, rid in enumerate(ds.record_ids):
        assert {ds.classes[j] for j in np.flatnonzero(ds.labels[i])} == expected[rid]
    counts = Counter(c for s in expected.values() for c in s)
    assert dict(zip(ds.classes, ds.labels.sum(0).tolist(), strict=True)) == dict(counts)
    assert ds.missing == []


def test_superdiagnostic_subset_figures(real_ptbxl_root):
    # the figures the shared data README gives for this subset
    ds = PTBXL(real_ptbxl_root)
    assert len(ds) == 488
    assert dict(zip(ds.classes, ds.labels.sum(0).tolist(), strict=True)) == {
        "NORM": 297, "STTC": 96, "CD": 78, "MI": 73, "HYP": 40}
    assert len(ds.unlabeled) == 12 and not set(ds.unlabeled) & set(ds.record_ids)
    first = ds.record_ids.index("1")
    assert ds.labels[first].tolist() == [0, 0, 0, 1, 0]  # ecg_id 1 is NORM only
    assert ds.meta.loc[first, "scp_codes"] == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    # ecg_id 1: a 56-year-old woman (sex 1) recorded on a CS-12 E at site 0; ecg_id 2: a man of 19
    attrs = {k: v[first] for k, v in ds.attributes.items()}
    assert attrs == {"age": 56.0, "sex": "female", "site": 0.0, "device": "CS-12   E"}
    assert ds.attributes["sex"][ds.record_ids.index("2")] == "male"


def test_split_sizes_of_the_shared_subset_are_the_readmes(real_ptbxl_root, ptbxl_split_sizes):
    # the counts other tests expect of runs on this subset (conftest counts them from the CSVs)
    assert ptbxl_split_sizes["all"] == {"train": 353, "val": 81, "test": 66}
    assert ptbxl_split_sizes["superdiagnostic"] == {"train": 352, "val": 72, "test": 64}


def test_official_folds(ptbxl_root, ptbxl_split_sizes):
    rows = _rows(ptbxl_root / "ptbxl_database.csv")
    # task "all" keeps every record (the README's 353/81/66 on the shared subset)
    split = PTBXL(ptbxl_root, task="all").split_indices()
    assert {k: len(v) for k, v in split.items()} == ptbxl_split_sizes["all"]
    assert sum(ptbxl_split_sizes["all"].values()) == len(rows)
    ds = PTBXL(ptbxl_root)
    split = ds.split_indices()
    fold_of = {str(int(r["ecg_id"])): int(r["strat_fold"]) for r in rows}
    for name, folds in (("train", range(1, 9)), ("val", [9]), ("test", [10])):
        want = [i for i, rid in enumerate(ds.record_ids) if fold_of[rid] in folds]
        assert split[name].tolist() == want
    assert sum(len(v) for v in split.values()) == len(ds)
    assert np.array_equal(ds.folds, [fold_of[r] for r in ds.record_ids])


def test_zero_likelihood_codes_count(real_ptbxl_root):
    # ecg_id 1 lists LVOLT and SR with likelihood 0.0: the benchmark keeps them
    ds = PTBXL(real_ptbxl_root, task="all")
    i = ds.record_ids.index("1")
    assert {ds.classes[j] for j in np.flatnonzero(ds.labels[i])} == {"NORM", "LVOLT", "SR"}


def test_statements_with_zero_likelihood_are_labels_of_task_all(ptbxl_root):
    ds = PTBXL(ptbxl_root, task="all")
    zero = {}  # ecg_id: statements listed with likelihood 0
    for r in _rows(ptbxl_root / "ptbxl_database.csv"):
        if codes := {c for c, p in ast.literal_eval(r["scp_codes"]).items() if p == 0}:
            zero[str(int(r["ecg_id"]))] = codes
    assert len(zero) >= 10
    for rid, codes in zero.items():
        i = ds.record_ids.index(rid)
        assert codes <= {ds.classes[j] for j in np.flatnonzero(ds.labels[i])}, rid


def test_all_task_class_order_follows_benchmark(ptbxl_root, shared):
    bench = json.loads((shared / "ptbxl-benchmark-peer" / "classes.json").read_text())
    assert len(bench) == 71 and bench == sorted(bench)
    ds = PTBXL(ptbxl_root, task="all")
    assert set(ds.classes) <= set(bench)
    assert ds.classes == [c for c in bench if c in set(ds.classes)]


def test_paths_per_sampling_rate(ptbxl_root):
    lo, hi = PTBXL(ptbxl_root, fs=100), PTBXL(ptbxl_root, fs=500)
    assert lo.record_ids == hi.record_ids
    assert lo.paths[0] == str(ptbxl_root.resolve() / "records100/00000/00001_lr")
    assert hi.paths[0] == str(ptbxl_root.resolve() / "records500/00000/00001_hr")
    assert (ptbxl_root / "records500/00000/00001_hr.dat").is_file()
    with pytest.raises(ValueError, match="100 or 500"):
        PTBXL(ptbxl_root, fs=250)
    with pytest.raises(ValueError, match="unknown PTB-XL task"):
        PTBXL(ptbxl_root, task="diagnosis")
    assert PTBXL.TASKS == TASKS and len(TASKS) == 6


def test_partial_copy_reports_missing(ptbxl_root, tmp_path, caplog):
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        shutil.copy(ptbxl_root / name, tmp_path / name)
    (tmp_path / "records100/00000").mkdir(parents=True)
    for k in range(1, 11):
        for ext in (".hea", ".dat"):
            shutil.copy(ptbxl_root / f"records100/00000/{k:05d}_lr{ext}", tmp_path / "records100/00000")
    # a record with its header but no signal file is not usable
    shutil.copy(ptbxl_root / "records100/00000/00011_lr.hea", tmp_path / "records100/00000")
    with caplog.at_level("WARNING"):
        ds = PTBXL(tmp_path, task="rhythm")
    assert len(ds.missing) == 490 and "11" in ds.missing and "1" not in ds.missing
    assert "490 of 500" in caplog.text
    expected = {k: v for k, v in expected_labels(ptbxl_root, "rhythm").items() if int(k) <= 10}
    assert ds.record_ids == sorted(expected, key=int)
    # classes come from the present rows only
    assert ds.classes == sorted({c for s in expected.values() for c in s})
    with pytest.raises(FileNotFoundError, match="none of the 500 records"):
        PTBXL(tmp_path, fs=500)


def test_empty_root_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="ptbxl_database.csv and scp_statements.csv"):
        PTBXL(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        PTBXL(tmp_path / "nowhere")


def _tiny_tree(root):
    """Five records in PTB-XL's layout; the files exist but are empty (labels read no signal)."""
    from ecgrisk.data.synthetic import SCP_STATEMENTS_CSV

    codes = {1: {"IMI": 35.0, "NORM": 0.0}, 2: {"NORM": 100.0, "SR": 0.0},
             3: {"IMI": 80.0, "ISC_": 50.0}, 4: {"SR": 0.0}, 5: {"LVH": 50.0}}
    (root / "records100").mkdir(parents=True)
    rows = []
    for i, c in codes.items():
        for ext in (".hea", ".dat"):
            (root / "records100" / f"{i:05d}_lr{ext}").touch()
        rows.append({"ecg_id": i, "patient_id": 10.0 + i, "scp_codes": str(c), "strat_fold": i,
                     "filename_lr": f"records100/{i:05d}_lr", "filename_hr": f"records500/{i:05d}_hr"})
    with open(root / "ptbxl_database.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "scp_statements.csv").write_text(SCP_STATEMENTS_CSV)
    return root


def _positives(ds):
    return {r: {ds.classes[j] for j in np.flatnonzero(ds.labels[i])} for i, r in enumerate(ds.record_ids)}


def test_min_likelihood_relabels_the_same_records_with_the_same_classes(tmp_path):
    from ecgrisk.data.cache import cache_key
    from ecgrisk.preprocess import Preprocessing

    root = _tiny_tree(tmp_path / "ptb-xl")
    standard, house = PTBXL(root), PTBXL(root, min_likelihood=80)
    assert _positives(standard) == {"1": {"MI", "NORM"}, "2": {"NORM"}, "3": {"MI", "STTC"},
                                    "5": {"HYP"}}
    assert _positives(house) == {"1": set(), "2": {"NORM"}, "3": {"MI"}, "5": set()}
    assert house.record_ids == standard.record_ids and house.unlabeled == standard.unlabeled == ["4"]
    assert house.classes == standard.classes == ["HYP", "MI", "NORM", "STTC"]
    np.testing.assert_array_equal(house.folds, standard.folds)
    np.testing.assert_array_equal(house.groups, ["11", "12", "13", "15"])
    # record 4 has only a rhythm statement at likelihood 0: kept by task all, with no label at 80
    assert _positives(PTBXL(root, task="all", min_likelihood=80))["4"] == set()
    # each set relabels its records under the other's rule, as that set labels them
    np.testing.assert_array_equal(standard.labels_under(80), house.labels)
    np.testing.assert_array_equal(house.labels_under(0), standard.labels)
    with pytest.raises(ValueError, match="min_likelihood"):
        standard.labels_under(-1)
    # house labels land in their own cache entry
    prep = Preprocessing(fs=100)
    assert cache_key(house, prep) != cache_key(standard, prep)
    with pytest.raises(ValueError, match="min_likelihood"):
        PTBXL(root, min_likelihood=101)


def test_min_likelihood_reaches_ptbxl_from_the_data_config(tmp_path, challenge_root):
    from omegaconf import OmegaConf

    from ecgrisk.config import compose
    from ecgrisk.data.sources import load_source

    root = _tiny_tree(tmp_path / "ptb-xl")
    data = compose("finetune", [f"data.root={root}", "data.min_likelihood=80"]).data
    ds = load_source(**OmegaConf.to_container(data, resolve=True))
    assert ds.min_likelihood == 80 and _positives(ds)["1"] == set()
    assert compose("finetune", []).data.min_likelihood == 0
    with pytest.raises(ValueError, match="min_likelihood=80.*'challenge'"):
        load_source("challenge", challenge_root, min_likelihood=80)
    assert len(load_source("challenge", challenge_root, min_likelihood=0))


def test_min_likelihood_keeps_the_records_of_the_shared_subset(real_ptbxl_root):
    standard, house = PTBXL(real_ptbxl_root), PTBXL(real_ptbxl_root, min_likelihood=80)
    assert house.record_ids == standard.record_ids and house.classes == standard.classes
    assert (house.labels <= standard.labels).all()
    assert house.labels.sum() < standard.labels.sum()


def test_task_labels_need_no_signal_files(ptbxl_root, tmp_path):
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        shutil.copy(ptbxl_root / name, tmp_path / name)  # the tables alone, no records
    for task in ("superdiagnostic", "all"):
        ds = PTBXL(ptbxl_root, task=task)
        meta, classes, labels = task_labels(tmp_path, task)
        assert meta["ecg_id"].astype(str).tolist() == ds.record_ids
        assert classes == ds.classes
        np.testing.assert_array_equal(labels, ds.labels)

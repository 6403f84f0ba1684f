"""``ecgrisk evaluate``: a scores table against labels, overall and by subgroup, checked against
hand computations; the join, the counts of what was left out, the PTB-XL labels and the errors."""

from __future__ import annotations

import ast
import csv
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ecgrisk.cli import main as cli_main
from ecgrisk.scoring.evaluate import (
    EvaluationError,
    evaluate_scores,
    labels_from_ptbxl,
    parse_by,
    to_markdown,
)

CLASSES = ["MI", "NORM"]


def _write(path, header, rows):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def tables(tmp_path):
    """60 scored ECGs (two failed, one unlabelled) and their labels with sex and age."""
    rng = np.random.default_rng(0)
    n = 60
    y = np.stack([rng.integers(0, 2, n), rng.integers(0, 2, n)], axis=1)
    p = np.clip(0.6 * y + 0.4 * rng.random((n, 2)), 0, 1)
    sex = ["female" if i % 3 else "male" for i in range(n)]
    age = [str(20 + i) if i != 5 else "" for i in range(n)]
    score_rows = [[f"sub/r{i:02d}", f"/data/sub/r{i:02d}", p[i, 0], p[i, 1], i % 4 == 0, ""]
                  for i in range(n)]
    score_rows += [["bad1", "/data/bad1", "", "", False, "HeaderParseError: x"],
                   ["bad2", "/data/bad2", "", "", False, "TruncatedSignalError: y"],
                   ["extra", "/data/extra", 0.5, 0.5, False, ""]]
    scores = _write(tmp_path / "scores.csv",
                    ["record", "path", "prob/MI", "prob/NORM", "needs_review", "error"], score_rows)
    # labels name the records by file name (r00), as a clinic's export would
    labels = _write(tmp_path / "labels.csv", ["record", "MI", "NORM", "sex", "age"],
                    [[f"r{i:02d}", y[i, 0], "true" if y[i, 1] else "false", sex[i], age[i]]
                     for i in range(n)])
    return scores, labels, y, p, np.array(sex), age


def test_every_ecg_and_each_subgroup_against_a_hand_computation(tables):
    from ecgrisk.metrics import wilson_interval

    scores, labels, y, p, sex, age = tables
    r = evaluate_scores(scores, labels, by=["sex", "age:40,60"], bootstrap=50, min_group=10)
    assert (r["scored_and_labelled"], r["failed"], r["unlabelled"]) == (60, 2, 1)
    assert r["classes"] == CLASSES
    every = r["groups"][0]
    assert (every["by"], every["group"], every["n"]) == ("all", "all", 60)
    # the review flag's bound, checked on these ECGs: unflagged rows whose reading (p >= .5) errs
    flagged = np.arange(60) % 4 == 0
    wrong = ((p >= 0.5) != y.astype(bool)).any(axis=1)
    assert every["review_rate"] == pytest.approx(0.25)
    assert every["unreviewed_misread"] == pytest.approx(np.mean(~flagged & wrong))
    # none misread here (p is .6 y + .4 u): the interval still bounds the share from above
    assert every["unreviewed_misread/lower"] == every["unreviewed_misread"] == 0.0
    assert every["unreviewed_misread/upper"] == pytest.approx(wilson_interval(0, 60)[1])
    hand = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(2)])
    assert every["macro_auroc"] == pytest.approx(hand, abs=1e-12)
    assert every["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    assert every["macro_auroc/lower"] <= every["macro_auroc"] <= every["macro_auroc/upper"]
    assert every["prevalence"]["MI"] == pytest.approx(y[:, 0].mean())
    assert every["mean_prob"]["NORM"] == pytest.approx(p[:, 1].mean())

    by_sex = {g["group"]: g for g in r["groups"] if g["by"] == "sex"}
    assert list(by_sex) == ["female", "male"]
    for name, g in by_sex.items():
        m = sex == name
        assert g["n"] == m.sum()
        assert g["unreviewed_misread"] == pytest.approx(np.mean((~flagged & wrong)[m]))
        assert g["macro_auroc"] == pytest.approx(
            np.mean([roc_auc_score(y[m, j], p[m, j]) for j in range(2)]), abs=1e-12)

    # ages 20-79, the sixth record without one: bands from the lowest up, missing last
    bands = [(g["group"], g["n"]) for g in r["groups"] if g["by"] == "age:40,60"]
    assert bands == [("<40", 19), ("40-<60", 20), (">=60", 20), ("missing", 1)]
    missing = next(g for g in r["groups"] if g["group"] == "missing")
    assert "macro_auroc" not in missing  # under min_group: listed, not measured


def test_the_review_bound_is_checked_where_readings_err(tables, tmp_path):
    from ecgrisk.metrics import wilson_interval

    scores, labels, y, p, sex, _ = tables
    rows = list(csv.reader(scores.open()))
    for i in range(1, 61, 5):  # every fifth ECG's probabilities flipped: its reading errs
        rows[i][2:4] = [1 - float(rows[i][2]), 1 - float(rows[i][3])]
    flipped = _write(tmp_path / "flipped.csv", rows[0], rows[1:])
    r = evaluate_scores(flipped, labels, by=["sex"], bootstrap=0, min_group=10)
    flagged = np.arange(60) % 4 == 0
    wrong = np.arange(60) % 5 == 0
    every = r["groups"][0]
    assert every["unreviewed_misread"] == pytest.approx(np.mean(~flagged & wrong))  # 9 of 60
    lo, hi = wilson_interval(int(np.sum(~flagged & wrong)), 60)
    assert (every["unreviewed_misread/lower"], every["unreviewed_misread/upper"]) == pytest.approx((lo, hi))
    male = next(g for g in r["groups"] if g["group"] == "male")
    m = sex == "male"
    assert male["unreviewed_misread"] == pytest.approx(np.mean((~flagged & wrong)[m]))
    assert f"| {100 * np.mean(~flagged & wrong):.1f}% ({100 * lo:.1f}-{100 * hi:.1f}) |" in to_markdown(r)


def test_a_scores_column_groups_too(tables):
    scores, labels, y, p, *_ = tables
    r = evaluate_scores(scores, labels, by=["needs_review"], only=["needs_review=True"], bootstrap=0)
    flagged = np.arange(60) % 4 == 0
    assert (r["scored_and_labelled"], r["left_out_by_only"]) == (15, 45)
    ((name, n),) = [(g["group"], g["n"]) for g in r["groups"] if g["by"] == "needs_review"]
    assert (name, n) == ("True", 15)
    assert r["groups"][0]["brier"] == pytest.approx(np.mean((p[flagged] - y[flagged]) ** 2))
    with pytest.raises(EvaluationError, match="no column 'path' in"):  # unique per ECG
        evaluate_scores(scores, labels, by=["path"])


def test_age_and_sex_the_scores_carry_group_where_the_labels_have_none(tables, tmp_path):
    """`ecgrisk score` writes age and sex where the files state them; labels without them (a
    clinic's diagnosis export) still group by them, and the labels' own win where they have them."""
    scores, labels, y, p, sex, age = tables
    rows = list(csv.DictReader(scores.open()))
    with_patient = _write(tmp_path / "scored.csv", [*rows[0], "age", "sex"],
                          [[*r.values(), "70" if i % 2 else "30", "male" if i % 2 else "female"]
                           for i, r in enumerate(rows)])
    bare = _write(tmp_path / "bare.csv", ["record", "MI", "NORM"],
                  [[f"r{i:02d}", y[i, 0], y[i, 1]] for i in range(60)])
    r = evaluate_scores(with_patient, bare, by=["sex", "age:50"], bootstrap=0)
    got = {(g["by"], g["group"]): g["n"] for g in r["groups"]}
    assert got == {("all", "all"): 60, ("sex", "female"): 30, ("sex", "male"): 30,
                   ("age:50", "<50"): 30, ("age:50", ">=50"): 30}
    by_labels = evaluate_scores(with_patient, labels, by=["sex"], bootstrap=0)
    assert {g["group"]: g["n"] for g in by_labels["groups"] if g["by"] == "sex"} == {
        "female": int((sex == "female").sum()), "male": int((sex == "male").sum())}


def test_scored_ecgs_without_an_age_are_the_missing_group(tables, tmp_path):
    # found in review: an empty age in the scores read as the text 'None', which age bands refused
    scores, _, y, *_ = tables
    rows = list(csv.DictReader(scores.open()))
    scored = _write(tmp_path / "scored.csv", [*rows[0], "age"],
                    [[*r.values(), "" if i % 3 == 0 else "70"] for i, r in enumerate(rows)])
    bare = _write(tmp_path / "bare.csv", ["record", "MI", "NORM"],
                  [[f"r{i:02d}", y[i, 0], y[i, 1]] for i in range(60)])
    for by in ("age:50", "age"):
        r = evaluate_scores(scored, bare, by=[by], bootstrap=0)
        got = {g["group"]: g["n"] for g in r["groups"] if g["by"] == by}
        assert got == {">=50" if by == "age:50" else "70": 40, "missing": 20}


def test_only_keeps_the_named_values_and_counts_the_rest(tables):
    scores, labels, y, p, sex, _ = tables
    r = evaluate_scores(scores, labels, only=["sex=male"], bootstrap=0)
    m = sex == "male"
    assert (r["scored_and_labelled"], r["left_out_by_only"]) == (m.sum(), (~m).sum())
    assert r["groups"][0]["macro_auroc"] == pytest.approx(
        np.mean([roc_auc_score(y[m, j], p[m, j]) for j in range(2)]), abs=1e-12)


def test_cli_writes_the_tables_and_diagrams(tables, tmp_path, capsys):
    scores, labels, *_ = tables
    out = tmp_path / "eval"
    assert cli_main(["evaluate", str(scores), "--labels", str(labels), "--by", "sex",
                     "--bootstrap", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| sex | female | 40 |" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "evaluation.json", "evaluation.md", "reliability.png", "reliability_sex.png", "subgroups.png"]
    saved = json.loads((out / "evaluation.json").read_text())
    assert [g["group"] for g in saved["groups"]] == ["all", "female", "male"]
    for png in ("reliability_sex.png", "subgroups.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # each statement's AUROC, per group, in the markdown as in the JSON
    y, p, sex = tables[2], tables[3], tables[4]
    m = sex == "female"
    md = (out / "evaluation.md").read_text()
    row = f"| sex | female | {roc_auc_score(y[m, 0], p[m, 0]):.3f} | {roc_auc_score(y[m, 1], p[m, 1]):.3f} |"
    assert row in md.split("AUROC per statement")[1]


def test_the_forest_plot_draws_every_measured_group_and_names_the_rest(tables):
    from ecgrisk.plotting import plot_subgroups

    scores, labels, *_ = tables
    r = evaluate_scores(scores, labels, by=["sex", "age:40,60"], bootstrap=20, min_group=10)
    ax = plot_subgroups(r["groups"]).axes[0]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == ["sex", "female  n=40", "male  n=20", "age", "<40  n=19", "40-<60  n=20",
                     ">=60  n=20", "missing  n=1 (too few)"]
    drawn = [c.get_offsets()[0] for c in ax.collections if len(c.get_offsets()) == 1]
    measured = [g for g in r["groups"][1:] if "macro_auroc" in g]
    assert [x for x, _ in drawn] == pytest.approx([g["macro_auroc"] for g in measured])
    with pytest.raises(ValueError, match="no subgroup"):
        plot_subgroups(r["groups"][:1])


def test_bad_input_is_named(tables, tmp_path, capsys):
    scores, labels, *_ = tables
    lacking = _write(tmp_path / "lacking.csv", ["record", "MI"], [["r00", 1]])
    with pytest.raises(EvaluationError, match=r"lacking.csv: .* lacks \['NORM'\]"):
        evaluate_scores(scores, lacking)
    odd = _write(tmp_path / "odd.csv", ["record", "MI", "NORM"], [["r00", 1, 0], ["r01", "0.7", 1]])
    with pytest.raises(EvaluationError, match="odd.csv, line 3: MI is '0.7'"):
        evaluate_scores(scores, odd)
    twice = _write(tmp_path / "twice.csv", ["record", "MI", "NORM"], [["r00", 1, 0], ["r00", 0, 0]])
    with pytest.raises(EvaluationError, match="twice.csv, line 3: record 'r00' is labelled twice"):
        evaluate_scores(scores, twice)
    # one ECG scored from two folders would count twice, as two patients
    rows = list(csv.DictReader(scores.open()))
    copied = _write(tmp_path / "copied.csv", list(rows[0]),
                    [list(r.values()) for r in rows] + [["r07", "/elsewhere/r07", "0.5", "0.5", "False", ""]])
    with pytest.raises(EvaluationError, match=r"1 labelled records match more than one scored row, "
                                              r"e.g. 'r07': \['/data/sub/r07', '/elsewhere/r07'\]"):
        evaluate_scores(copied, labels)
    other = _write(tmp_path / "other.csv", ["id", "value"], [["a", 1]])
    with pytest.raises(EvaluationError, match="other.csv: not a scores table"):
        evaluate_scores(other, labels)
    (tmp_path / "scores.txt").write_text(scores.read_text())
    with pytest.raises(EvaluationError, match="scores.txt: a scores table is a .csv or .parquet"):
        evaluate_scores(tmp_path / "scores.txt", labels)
    nobody = _write(tmp_path / "nobody.csv", ["record", "MI", "NORM"], [["zz", 1, 0]])
    with pytest.raises(EvaluationError, match="none of its 63 rows matches a labelled record"):
        evaluate_scores(scores, nobody)
    with pytest.raises(EvaluationError, match="no column 'site' in .* nor in the scores"):
        evaluate_scores(scores, labels, by=["site"])
    with pytest.raises(EvaluationError, match="expected COLUMN=VALUE"):
        evaluate_scores(scores, labels, only=["sex"])
    with pytest.raises(EvaluationError, match="--by 'sex:1,2': bands need numbers, and this column holds 'male'"):
        evaluate_scores(scores, labels, by=["sex:1,2"])
    with pytest.raises(EvaluationError, match="band edges must increase"):
        parse_by("age:60,40")
    broken = _write(tmp_path / "broken.csv", ["record", "path", "prob/MI", "prob/NORM", "error"],
                    [["r00", "/d/r00", "0.2", "1.7", ""]])
    with pytest.raises(EvaluationError, match="broken.csv: record r00 has no error but probabilities"):
        evaluate_scores(broken, labels)
    with pytest.raises(EvaluationError, match="name the PTB-XL task"):
        evaluate_scores(scores, tmp_path)
    assert cli_main(["evaluate", str(scores), "--labels", str(lacking)]) == 2
    assert "lacks ['NORM']" in capsys.readouterr().err


def test_ptbxl_labels_by_either_file_name_with_patient_columns(ptbxl_root):
    labels = labels_from_ptbxl(ptbxl_root, "superdiagnostic")
    with open(ptbxl_root / "ptbxl_database.csv", newline="") as f:
        row = next(csv.DictReader(f))  # ecg_id 1
    lr, hr = row["filename_lr"].split("/")[-1], row["filename_hr"].split("/")[-1]
    assert labels.y[lr] == labels.y[hr]
    assert labels.columns["fold"][lr] == float(row["strat_fold"])
    assert labels.columns["sex"][hr] == {"0": "male", "1": "female"}[row["sex"]]
    assert labels.columns["age"][lr] == min(float(row["age"]), 90.0)
    # the benchmark's superclasses of its codes (NORM for the real ecg_id 1)
    codes = ast.literal_eval(row["scp_codes"])
    if "NORM" in codes:
        assert labels.y[lr]["NORM"] == 1
    assert set(labels.classes) <= {"CD", "HYP", "MI", "NORM", "STTC"}


def test_ptbxl_record_one(real_ptbxl_root):
    labels = labels_from_ptbxl(real_ptbxl_root, "superdiagnostic")
    # ecg_id 1: NORM, female, 56, fold 3 (ptbxl_database.csv's first row)
    assert labels.y["00001_lr"] == {"CD": 0, "HYP": 0, "MI": 0, "NORM": 1, "STTC": 0}
    assert (labels.columns["sex"]["00001_lr"], labels.columns["age"]["00001_lr"],
            labels.columns["fold"]["00001_lr"]) == ("female", 56.0, 3.0)


def test_groups_are_listed_in_a_readers_order():
    from ecgrisk.scoring.evaluate import _order

    assert sorted(["10", "2", "missing", "1"], key=lambda g: _order(g, None)) == ["1", "2", "10", "missing"]
    assert sorted(["male", "female"], key=lambda g: _order(g, None)) == ["female", "male"]
    bands = [">=80", "40-<60", "missing", "<40", "60-<80"]
    assert sorted(bands, key=lambda g: _order(g, [40, 60, 80])) == ["<40", "40-<60", "60-<80", ">=80", "missing"]


def test_a_parquet_scores_table_reads_as_its_csv(tables, tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    scores, labels, *_ = tables
    table = pd.read_csv(scores)  # errors of the scored rows become NaN: still no error
    parquet = tmp_path / "scores.parquet"
    table.to_parquet(parquet, index=False)
    from_csv = evaluate_scores(scores, labels, by=["sex", "needs_review"], bootstrap=20)
    from_parquet = evaluate_scores(parquet, labels, by=["sex", "needs_review"], bootstrap=20)
    for a, b in zip(from_csv["groups"], from_parquet["groups"], strict=True):
        assert (a["group"], a["n"]) == (b["group"], b["n"])
        assert a.get("macro_auroc") == pytest.approx(b.get("macro_auroc"), abs=1e-12)
    assert (from_parquet["failed"], from_parquet["unlabelled"]) == (2, 1)


def test_the_wilson_interval_against_published_values():
    from ecgrisk.metrics import wilson_interval

    # 10 of 100 at 95%: 0.0552-0.1744 (Newcombe 1998, method 3, as every calculator gives it)
    assert wilson_interval(10, 100, level=0.95) == pytest.approx((0.0552, 0.1744), abs=5e-5)
    lo, hi = wilson_interval(0, 30)  # no successes: a lower bound of 0, an upper one above it
    assert lo == 0.0 and 0.05 < hi < 0.1
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 3)


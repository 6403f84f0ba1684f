"""scripts/compare_scores.py: paired macro AUROC of score tables against a hand computation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from script_support import load_script

from ecgrisk.metrics import macro_auroc

compare_scores = load_script("compare_scores")

CLASSES = ["A", "B", "C"]


def _table(path, records, p, flagged, model):
    df = pd.DataFrame({"record": records, "path": records, "model_name": model, "model_version": "1",
                       "needs_review": flagged, "error": ""})
    for j, c in enumerate(CLASSES):
        df[f"prob/{c}"] = p[:, j]
    df.to_csv(path, index=False)
    return path


def test_the_paired_difference_and_each_tables_figures_match_a_hand_computation(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    y = (rng.random((n, 3)) < 0.3).astype(int)
    good = np.clip(0.5 * y + 0.5 * rng.random((n, 3)), 0, 1)
    worse = np.clip(0.2 * y + 0.8 * rng.random((n, 3)), 0, 1)
    records = [f"r{i}" for i in range(n)]
    labels = tmp_path / "labels.csv"
    pd.DataFrame(y, columns=CLASSES).assign(record=records).to_csv(labels, index=False)
    a = _table(tmp_path / "a.csv", records, worse, [True] * 100 + [False] * 200, "first")
    # the second table misses ten ECGs: only the shared ones are compared
    b = _table(tmp_path / "b.csv", records[10:], good[10:], [False] * (n - 10), "second")
    r = compare_scores.main([str(a), str(b), "--labels", str(labels), "--bootstrap", "50",
                             "--out", str(tmp_path / "cmp")])
    assert r["ecgs"] == n - 10
    first, second = r["tables"]
    assert first["macro_auroc"]["point"] == pytest.approx(macro_auroc(y[10:], worse[10:]))
    assert second["macro_auroc"]["point"] == pytest.approx(macro_auroc(y[10:], good[10:]))
    d = second["auroc_minus_first"]
    assert d["point"] == pytest.approx(macro_auroc(y[10:], good[10:]) - macro_auroc(y[10:], worse[10:]))
    assert 0 < d["lower"] < d["point"] < d["upper"] and "auroc_minus_first" not in first
    assert first["flagged"] == pytest.approx(90 / 290) and second["flagged"] == 0
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["tables"][1]["auroc_minus_first"] == d
    md = (tmp_path / "cmp.md").read_text()
    assert f"{d['point']:+.4f}" in md and "| `b.csv` | second 1 |" in md


def test_a_statement_without_a_positive_is_left_out_as_evaluate_leaves_it(tmp_path):
    # found in review: a small clinic set with no C positive crashed compare with a ValueError
    rng = np.random.default_rng(1)
    n = 120
    y = (rng.random((n, 3)) < 0.3).astype(int)
    y[:, 2] = 0
    p1, p2 = rng.random((n, 3)), np.clip(0.5 * y + 0.5 * rng.random((n, 3)), 0, 1)
    records = [f"r{i}" for i in range(n)]
    labels = tmp_path / "labels.csv"
    pd.DataFrame(y, columns=CLASSES).assign(record=records).to_csv(labels, index=False)
    a = _table(tmp_path / "a.csv", records, p1, [False] * n, "first")
    b = _table(tmp_path / "b.csv", records, p2, [False] * n, "second")
    r = compare_scores.main([str(a), str(b), "--labels", str(labels), "--bootstrap", "20",
                             "--out", str(tmp_path / "cmp")])
    assert r["tables"][1]["macro_auroc"]["point"] == pytest.approx(macro_auroc(y[:, :2], p2[:, :2]))


def test_tables_of_other_statements_or_a_single_table_are_refused(tmp_path, capsys):
    p = np.full((4, 3), 0.5)
    labels = tmp_path / "labels.csv"
    pd.DataFrame(np.eye(4, dtype=int), columns=[*CLASSES, "D"]).assign(record=list("wxyz")).to_csv(
        labels, index=False)
    a = _table(tmp_path / "a.csv", list("wxyz"), p, [False] * 4, "a")
    other = tmp_path / "o.csv"
    pd.read_csv(a).rename(columns={"prob/C": "prob/D"}).to_csv(other, index=False)
    with pytest.raises(SystemExit, match="compare tables of the same statements"):
        compare_scores.main([str(a), str(other), "--labels", str(labels), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as stop:
        compare_scores.main([str(a), "--labels", str(labels), "--out", str(tmp_path / "x")])
    assert stop.value.code == 2 and "compare at least two tables" in capsys.readouterr().err

"""scripts/benchmark_ptbxl.py's ensemble row: the mean of its members' calibrated probabilities,
scored like a run; and the tables it never replaces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from script_support import load_script
from sklearn.metrics import roc_auc_score


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark_ptbxl")


def _run(tmp_path: Path, name: str, y: np.ndarray, prob: np.ndarray, records) -> dict:
    run = tmp_path / name
    (run / "predictions").mkdir(parents=True)
    df = pd.DataFrame({"record": records})
    for j, c in enumerate(["A", "B"]):
        df[f"true/{c}"] = y[:, j]
    for j, c in enumerate(["A", "B"]):
        df[f"prob/{c}"] = prob[:, j]
    df.to_csv(run / "predictions" / "val.csv", index=False)
    return {"task": "t", "model": name, "split": "val", "run_dir": str(run), "train_records": 10,
            "train_wall_s": 60.0}


def test_the_ensemble_row_scores_the_mean_of_its_members_probabilities(bench, tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (60, 2))
    p1, p2 = rng.random((60, 2)), np.clip(y * 0.3 + rng.random((60, 2)) * 0.7, 0, 1)
    records = np.arange(60)
    rows = [_run(tmp_path, "m1", y, p1, records), _run(tmp_path, "m2", y, p2, records)]
    row = bench.ensemble("t", rows, bootstrap=20, seed=0)
    mean = (p1 + p2) / 2
    by_hand = np.mean([roc_auc_score(y[:, j], mean[:, j]) for j in range(2)])
    assert row["macro_auroc"] == pytest.approx(by_hand)
    assert row["macro_auroc/lower"] <= row["macro_auroc"] <= row["macro_auroc/upper"]
    assert row["model"] == "ensemble: m1 + m2" and row["records"] == 60 and row["train_wall_s"] == 120.0
    assert "ensemble: m1 + m2" in bench._table([row], "header")
    assert bench.ensemble("t", rows[:1], bootstrap=20, seed=0) is None


def test_an_ensemble_of_runs_scored_on_different_records_is_refused(bench, tmp_path):
    y, p = np.zeros((4, 2), int), np.full((4, 2), 0.5)
    rows = [_run(tmp_path, "m1", y, p, [1, 2, 3, 4]), _run(tmp_path, "m2", y, p, [1, 2, 3, 5])]
    with pytest.raises(SystemExit, match="scored different records"):
        bench.ensemble("t", rows, bootstrap=0, seed=0)


def test_a_table_another_command_wrote_is_never_replaced(bench, tmp_path, capsys):
    table = tmp_path / "benchmark_ptbxl.json"
    bench._refuse_other_commands(table, "python scripts/benchmark_ptbxl.py --epochs 1")  # no file yet
    table.write_text(json.dumps({"command": "python scripts/benchmark_ptbxl.py --epochs 50", "runs": []}))
    bench._refuse_other_commands(table, "python scripts/benchmark_ptbxl.py --epochs 50")  # resuming
    with pytest.raises(SystemExit) as stop:
        bench._refuse_other_commands(table, "python scripts/benchmark_ptbxl.py --epochs 1")
    assert stop.value.code == 2
    assert "another command (python scripts/benchmark_ptbxl.py --epochs 50)" in capsys.readouterr().err
    table.write_text(json.dumps({"runs": []}))  # tables from before commands were recorded
    with pytest.raises(SystemExit):
        bench._refuse_other_commands(table, "python scripts/benchmark_ptbxl.py --epochs 50")
    assert "an earlier run (its command was not recorded)" in capsys.readouterr().err

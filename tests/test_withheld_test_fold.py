"""Every stage works on a copy of PTB-XL without its test fold (fold 10 withheld, as for the full
data here): fine-tuning, refinement and the benchmark report fold-9 figures and say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ecgrisk.bundle import Bundle
from ecgrisk.config import compose
from ecgrisk.finetune.app import train
from ecgrisk.refine.app import refine

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=xresnet1d18", "model.kwargs.base_channels=8", "data.batch_size=32",
        "trainer.enable_progress_bar=false", "bootstrap=10", "early_stopping_patience=null"]


@pytest.fixture(scope="module")
def no_test_fold(ptbxl_no_test_fold):
    return ptbxl_no_test_fold


@pytest.fixture(scope="module")
def finetuned(no_test_fold, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    metrics = train(compose("finetune", [f"data.root={no_test_fold}", f"data.cache_dir={tmp / 'cache'}",
                                         f"output_dir={tmp / 'run'}", "trainer.max_epochs=1", *TINY]))
    return tmp, metrics


def test_finetuning_reports_fold_9_with_intervals_when_the_test_fold_is_absent(finetuned):
    tmp, m = finetuned
    assert m["test/records"] == 0 and not any(k.startswith("test/macro") for k in m)
    assert m["val/records"] > 0
    assert m["val/macro_auroc/lower"] <= m["val/macro_auroc"] <= m["val/macro_auroc/upper"]
    run = tmp / "run"
    assert json.loads((run / "metrics.json").read_text())["test/records"] == 0
    assert not (run / "predictions" / "test.csv").exists()
    val = pd.read_csv(run / "predictions" / "val.csv")
    assert len(val) == m["val/records"]
    Bundle.load(run / "model.pt")  # the bundle is written and loads


def test_refinement_reports_the_guard_half_when_the_test_fold_is_absent(finetuned, no_test_fold):
    tmp, _ = finetuned
    m = refine(compose("refine", [f"data.root={no_test_fold}", f"data.cache_dir={tmp / 'cache'}",
                                  f"output_dir={tmp / 'refine'}", f"base={tmp / 'run' / 'model.pt'}",
                                  "progress=false", "bootstrap=10", "rounds=1", "queries_per_round=8"]))
    assert m["report/records"] == 0 and "report/macro_auroc" not in m
    assert m["guard/records"] > 0 and 0.0 <= m["val/macro_auroc"] <= 1.0
    assert (tmp / "refine" / "model.pt").is_file()


def test_benchmark_script_scores_fold_9_and_says_so(no_test_fold, tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_ptbxl.py"), "--root", str(no_test_fold),
           "--models", "xresnet1d18", "--tasks", "superdiagnostic", "--epochs", "1", "--no-throughput",
           "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    env = {**os.environ, "ECGRISK_CACHE": str(tmp_path / "cache")}
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    row = json.loads((out / "benchmark_ptbxl.json").read_text())["runs"][0]
    assert row["split"] == "val" and row["records"] > 0
    assert row["macro_auroc/lower"] <= row["macro_auroc"] <= row["macro_auroc/upper"]
    assert "fold 9 (val)" in (out / "benchmark_ptbxl.md").read_text()

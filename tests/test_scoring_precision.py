"""scripts/bench_scoring_precision.py: one bf16-calibrated bundle scored both ways on the same
fold-9 records, the differences and AUROCs read off the two sets of probabilities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from script_support import load_script

from ecgrisk.bundle import Bundle
from ecgrisk.data.ptbxl import PTBXL
from ecgrisk.data.synthetic import make_synthetic_ptbxl
from ecgrisk.io import read_ecg
from ecgrisk.metrics import macro_auroc
from ecgrisk.models import create_encoder
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.preprocess import Preprocessing, Scaler
from ecgrisk.scoring.predict import Predictor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precision")
    root = make_synthetic_ptbxl(tmp / "ptbxl", n_records=80, progress=False)
    classes = list(PTBXL(root).classes)
    torch.manual_seed(0)
    model = ECGClassifier(create_encoder("xresnet1d18", base_channels=8), num_classes=len(classes)).eval()
    path = tmp / "model.pt"
    Bundle(model=model, classes=classes, preprocessing=Preprocessing(fs=100.0), scaler=Scaler(0.0, 0.2),
           temperature=np.ones(len(classes)), name="tiny", version="1", precision="bf16-mixed").save(path)
    return tmp, root, path


def test_both_settings_score_the_same_records_and_the_differences_are_theirs(setup):
    tmp, root, path = setup
    bench = load_script("bench_scoring_precision")
    r = bench.main(["--root", str(root), "--model", str(path), "--records", "6", "--out", str(tmp / "out")])
    assert json.loads((tmp / "out" / "scoring_precision.json").read_text()) == json.loads(json.dumps(r))
    data = PTBXL(root)
    idx = np.flatnonzero(data.folds == 9)[:6]
    assert r["records"] == len(idx) and r["windows"] == 7 * len(idx)  # 10 s at 2.5 s windows, 1.25 s stride
    predictor = Predictor(Bundle.load(path))
    prepared = [predictor.spec.prepare(e.signal, e.fs) for e in (read_ecg(data.paths[i]) for i in idx)]
    predictor.bf16 = False
    fp32 = predictor.predict_prepared(prepared)
    predictor.bf16 = True
    bf16 = predictor.predict_prepared(prepared)
    d = np.abs(fp32 - bf16)
    assert r["abs_diff"]["max"] == pytest.approx(d.max()) and r["abs_diff"]["median"] == pytest.approx(np.median(d))
    assert 0 < r["abs_diff"]["max"] < 0.1
    y = data.labels[idx]
    for setting, probs in (("fp32", fp32), ("bf16", bf16)):
        np.testing.assert_allclose(r["macro_auroc"][setting], macro_auroc(y, probs), equal_nan=True)
    md = (tmp / "out" / "scoring_precision.md").read_text()
    assert "| bf16 |" in md and "| fp32 |" in md and "bf16" in md

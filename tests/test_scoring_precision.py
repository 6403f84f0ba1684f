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
from ecgrisk.models.layers import fuse_conv_bn
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
    r = bench.main(["--root", str(root), "--model", str(path), "--records", "6", "--repeats", "2",
                    "--out", str(tmp / "out")])
    assert r["repeats"] == 2
    assert json.loads((tmp / "out" / "scoring_precision.json").read_text()) == json.loads(json.dumps(r))
    data = PTBXL(root)
    idx = np.flatnonzero(data.folds == 9)[:6]
    assert r["records"] == len(idx) and r["windows"] == 7 * len(idx)  # 10 s at 2.5 s windows, 1.25 s stride
    bundle = Bundle.load(path)
    predictor = Predictor(bundle)
    prepared = [predictor.spec.prepare(e.signal, e.fs) for e in (read_ecg(data.paths[i]) for i in idx)]
    probs = {}
    for name, model, bf16 in bench.SETTINGS:
        predictor.model = fuse_conv_bn(bundle.model) if model == "folded" else bundle.model.eval()
        predictor.bf16 = bf16
        probs[name] = predictor.predict_prepared(prepared)
    reference = bench.SETTINGS[0][0]
    assert r["reference"] == reference and set(r["abs_diff"]) == set(probs) - {reference}
    for name, p in probs.items():
        if name != reference:
            d = np.abs(p - probs[reference])
            assert r["abs_diff"][name]["max"] == pytest.approx(d.max())
            assert r["abs_diff"][name]["median"] == pytest.approx(np.median(d))
            assert 0 < r["abs_diff"][name]["max"] < 0.1
    y = data.labels[idx]
    for name, p in probs.items():
        np.testing.assert_allclose(r["macro_auroc"][name], macro_auroc(y, p), equal_nan=True)
    md = (tmp / "out" / "scoring_precision.md").read_text()
    assert all(f"| {name} |" in md for name in probs)

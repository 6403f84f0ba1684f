"""scripts/probe_stages.py: stage features, the per-class probe, and a run on PTB-XL's layout."""

from __future__ import annotations

import json

import numpy as np
import torch
from script_support import load_script

from ecgrisk.bundle import save_encoder
from ecgrisk.models import create_encoder

probe_stages = load_script("probe_stages")


def test_stage_features_hold_each_stage_mean_and_max_the_last_as_the_encoder_computes_it():
    torch.manual_seed(0)
    encoder = create_encoder("xresnet1d18", base_channels=8).eval()
    x = torch.randn(5, 12, 250)
    got = probe_stages.stage_features(encoder, [(w, None) for w in x], batch=2)
    widths = []
    h = encoder.stem(x.unsqueeze(2).contiguous(memory_format=torch.channels_last))
    for stage in encoder.stages:
        h = stage(h)
        widths.append(h.shape[1])
    assert got.shape == (5, 2 * sum(widths)) and widths[-1] == encoder.feature_dim
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        last = encoder.forward_features(x).float()
    d = encoder.feature_dim
    np.testing.assert_allclose(got[:, -2 * d:-d], last.mean(-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(got[:, -d:], last.amax(-1).numpy(), atol=1e-5)


def test_record_means_average_each_records_windows():
    per_window = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [5.0, 5.0], [7.0, 1.0]])
    means = probe_stages.record_means(per_window, np.array([0, 0, 1, 2, 2]), 3)
    np.testing.assert_allclose(means, [[2.0, 3.0], [10.0, 0.0], [6.0, 3.0]])


def test_the_probe_separates_what_is_separable_and_scores_a_one_valued_class_constant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = np.stack([(x[:, 0] > 0), (x[:, 1] + x[:, 2] > 0), np.zeros(200, bool)], 1).astype(int)
    scores = probe_stages.probe(x[:150], y[:150], x[150:], c=1.0)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[150:, 0], scores[:, 0]) > 0.99
    assert roc_auc_score(y[150:, 1], scores[:, 1]) > 0.99
    assert (scores[:, 2] == 0).all()


def test_a_run_writes_one_row_per_seed_stage_set_and_c(ptbxl_root, tmp_path):
    encoder = create_encoder("xresnet1d18", base_channels=8)
    save_encoder(tmp_path / "encoder.pt", encoder)
    out = tmp_path / "probe"
    probe_stages.main(["--root", str(ptbxl_root), "--encoder", str(tmp_path / "encoder.pt"),
                       "--fraction", "0.5", "--val-fold", "9", "--seeds", "0", "1",
                       "--C", "0.01", "1", "--out", str(out)])
    result = json.loads((tmp_path / "probe.json").read_text())
    runs = result["runs"]
    assert [(r["seed"], r["stages"], r["C"]) for r in runs] == [
        (s, st, c) for s in (0, 1) for st in ("last", "all") for c in (0.01, 1.0)]
    assert result["train_folds"] == list(range(1, 9)) and result["val_fold"] == 9
    assert {r["features"] for r in runs if r["stages"] == "last"} == {2 * encoder.feature_dim}
    assert all(r["features"] > 2 * encoder.feature_dim for r in runs if r["stages"] == "all")
    assert all(0 <= r["lower"] <= r["point"] <= r["upper"] <= 1 for r in runs)
    table = (tmp_path / "probe.md").read_text()
    assert table.count("\n| last |") == 2 and table.count("\n| all |") == 2

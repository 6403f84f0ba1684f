"""scripts/probe_stages.py and the probe pieces it uses: per-record means, the per-class probe,
and a run on PTB-XL's layout."""

from __future__ import annotations

import json

import numpy as np
import torch
from script_support import load_script

from ecgrisk.bundle import save_encoder
from ecgrisk.models import create_encoder
from ecgrisk.pretrain.probe import embed_records, probe_scores

probe_stages = load_script("probe_stages")


class _Windows(torch.utils.data.Dataset):
    """Five windows of three records, as a WindowDataset yields them: (signal, label, index)."""

    indices = np.arange(3)
    positions = np.array([0, 0, 1, 2, 2])
    signals = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [5.0, 5.0], [7.0, 1.0]])

    def __len__(self):
        return 5

    def __getitem__(self, k):
        return self.signals[k][None], torch.zeros(1), k


class _Identity(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def embed(self, x):
        return x[:, 0]


def test_record_features_are_each_records_mean_over_its_windows():
    means = embed_records(_Identity(), _Windows(), batch_size=2)
    np.testing.assert_allclose(means, [[2.0, 3.0], [10.0, 0.0], [6.0, 3.0]])


def test_the_probe_separates_what_is_separable_and_scores_a_one_valued_class_constant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = np.stack([(x[:, 0] > 0), (x[:, 1] + x[:, 2] > 0), np.zeros(200, bool)], 1).astype(int)
    scores = probe_scores(x[:150], y[:150], x[150:], C=1.0)
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

"""Ensemble bundles: the mean of the members' calibrated logits, saved, scored, recalibrated."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ecgrisk.bundle import Bundle
from ecgrisk.bundle_files import BundleError
from ecgrisk.cli import main as cli_main
from ecgrisk.io import read_ecg
from ecgrisk.models import create_encoder
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.models.ensemble import EnsembleClassifier
from ecgrisk.preprocess import Preprocessing, Scaler
from ecgrisk.scoring.ensemble import ensemble_bundles
from ecgrisk.scoring.job import score_files

CLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]


def _member(path, seed, arch, scaler, temperature, bias, classes=CLASSES, fs=100.0):
    torch.manual_seed(seed)
    kwargs = {"base_channels": 8} if arch.startswith("xresnet") else {"nb_filters": 8, "depth": 3}
    model = ECGClassifier(create_encoder(arch, **kwargs), num_classes=len(classes)).eval()
    Bundle(model=model, classes=classes, preprocessing=Preprocessing(fs=fs), scaler=scaler,
           temperature=temperature, bias=bias, name=f"{arch}-tiny", version=str(seed),
           config=yaml.safe_dump({
               "data": {"task": "superdiagnostic", "val_folds": [9]},
               "model": {"name": arch, "head": "linear", "pretrained": None},
               "finetune": {"mode": "full", "lr": 0.01}, "trainer": {"max_epochs": 3}})).save(path)
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("members")
    a = _member(tmp / "a.pt", 0, "xresnet1d18", Scaler(mean=0.01, std=0.2),
                np.array([1.0, 2.0, 0.5, 1.5, 0.8]), np.array([0.3, -1.0, 0.0, 0.5, -0.2]))
    # another architecture, calibration and scaler, as a second run would have fitted them
    b = _member(tmp / "b.pt", 1, "inception1d", Scaler(mean=-0.02, std=0.15),
                np.array([0.7, 1.2, 3.0, 0.9, 1.1]), np.array([-0.4, 0.2, 0.6, 0.0, 0.1]))
    return a, b


def _hand(members, x_mv: np.ndarray) -> np.ndarray:
    """Each member on its own scaling of the same windows, calibrated, then the mean."""
    zs = []
    for path in members:
        m = Bundle.load(path)
        with torch.no_grad():
            z = m.model(torch.from_numpy(m.scaler(x_mv))).double().numpy()
        zs.append(z / m.temperature + m.bias)
    return np.mean(zs, axis=0)


def test_the_ensemble_is_the_mean_of_its_members_calibrated_logits(members):
    ens = ensemble_bundles(list(members))
    x = np.random.default_rng(0).normal(0, 0.3, (3, 12, 250)).astype(np.float32)
    with torch.no_grad():
        got = ens.model(torch.from_numpy(ens.scaler(x))).double().numpy()
    np.testing.assert_allclose(got, _hand(members, x), atol=1e-5)
    assert ens.name == "xresnet1d18-tiny+inception1d-tiny" and ens.classes == CLASSES
    np.testing.assert_array_equal(ens.temperature, 1.0)
    np.testing.assert_array_equal(ens.bias, 0.0)
    assert [m["name"] for m in ens.extra["ensemble"]] == ["xresnet1d18-tiny", "inception1d-tiny"]
    assert "task: superdiagnostic" in ens.config and "review" not in ens.extra
    assert "train_records" not in ens.extra  # the members do not say what they trained on


def test_an_ensemble_bundle_round_trips_and_scores_as_the_hand_computation(members, ptbxl_root, tmp_path,
                                                                          caplog):
    out = tmp_path / "ens.pt"
    assert cli_main(["ensemble", *map(str, members), "--out", str(out)]) == 0
    ens = Bundle.load(out)  # the digest and the state dict are checked on load
    assert isinstance(ens.model, EnsembleClassifier) and len(ens.model.members) == 2
    rec = ptbxl_root / "records100" / "00000" / "00001_lr"
    scores = tmp_path / "scores.csv"
    with caplog.at_level(logging.WARNING):
        summary = score_files([str(rec) + ".hea"], out, scores, workers=0, progress=False)
    assert summary.scored == 1
    assert any("is an ensemble not yet recalibrated" in r.getMessage() for r in caplog.records)
    row = next(csv.DictReader(scores.open()))
    # 10 s at 100 Hz: windows of 2.5 s at 1.25 s stride, max over them, identity calibration
    x = read_ecg(rec).signal
    windows = np.stack([x[:, a:a + 250] for a in range(0, 751, 125)])
    want = 1 / (1 + np.exp(-_hand(members, windows).max(axis=0)))
    np.testing.assert_allclose([float(row[f"prob/{c}"]) for c in CLASSES], want, atol=1e-5)
    assert row["model_name"] == ens.name and row["n_windows"] == "7"


def test_members_that_read_an_ecg_differently_are_refused(members, tmp_path):
    a, _ = members
    other = _member(tmp_path / "c.pt", 2, "xresnet1d18", Scaler(0.0, 1.0), np.ones(4), np.zeros(4),
                    classes=CLASSES[:4])
    with pytest.raises(BundleError, match=r"c\.pt: classes \['NORM', 'MI', 'STTC', 'CD'\] against"):
        ensemble_bundles([a, other])
    slow = _member(tmp_path / "d.pt", 3, "xresnet1d18", Scaler(0.0, 1.0), np.ones(5), np.zeros(5),
                   fs=250.0)
    with pytest.raises(BundleError, match=r"d\.pt: preprocessing \{'fs': 250\.0"):
        ensemble_bundles([a, slow])
    with pytest.raises(BundleError, match="at least 2"):
        ensemble_bundles([a])
    nested = tmp_path / "e.pt"
    ensemble_bundles(list(members)).save(nested)
    with pytest.raises(BundleError, match="is an ensemble already"):
        ensemble_bundles([nested, a])


def test_recalibrate_fits_the_ensembles_own_calibration_and_review_band(members, ptbxl_root, tmp_path, capsys):
    ens = tmp_path / "ens.pt"
    ensemble_bundles(list(members)).save(ens)
    db = pd.read_csv(ptbxl_root / "ptbxl_database.csv").head(40)
    manifest = tmp_path / "records.csv"
    pd.DataFrame({"path": [str(ptbxl_root / f) for f in db.filename_lr]}).to_csv(manifest, index=False)
    scores = tmp_path / "scores.csv"
    score_files([str(manifest)], ens, scores, workers=0, progress=False)
    rows = pd.read_csv(scores)
    y = (np.random.default_rng(0).random((len(rows), len(CLASSES))) < 0.3).astype(int)
    labels = tmp_path / "labels.csv"
    pd.DataFrame(y, columns=CLASSES).assign(record=rows["record"]).to_csv(labels, index=False)
    final = tmp_path / "final.pt"
    assert cli_main(["recalibrate", str(scores), "--labels", str(labels), "--model", str(ens),
                     "--out", str(final)]) == 0
    new = Bundle.load(final)
    assert isinstance(new.model, EnsembleClassifier) and new.extra["review"]["n"] == 40
    t2 = np.array(new.extra["recalibration"]["temperature_factor"])
    np.testing.assert_allclose(new.temperature, t2)  # the identity times the refit
    assert new.extra["ensemble"] == Bundle.load(ens).extra["ensemble"]


def test_refinement_refuses_an_ensemble_base_and_names_its_members(members, tmp_path):
    from ecgrisk.config import compose
    from ecgrisk.refine.app import refine

    ens = tmp_path / "ens.pt"
    ensemble_bundles(list(members)).save(ens)
    cfg = compose("refine", [f"base={ens}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match=r"is an ensemble: refine one of its members \(.*a\.pt"):
        refine(cfg)


def test_an_ensemble_exports_to_onnx_and_scores_the_same_there(members, ptbxl_root, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    ens = tmp_path / "ens.pt"
    ensemble_bundles(list(members)).save(ens)
    assert cli_main(["export", str(ens), "--onnx", str(tmp_path / "ens.onnx")]) == 0
    rec = str(ptbxl_root / "records100" / "00000" / "00002_lr.hea")
    a, b = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    score_files([rec], ens, a, workers=0, progress=False)
    score_files([rec], ens, b, workers=0, progress=False, backend="onnx", onnx_path=tmp_path / "ens.onnx")
    cols = [f"prob/{c}" for c in CLASSES]
    np.testing.assert_allclose(pd.read_csv(a)[cols].to_numpy(), pd.read_csv(b)[cols].to_numpy(), atol=1e-5)


def test_an_ensemble_records_every_record_its_members_trained_on(members, tmp_path):
    paths = []
    for i, (path, ids) in enumerate(zip(members, (["1", "2", "5"], ["2", "3"]), strict=True)):
        b = Bundle.load(path)
        b.extra["train_records"] = ids
        b.save(tmp_path / f"m{i}.pt")
        paths.append(tmp_path / f"m{i}.pt")
    # as a self-training teacher it is refused for any record a member learned the labels of
    assert ensemble_bundles(paths).extra["train_records"] == ["1", "2", "3", "5"]

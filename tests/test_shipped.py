"""The bundles ecgrisk ships: present, small, weights-only, intact, with a card, and sensible on a
known real record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgrisk.bundle import Bundle
from ecgrisk.bundle_files import BundleError, resolve
from ecgrisk.files import file_sha256
from ecgrisk.io import read_ecg
from ecgrisk.scoring.predict import predict_proba
from ecgrisk.shipped import DEFAULT_BUNDLE, SHIPPED_DIR, list_shipped

SHIPPED = ["ptbxl-superdiagnostic", "ptbxl-all", "ptbxl-all-ensemble", "ptbxl-superdiagnostic-ensemble"]


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_bundle_is_small_weights_only_intact_and_has_its_card(name):
    path = SHIPPED_DIR / f"{name}.pt"
    assert name in list_shipped() and resolve(name) == path
    assert path.stat().st_size <= 25 * 2**20
    obj = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code
    bundle = Bundle.load(name)  # checks the stored digest
    assert bundle.classes == obj["meta"]["classes"]
    # rebuilt from the file, it describes itself as it was stored (architecture spec included)
    assert bundle.digest() == obj["sha256"]
    # stored in the file (the fallback to the fine-tuning config is for older bundles only)
    assert obj["meta"]["precision"] == bundle.precision == "bf16-mixed"
    card = (SHIPPED_DIR / f"{name}.md").read_text()
    assert file_sha256(path) in card and "CC BY 4.0" in card and "fold 9" in card


def test_the_default_bundle_is_shipped():
    assert DEFAULT_BUNDLE in list_shipped()


def test_an_unknown_name_is_a_clear_error():
    with pytest.raises(BundleError, match="no shipped bundle has that name.*" + ", ".join(sorted(SHIPPED))):
        Bundle.load("ptbxl-nonexistent")


@pytest.fixture(scope="module")
def record_00001(shared):
    # PTB-XL ecg_id 1 (fold 3): NORM, SR, LVOLT; the shipped bundles were trained on folds 1-8
    return read_ecg(shared / "ptb-xl" / "records100" / "00000" / "00001_lr")


@pytest.mark.parametrize("name", ["ptbxl-superdiagnostic", "ptbxl-superdiagnostic-ensemble"])
def test_superdiagnostic_bundle_reads_a_normal_ecg_as_normal(record_00001, name):
    bundle = Bundle.load(name)
    p = dict(zip(bundle.classes, predict_proba(bundle, record_00001.signal, record_00001.fs), strict=True))
    assert max(p, key=p.get) == "NORM" and p["NORM"] > 0.5


@pytest.mark.parametrize("name", ["ptbxl-all", "ptbxl-all-ensemble"])
def test_all_statements_bundle_finds_normal_and_sinus_rhythm(record_00001, name):
    bundle = Bundle.load(name)
    p = dict(zip(bundle.classes, predict_proba(bundle, record_00001.signal, record_00001.fs), strict=True))
    top = sorted(p, key=p.get, reverse=True)[:3]
    assert {"NORM", "SR"} <= set(top) and p["NORM"] > 0.5 and p["SR"] > 0.5


def test_score_without_model_uses_the_default_bundle(ptbxl_root, tmp_path):
    import pandas as pd

    from ecgrisk.cli import main

    out = tmp_path / "scores.csv"
    rc = main(["score", str(ptbxl_root / "records100" / "00000" / "00001_lr.hea"),
               "--out", str(out), "--quiet", "--workers", "0"])
    assert rc == 0
    row = pd.read_csv(out).iloc[0]
    assert row["model_name"] == Bundle.load(DEFAULT_BUNDLE).name and not isinstance(row["error"], str)


def test_the_demo_sample_is_real_ptbxl_without_the_test_fold(tmp_path):
    from ecgrisk.data.ptbxl import PTBXL
    from ecgrisk.demo import SAMPLE, unpack_sample

    assert SAMPLE.stat().st_size <= 10 * 2**20
    root = unpack_sample(tmp_path)
    assert unpack_sample(tmp_path) == root  # unpacked once, then reused
    attribution = (root / "ATTRIBUTION.md").read_text()
    assert "Creative Commons Attribution 4.0" in attribution and "Wagner" in attribution
    assert "Attribution 4.0 International" in (root / "LICENSE.txt").read_text()
    ds = PTBXL(root, task="superdiagnostic")
    assert ds.missing == [] and len(ds.record_ids) + len(ds.unlabeled) == 400
    assert set(ds.folds) <= set(range(1, 10)) and (ds.folds == 9).sum() >= 70
    assert ds.classes == ["CD", "HYP", "MI", "NORM", "STTC"]  # every superclass is represented
    ecg = read_ecg(ds.paths[0])
    assert ecg.signal.shape == (12, 1000) and ecg.fs == 100.0 and ecg.lead_mask.all()


def test_an_encoder_file_shipped_under_a_name_loads_by_that_name(tmp_path, monkeypatch, capsys):
    import ecgrisk.shipped
    from ecgrisk.bundle import save_encoder
    from ecgrisk.config import compose
    from ecgrisk.finetune.app import build_classifier
    from ecgrisk.models import create_encoder
    from ecgrisk.models.classifier import ECGClassifier
    from ecgrisk.preprocess import Preprocessing, Scaler

    monkeypatch.setattr(ecgrisk.shipped, "SHIPPED_DIR", tmp_path)
    tiny = ["model=xresnet1d18", "model.kwargs.base_channels=8"]
    encoder = create_encoder("xresnet1d18", base_channels=8, kernel_size=5, kernel_size_stem=5)
    save_encoder(tmp_path / "tiny-encoder.pt", encoder, extra={"objective": "cpc"})
    Bundle(model=ECGClassifier(encoder, 2), classes=["A", "B"], preprocessing=Preprocessing(),
           scaler=Scaler(0.0, 1.0), temperature=[1.0, 1.0]).save(tmp_path / "tiny-bundle.pt")

    assert list_shipped() == ["tiny-bundle", "tiny-encoder"]
    model = build_classifier(compose("finetune", [*tiny, "model.pretrained=tiny-encoder"]).model, 5)
    for k, v in encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[k], v, rtol=0, atol=0, msg=k)
    # a typo lists the shipped encoders (not the bundles); a bundle's name is told apart
    with pytest.raises(BundleError, match=r"no shipped encoder has that name \(shipped encoders: tiny-encoder\)"):
        build_classifier(compose("finetune", [*tiny, "model.pretrained=tiny-encodr"]).model, 5)
    with pytest.raises(BundleError, match="tiny-bundle.pt: is a model bundle, not an encoder file"):
        build_classifier(compose("finetune", [*tiny, "model.pretrained=tiny-bundle"]).model, 5)
    with pytest.raises(BundleError, match=r"tiny-encoder.pt: is an encoder file, not a model bundle "
                                          r"\(fine-tune it into one first: ecgrisk-finetune "
                                          r"model.pretrained=tiny-encoder\)"):
        Bundle.load("tiny-encoder")
    # scoring reads the bundle's metadata before torch loads it: the same refusal, not a KeyError
    # on a field encoders lack
    import wfdb

    from ecgrisk.cli import main as cli_main

    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    wfdb.wrsamp("r1", fs=100, units=["mV"] * 12, sig_name=leads, write_dir=str(tmp_path),
                p_signal=np.random.default_rng(0).standard_normal((1000, 12)) * 0.3, fmt=["16"] * 12)
    rc = cli_main(["score", str(tmp_path / "r1.hea"), "--model", "tiny-encoder", "--out",
                   str(tmp_path / "s.csv"), "--quiet", "--workers", "0"])
    assert rc == 2 and not (tmp_path / "s.csv").exists()
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "tiny-encoder.pt: is an encoder file, not a model bundle (fine-tune it" in err


@pytest.mark.parametrize("name,objective", [("cpc-xresnet1d101", "cpc"),
                                            ("contrastive-xresnet1d101", "contrastive")])
def test_a_shipped_encoder_loads_by_name_into_fine_tuning(name, objective):
    from ecgrisk.bundle import encoder_meta
    from ecgrisk.config import compose
    from ecgrisk.finetune.app import build_classifier

    path = SHIPPED_DIR / f"{name}.pt"
    assert path.stat().st_size <= 25 * 2**20
    meta = encoder_meta(name)  # checks the stored digest
    assert meta["objective"] == objective and meta["spec"]["name"] == "xresnet1d101"
    assert meta["train_folds"] == list(range(1, 10))  # fold 10 never read
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model = build_classifier(compose("finetune", ["model=xresnet1d101",
                                                  f"model.pretrained={name}"]).model, 5)
    for k, v in saved.items():
        torch.testing.assert_close(model.encoder.state_dict()[k], v, rtol=0, atol=0, msg=k)
    card = (SHIPPED_DIR / f"{name}.md").read_text()
    assert file_sha256(path) in card and "CC BY 4.0" in card and "Open Data Commons" in card

"""The bundles ecgrisk ships: present, small, weights-only, intact, with a card, and sensible on a
known real record."""

from __future__ import annotations

import pytest
import torch

from ecgrisk.bundle import Bundle, BundleError, resolve
from ecgrisk.files import file_sha256
from ecgrisk.io import read_ecg
from ecgrisk.scoring.predict import predict_proba
from ecgrisk.shipped import DEFAULT_BUNDLE, SHIPPED_DIR, list_shipped

SHIPPED = ["ptbxl-superdiagnostic", "ptbxl-all"]


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_bundle_is_small_weights_only_intact_and_has_its_card(name):
    path = SHIPPED_DIR / f"{name}.pt"
    assert name in list_shipped() and resolve(name) == path
    assert path.stat().st_size <= 25 * 2**20
    obj = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code
    bundle = Bundle.load(name)  # checks the stored digest
    assert bundle.classes == obj["meta"]["classes"]
    card = (SHIPPED_DIR / f"{name}.md").read_text()
    assert file_sha256(path) in card and "CC BY 4.0" in card and "fold 9" in card


def test_the_default_bundle_is_shipped():
    assert DEFAULT_BUNDLE in list_shipped()


def test_an_unknown_name_is_a_clear_error():
    with pytest.raises(BundleError, match="no shipped bundle has that name.*ptbxl-all, ptbxl-superdiagnostic"):
        Bundle.load("ptbxl-nonexistent")


@pytest.fixture(scope="module")
def record_00001(shared):
    # PTB-XL ecg_id 1 (fold 3): NORM, SR, LVOLT; the shipped bundles were trained on folds 1-8
    return read_ecg(shared / "ptb-xl" / "records100" / "00000" / "00001_lr")


def test_superdiagnostic_bundle_reads_a_normal_ecg_as_normal(record_00001):
    bundle = Bundle.load("ptbxl-superdiagnostic")
    p = dict(zip(bundle.classes, predict_proba(bundle, record_00001.signal, record_00001.fs), strict=True))
    assert max(p, key=p.get) == "NORM" and p["NORM"] > 0.5


def test_all_statements_bundle_finds_normal_and_sinus_rhythm(record_00001):
    bundle = Bundle.load("ptbxl-all")
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

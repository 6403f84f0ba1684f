"""``ecgrisk recalibrate``: the refit recovers a known miscalibration, the written bundle scores
exactly what the refit predicts with the ranking unchanged, and scores of another model are
refused."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ecgrisk.bundle import Bundle
from ecgrisk.cli import main as cli_main
from ecgrisk.conformal import ReviewBand, fit_review, review_risk
from ecgrisk.scoring.job import score_files
from ecgrisk.scoring.recalibrate import fit_recalibration, recalibrated


def test_the_refit_recovers_a_known_temperature_and_bias():
    rng = np.random.default_rng(0)
    u = rng.normal(0, 2.5, size=(40_000, 2))
    t2, b2 = np.array([2.0, 0.5]), np.array([-1.0, 0.7])
    y = (rng.random(u.shape) < 1 / (1 + np.exp(-(u / t2 + b2)))).astype(np.uint8)
    p = 1 / (1 + np.exp(-u))  # the bundle's probabilities, miscalibrated for these labels
    t_fit, b_fit = fit_recalibration(p, y)
    np.testing.assert_allclose(t_fit, t2, rtol=0.05)
    np.testing.assert_allclose(b_fit, b2, atol=0.05)
    np.testing.assert_allclose(recalibrated(p, t_fit, b_fit)[:5],
                               1 / (1 + np.exp(-(u[:5] / t_fit + b_fit))), rtol=1e-9)


@pytest.fixture(scope="module")
def scored(ptbxl_root, tmp_path_factory):
    """60 PTB-XL records scored by the shipped superdiagnostic bundle, and their labels CSV."""
    tmp = tmp_path_factory.mktemp("recal")
    db = pd.read_csv(ptbxl_root / "ptbxl_database.csv").head(60)
    manifest = tmp / "records.csv"
    pd.DataFrame({"path": [str(ptbxl_root / f) for f in db.filename_lr]}).to_csv(manifest, index=False)
    scores = tmp / "scores.csv"
    score_files([str(manifest)], _shipped("ptbxl-superdiagnostic"), scores, workers=0, progress=False)
    # labels of our own making (a clinic's convention), so the shipped calibration is off for them
    rows = pd.read_csv(scores)
    rng = np.random.default_rng(1)
    classes = [c[5:] for c in rows.columns if c.startswith("prob/")]
    y = (rng.random((len(rows), len(classes))) < 0.8 * rows[[f"prob/{c}" for c in classes]].to_numpy()
         + 0.1).astype(int)
    labels = tmp / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["record", *classes])
        w.writerows([r, *v] for r, v in zip(rows["record"], y.tolist(), strict=True))
    return manifest, scores, labels, classes, y


def _shipped(name):
    from ecgrisk.bundle_files import resolve

    return resolve(name)


def test_the_recalibrated_bundle_scores_what_the_refit_predicts(scored, tmp_path, capsys):
    manifest, scores, labels, classes, y = scored
    out = tmp_path / "local.pt"
    assert cli_main(["recalibrate", str(scores), "--labels", str(labels), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "refitted on 60 ECGs" in said and "held out (fitted on half of these ECGs" in said
    new, old = Bundle.load(out), Bundle.load("ptbxl-superdiagnostic")
    r = new.extra["recalibration"]
    t2, b2 = np.array(r["temperature_factor"]), np.array(r["bias_shift"])
    np.testing.assert_allclose(new.temperature, old.temperature * t2)
    np.testing.assert_allclose(new.bias, old.bias / t2 + b2)
    assert new.version.startswith(old.version + "+recalibrated-") and new.base == str(_shipped(
        "ptbxl-superdiagnostic").resolve())
    # the review band refitted on the same 60 ECGs, on the probabilities the new bundle gives
    p_new = recalibrated(pd.read_csv(scores)[[f"prob/{c}" for c in classes]].to_numpy(), t2, b2)
    assert new.extra["review"] == fit_review(y, p_new, 0.1).to_dict()
    assert new.extra["review"]["n"] == 60 and "conformal" not in new.extra
    # what the bundle's own band did on these ECGs, on the probabilities they had
    band = ReviewBand.from_dict(old.extra["review"])
    own = review_risk(band, y, pd.read_csv(scores)[[f"prob/{c}" for c in classes]].to_numpy())
    assert r["review"]["bundle"]["unreviewed_misread"] == pytest.approx(own["unreviewed_misread"])
    assert f"leaves {own['unreviewed_misread']:.1%} unflagged and misread (its bound: 10%)" in said
    # the shipped band was fitted within age, sex and device groups; without --by, the run says so
    assert ("pass --by age:40,60,80 --by sex --by device (columns of the labels or the scores)"
            in " ".join(said.split()))
    h = r["held_out"]
    assert r["form"] == h["chosen"] == min(h["forms"], key=lambda f: h["forms"][f]["brier"])
    if r["form"] == "shift":
        np.testing.assert_array_equal(t2, 1.0)

    rescored = tmp_path / "rescored.csv"
    score_files([str(manifest)], out, rescored, workers=0, progress=False)
    cols = [f"prob/{c}" for c in classes]
    before, after = pd.read_csv(scores)[cols].to_numpy(), pd.read_csv(rescored)[cols].to_numpy()
    np.testing.assert_allclose(after, recalibrated(before, t2, b2), atol=1e-9)
    for j in range(len(classes)):  # a monotone map per statement: the ranking stays
        if 0 < y[:, j].sum() < len(y):
            assert roc_auc_score(y[:, j], after[:, j]) == pytest.approx(roc_auc_score(y[:, j], before[:, j]))
    assert r["brier_after"] < r["brier_before"]


def test_the_review_band_is_refitted_in_each_group_asked_for(scored, tmp_path, capsys, monkeypatch):
    import ecgrisk.conformal

    _, scores, labels, classes, y = scored
    monkeypatch.setattr(ecgrisk.conformal, "MIN_GROUP", 20)  # 60 ECGs here
    out = tmp_path / "grouped.pt"
    assert cli_main(["recalibrate", str(scores), "--labels", str(labels), "--out", str(out),
                     "--by", "risk_band"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    new = Bundle.load(out)
    r = new.extra["recalibration"]
    rows = pd.read_csv(scores)
    p_new = recalibrated(rows[[f"prob/{c}" for c in classes]].to_numpy(),
                         np.array(r["temperature_factor"]), np.array(r["bias_shift"]))
    want = fit_review(y, p_new, 0.1, {"risk_band": rows["risk_band"].astype(str).to_numpy()})
    assert new.extra["review"] == want.to_dict() and want.groups
    assert f"its bound held in each of {len(want.groups)} groups too" in said
    assert "in the worst group (risk_band=" in said and "note: the bundle's band" not in said


def test_scores_of_another_model_and_overwriting_the_bundle_are_refused(scored, tmp_path, capsys):
    _, scores, labels, *_ = scored
    other = tmp_path / "other.csv"
    rows = pd.read_csv(scores)
    rows["model_version"] = "19990101-000000"
    rows.to_csv(other, index=False)
    assert cli_main(["recalibrate", str(other), "--labels", str(labels), "--out",
                     str(tmp_path / "x.pt")]) == 2
    assert "not from" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    assert cli_main(["recalibrate", str(scores), "--labels", str(labels), "--out",
                     str(_shipped("ptbxl-superdiagnostic"))]) == 2
    assert "is the bundle being recalibrated" in capsys.readouterr().err


def test_the_held_out_check_chooses_the_form_and_tells_a_needed_refit_from_noise():
    from ecgrisk.scoring.recalibrate import choose_and_fit, held_out_check

    rng = np.random.default_rng(0)
    u = rng.normal(0, 2.0, size=(4_000, 2))
    p = 1 / (1 + np.exp(-u))
    # labels that need a temperature and a shift: that form wins, on every held-out half
    scaled = (rng.random(u.shape) < 1 / (1 + np.exp(-(u / 2.0 - 1.0)))).astype(np.uint8)
    needed = held_out_check(p, scaled)
    assert needed["chosen"] == "temperature and shift"
    assert needed["forms"]["temperature and shift"]["better_in"] == needed["splits"] == 20
    assert needed["forms"]["temperature and shift"]["brier"] < needed["forms"]["shift"]["brier"]
    # 300 ECGs that need only a shift: the one-parameter form wins, and beats the bundle
    shifted = (rng.random((300, 2)) < 1 / (1 + np.exp(-(u[:300] + 0.8)))).astype(np.uint8)
    t2, b2, check = choose_and_fit(p[:300], shifted)
    assert check["chosen"] == "shift" and check["forms"]["shift"]["better_in"] >= 15
    np.testing.assert_array_equal(t2, 1.0)
    assert 0.4 < b2.mean() < 1.2
    # labels drawn from p itself: nothing to correct, and 200 ECGs give either refit only noise
    fine = (rng.random((200, 2)) < p[:200]).astype(np.uint8)
    noise = held_out_check(p[:200], fine)
    for form in noise["forms"].values():
        assert form["brier"] > noise["brier_bundle"] and form["better_in"] < 10

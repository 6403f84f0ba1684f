"""The review band: conformal risk control by hand, its bound on exchangeable data, and the
needs_review column of the scores table."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ecgrisk.conformal import ReviewBand, fit_review, misread, review_risk, split_review


def test_the_band_is_the_conformal_risk_control_choice_by_hand():
    # one statement; closeness min(2p, 2 - 2p) of the ten ECGs, least uncertain first:
    # p     .02  .97  .05  .10  .88  .20  .75  .30  .60  .45
    # u     .04  .06  .10  .20  .24  .40  .50  .60  .80  .90
    # label  0    1    1    0    1    0    0    1    1    0
    # read   0    1    0    0    1    0    1    0    1    0   (p >= .5)
    # wrong  -    -    x    -    -    -    x    x    -    -
    p = np.array([.02, .97, .05, .10, .88, .20, .75, .30, .60, .45])[:, None]
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 0])[:, None]
    assert misread(y, p).tolist() == [False, False, True, False, False, False, True, True, False, False]
    # leaving the k least uncertain unflagged costs L_k misread: k = 0..10 -> 0 0 0 1 1 1 1 2 3 3 3;
    # alpha = .25 keeps the largest k with (L_k + 1) / 11 <= .25, L_k <= 1.75: k = 6, so ECGs
    # with u > .40 are flagged: the band is (.20, .80)
    band = fit_review(y, p, alpha=0.25)
    assert band.low == pytest.approx(0.20) and band.n == 10
    assert band.flags(p)[:, 0].tolist() == [False] * 6 + [True] * 4
    # alpha = .1: (L_k + 1) / 11 <= .1 needs L_k <= .1, k = 2 (u > .06 flagged)
    assert fit_review(y, p, alpha=0.1).low == pytest.approx(0.03)
    # too few ECGs for alpha = .05 ((0 + 1) / 11 > .05): every ECG flagged
    assert fit_review(y, p, alpha=0.05).low == 0.0
    assert fit_review(y, p, alpha=0.05).flags(p).all()
    risk = review_risk(band, y, p)
    assert risk["review_rate"] == pytest.approx(0.4)
    assert risk["unreviewed_misread"] == pytest.approx(0.1)  # ECG 3, p = .05, unflagged
    assert risk["misread_among_unreviewed"] == pytest.approx(1 / 6)
    assert risk["misread"] == pytest.approx(0.3)


def test_ties_are_flagged_together_and_the_band_flags_as_fitted():
    # four ECGs at the same closeness (.2), one of them misread: they go unflagged together or not
    p = np.array([[0.1], [0.9], [0.1], [0.9], [0.01]])
    y = np.array([[0], [0], [0], [1], [0]])  # the second is misread
    band = fit_review(y, p, alpha=0.34)  # (L + 1) / 6 <= .34: L <= 1.04
    # k = 1 (L = 0) or k = 5 (L = 1); k = 2, 3 and 4 would split the tie
    assert band.flags(p).any(axis=1).tolist() == [False] * 5
    band = fit_review(y, p, alpha=0.2)  # L <= .2: only k = 1, the ECG at p = .01
    assert band.flags(p).any(axis=1).tolist() == [True, True, True, True, False]


def test_the_reason_names_the_statements_in_the_band_closest_first():
    band = ReviewBand(alpha=0.1, low=0.2, n=100)
    probs = np.array([[0.1, 0.95, 0.5], [0.3, 0.6, 0.9], [0.81, 0.19, 0.2]])
    assert band.review(probs, ["MI", "NORM", "STTC"]) == ["uncertain STTC", "uncertain NORM MI", ""]
    assert ReviewBand.from_dict(band.to_dict()) == band


def test_the_bound_holds_on_exchangeable_data():
    rng = np.random.default_rng(0)
    n, c = 4000, 5
    y = rng.random((2 * n, c)) < [0.05, 0.1, 0.3, 0.5, 0.2]
    # an informative but imperfect model, calibrated by construction: noisy logits around +-1.5
    p = 1 / (1 + np.exp(-(np.where(y, 1.5, -1.5) + rng.normal(0, 1.2, y.shape))))
    risks = []
    for _ in range(10):
        idx = rng.permutation(2 * n)
        band = fit_review(y[idx[:n]], p[idx[:n]], alpha=0.1)
        risks.append(review_risk(band, y[idx[n:]], p[idx[n:]]))
    assert np.mean([r["unreviewed_misread"] for r in risks]) <= 0.1 + 0.005
    assert np.mean([r["unreviewed_misread"] for r in risks]) >= 0.09  # tight, not flagging all
    assert 0 < np.mean([r["review_rate"] for r in risks]) < 1
    halves = split_review(y, p, alpha=0.1, splits=3)
    assert halves["splits"] == 3 and abs(halves["unreviewed_misread"] - 0.1) < 0.01


def test_scores_table_routes_uncertain_and_flagged_records_to_review(caplog):
    from ecgrisk.scoring.reading import ReadRecord
    from ecgrisk.scoring.rows import make_rows, output_columns

    class _Bundle:
        classes = ["MI", "NORM"]
        name, version = "t", "1"
        extra = {"review": ReviewBand(alpha=0.1, low=0.3, n=100).to_dict()}  # flags (.3, .7)

    class _Spec:
        window, stride = 250, 125

    ok = {"quality": "ok"}
    recs = [ReadRecord(record="a", path="a", x=None, flags=ok, error="", length=1000),
            ReadRecord(record="b", path="b", x=None, flags=ok, error="", length=1000),
            ReadRecord(record="c", path="c", x=None, flags={"quality": "noisy,derived"}, error="",
                       length=1000),
            # an 8-lead export: its derived limb leads are what the electrocardiograph computes
            ReadRecord(record="d", path="d", x=None, flags={"quality": "derived"}, error="",
                       length=1000)]
    probs = np.array([[0.9, 0.1], [0.4, 0.8], [0.9, 0.1], [0.9, 0.1]])
    rows = make_rows(recs, probs, _Spec(), (0.2, 0.5), _Bundle())
    assert make_rows(recs[:1], np.array([[0.6, 0.7]]), _Spec(), (0.2, 0.5), _Bundle())[0][
        "reading"] == "NORM MI"
    assert {"needs_review", "review_reason"} <= set(output_columns(["MI", "NORM"]))
    assert [r["needs_review"] for r in rows] == [False, True, True, False]
    assert rows[3]["quality"] == "derived" and rows[3]["review_reason"] == ""
    assert rows[1]["review_reason"] == "uncertain MI"
    assert [r["reading"] for r in rows] == ["MI", "NORM", "MI", "MI"]  # p >= .5, most probable first
    # the run's summary counts them, from fresh rows and from rows read back as text (--resume)
    from rich.console import Console

    from ecgrisk.scoring.report import ScoreSummary, print_summary

    summary = ScoreSummary()
    for r in rows[:3] + [{**r, "needs_review": str(r["needs_review"])} for r in rows[:3]]:
        summary.add(r, ["MI", "NORM"])
    assert (summary.review, summary.uncertain) == (4, 2)
    console = Console(record=True, width=100)
    print_summary(summary, "s.csv", console)
    text = console.export_text()
    assert "needs review" in text and "of them an uncertain reading" in text
    assert rows[2]["review_reason"] == "quality noisy"  # the derived leads are not a reason

    # a bundle with the per-statement sets of an earlier version: quality flags only, one warning
    class _Old(_Bundle):
        name, version = "old", "1"
        extra = {"conformal": {"alpha": 0.1, "q0": [0.5, 0.5], "q1": [0.7, 0.7]}}

    with caplog.at_level(logging.WARNING):
        rows = make_rows(recs, probs, _Spec(), (0.2, 0.5), _Old())
        make_rows(recs, probs, _Spec(), (0.2, 0.5), _Old())
    assert [r["needs_review"] for r in rows] == [False, False, True, False]
    warned = [r.getMessage() for r in caplog.records if "earlier ecgrisk" in r.getMessage()]
    assert len(warned) == 1 and "ecgrisk recalibrate" in warned[0]


def test_groups_widen_the_band_until_the_bound_holds_in_each():
    from ecgrisk.conformal import MIN_GROUP

    rng = np.random.default_rng(1)
    n = 600
    y = rng.random((n, 2)) < 0.3
    noise = np.where(np.arange(n) < 300, 0.8, 2.5)[:, None]  # group b is read far worse
    p = 1 / (1 + np.exp(-(np.where(y, 1.5, -1.5) + rng.normal(0, 1, y.shape) * noise)))
    g = np.array(["a"] * 300 + ["b"] * 280 + ["c"] * 20)  # c: too small for a band of its own
    band = fit_review(y, p, 0.1, {"g": g})
    lows = [fit_review(y, p, 0.1).low] + [fit_review(y[g == v], p[g == v], 0.1).low for v in "ab"]
    assert band.low == min(lows) < lows[0]  # b needed a wider band than all ECGs together
    assert band.groups == ["g=a (300)", "g=b (280)"] and 20 < MIN_GROUP
    held = split_review(y, p, 0.1, splits=3, groups={"g": g})
    assert set(held["by_group"]) == {"g=a", "g=b"} and held["worst_group"][0] in held["by_group"]
    with pytest.raises(ValueError, match="has 3 values for 600 ECGs"):
        fit_review(y, p, 0.1, {"g": g[:3]})


def test_a_band_keeps_the_specs_it_was_fitted_by_and_an_older_one_gives_them_back():
    rng = np.random.default_rng(1)
    y = rng.random((400, 2)) < 0.3
    p = np.clip(y + rng.normal(0, 0.3, y.shape), 0, 1)
    ages = rng.choice([30.0, 50.0, 70.0], 400)
    groups = {"age:40,60": np.where(ages < 40, "<40", np.where(ages < 60, "40-<60", ">=60")),
              "sex": rng.choice(["male", "female"], 400)}
    band = fit_review(y, p, 0.1, groups)
    assert band.by == ["age:40,60", "sex"]
    assert ReviewBand.from_dict(band.to_dict()) == band
    assert fit_review(y, p, 0.1).by == []
    # a band stored before `by` (the shipped bundles'): the specs read back from its group labels
    stored = {"alpha": 0.1, "low": 0.25, "n": 2156,
              "groups": ["age=40-<60 (667)", "age=<40 (284)", "age=>=80 (272)", "sex=female (1038)",
                         "device=CS-12 E (453)", "site=0 (900)"]}
    assert ReviewBand.from_dict(stored).by == ["age:40,60,80", "sex", "device", "site"]
    assert ReviewBand.from_dict({**stored, "groups": []}).by == []

"""Split-conformal review flags: thresholds by hand, coverage on exchangeable data, and the
needs_review column of the scores table."""

from __future__ import annotations

import numpy as np
import pytest

from ecgrisk.conformal import ConformalSets, coverage, fit_conformal, split_coverage


def test_thresholds_are_the_conformal_quantiles_by_hand():
    # statement 0: positives at p = .9 .8 .7 .6 (scores 1 - p = .1 .2 .3 .4), negatives at
    # p = .1 .2 .3 .4 .5; alpha = .2: rank ceil((n + 1) * .8) -> 4 of 4 (q1 = .4), 5 of 5 (q0 = .5)
    p = np.array([.9, .8, .7, .6, .1, .2, .3, .4, .5])[:, None]
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])[:, None]
    s = fit_conformal(y, p, alpha=0.2)
    assert s.q1 == pytest.approx([0.4]) and s.q0 == pytest.approx([0.5])
    assert (s.n1, s.n0) == ([4], [5])
    # alpha = .1 needs rank 5 of 4 positives: too few to promise 90%, so label 1 is always kept
    assert fit_conformal(y, p, alpha=0.1).q1 == [float("inf")]
    has0, has1 = s.sets(np.array([[0.3], [0.65], [0.95]]))
    assert has0[:, 0].tolist() == [True, False, False]   # p <= .5
    assert has1[:, 0].tolist() == [False, True, True]    # 1 - p <= .4
    assert s.review(np.array([[0.3], [0.65], [0.55]]), ["MI"]) == ["", "", "atypical MI"]
    both = ConformalSets(alpha=0.2, q0=[0.6], q1=[0.6], n0=[5], n1=[5])
    assert both.review(np.array([[0.5]]), ["MI"]) == ["uncertain MI"]
    none = ConformalSets(alpha=0.2, q0=[0.2], q1=[0.2], n0=[5], n1=[5])
    assert none.review(np.array([[0.5]]), ["MI"]) == ["atypical MI"]


def test_coverage_holds_on_exchangeable_data():
    rng = np.random.default_rng(0)
    n, c = 4000, 3
    y = rng.random((2 * n, c)) < [0.1, 0.3, 0.5]
    # an informative but imperfect model: noisy logits around +-1
    p = 1 / (1 + np.exp(-(np.where(y, 1.0, -1.0) + rng.normal(0, 1.2, y.shape))))
    s = fit_conformal(y[:n], p[:n], alpha=0.1)
    cov = coverage(s, y[n:], p[n:])
    assert np.all(np.array(cov["coverage/label1"]) >= 0.88)
    assert np.all(np.array(cov["coverage/label0"]) >= 0.88)
    assert cov["nominal"] == 0.9 and 0 < cov["review_rate"] < 1
    halves = split_coverage(y, p, alpha=0.1)
    assert abs(np.mean(halves["coverage/label1"]) - 0.9) < 0.03


def test_scores_table_routes_uncertain_and_flagged_records_to_review(tmp_path):
    from ecgrisk.scoring.reading import ReadRecord
    from ecgrisk.scoring.rows import make_rows, output_columns

    class _Bundle:
        classes = ["MI", "NORM"]
        name, version = "t", "1"
        # label 0 kept for p <= .5, label 1 for p >= .3
        extra = {"conformal": ConformalSets(alpha=0.1, q0=[0.5, 0.5], q1=[0.7, 0.7],
                                            n0=[50, 50], n1=[50, 50]).to_dict()}

    class _Spec:
        window, stride = 250, 125

    ok = {"quality": "ok"}
    recs = [ReadRecord(record="a", path="a", x=None, flags=ok, error="", length=1000),
            ReadRecord(record="b", path="b", x=None, flags=ok, error="", length=1000),
            ReadRecord(record="c", path="c", x=None, flags={"quality": "noisy"}, error="",
                       length=1000)]
    probs = np.array([[0.9, 0.1], [0.4, 0.8], [0.9, 0.1]])
    rows = make_rows(recs, probs, _Spec(), (0.2, 0.5), _Bundle())
    assert {"needs_review", "review_reason"} <= set(output_columns(["MI", "NORM"]))
    assert [r["needs_review"] for r in rows] == [False, True, True]
    assert rows[1]["review_reason"] == "uncertain MI"  # p = .4 keeps both labels
    assert rows[2]["review_reason"] == "quality noisy"

"""ecgrisk.metrics: hand-computed examples, agreement with scikit-learn, and the published
PTB-XL benchmark figures reproduced from the benchmark's own arrays."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ecgrisk.metrics import (
    FMAX_THRESHOLDS,
    binary_cross_entropy,
    bootstrap_ci,
    brier,
    ece,
    evaluate,
    fmax,
    macro_auprc,
    macro_auroc,
    per_class_auprc,
    per_class_auroc,
)

# 4 samples x 2 labels, worked by hand in the tests below
Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
P = np.array([[0.9, 0.2], [0.4, 0.6], [0.6, 0.3], [0.1, 0.8]])


# ---------------------------------------------------------------------------------------------
# hand-computed values
# ---------------------------------------------------------------------------------------------


def test_auroc_by_hand():
    # label 0: positives {0.9, 0.6} beat both negatives {0.4, 0.1}: 4/4 pairs
    # label 1: positives {0.6, 0.3} vs negatives {0.2, 0.8}: 0.6>0.2, 0.3>0.2 win; 2/4 pairs
    np.testing.assert_allclose(per_class_auroc(Y, P), [1.0, 0.5])
    assert macro_auroc(Y, P) == pytest.approx(0.75)


def test_auroc_counts_a_tie_as_half():
    # one positive and two negatives; the positive ties one negative and beats the other
    assert macro_auroc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)


def test_auprc_by_hand():
    # label 1 ranked: 0.8 (neg), 0.6 (pos) -> P=1/2 at R=1/2; 0.3 (pos) -> P=2/3 at R=1
    ap1 = 0.5 * 0.5 + 0.5 * 2 / 3
    np.testing.assert_allclose(per_class_auprc(Y, P), [1.0, ap1])
    assert macro_auprc(Y, P) == pytest.approx((1.0 + ap1) / 2)


def test_auprc_tied_scores_form_one_operating_point():
    # all three tied: the only operating point is P=1/3 at R=1
    assert macro_auprc([1, 0, 0], [0.5, 0.5, 0.5]) == pytest.approx(1 / 3)


def test_fmax_by_hand():
    # t=0.5: predictions [1,0] [0,1] [1,0] [0,1]; per-sample precision 1, 1, 1, 0 -> 3/4 over the
    # 4 samples with a prediction; recall 1, 1, 1/2 over the 3 samples with a positive -> 5/6
    f05 = 2 * 0.75 * (5 / 6) / (0.75 + 5 / 6)
    assert f05 == pytest.approx(15 / 19)
    # t=0.3: precision (1 + 1/2 + 1 + 0)/4 = 5/8, recall 1 -> 10/13
    # t=0.9: only sample 0 predicts: precision 1, recall (1 + 0 + 0)/3 -> 1/2
    assert fmax(Y, P, thresholds=[0.3]) == pytest.approx(10 / 13)
    assert fmax(Y, P, thresholds=[0.9]) == pytest.approx(0.5)
    assert fmax(Y, P, thresholds=[0.3, 0.5, 0.9]) == pytest.approx(15 / 19)


def test_fmax_predicts_at_score_equal_to_threshold():
    # at t=0.6 the 0.6 scores count as predictions (same as t=0.5): 15/19; at t=0.61 samples 1
    # and 2 have no prediction: precision (1 + 0)/2, recall (1 + 0 + 0)/3 -> 2/5
    assert fmax(Y, P, thresholds=[0.6]) == pytest.approx(15 / 19)
    assert fmax(Y, P, thresholds=[0.61]) == pytest.approx(2 / 5)


def _fmax_reference(y, s, grid):
    """Direct loop over thresholds and samples, the textbook definition."""
    best = 0.0
    for t in grid:
        precisions, recalls = [], []
        for yi, si in zip(y, s, strict=True):
            pred = si >= t
            tp = np.sum(pred & (yi == 1))
            if pred.sum() > 0:
                precisions.append(tp / pred.sum())
            if yi.sum() > 0:
                recalls.append(tp / yi.sum())
        if precisions:
            p, r = np.mean(precisions), np.mean(recalls)
            if p + r > 0:
                best = max(best, 2 * p * r / (p + r))
    return best


def test_fmax_matches_a_direct_loop_on_random_data():
    rng = np.random.default_rng(3)
    y = (rng.random((40, 5)) < 0.3).astype(int)
    s = np.clip(0.4 * y + rng.random((40, 5)) * 0.7, 0, 1).round(
        2
    )  # rounding makes ties with the grid
    assert fmax(y, s) == pytest.approx(_fmax_reference(y, s, FMAX_THRESHOLDS), abs=1e-12)
    assert FMAX_THRESHOLDS.size == 101 and FMAX_THRESHOLDS[45] == pytest.approx(0.45)


def test_brier_by_hand():
    # squared errors: label 0: .01 .16 .16 .01; label 1: .04 .16 .49 .64 -> 1.67 / 8
    assert brier(Y, P) == pytest.approx(1.67 / 8)


def test_ece_by_hand():
    # 2 bins [0, .5) and [.5, 1]:
    # label 0: low bin p .4 .1, y 0 0 -> 2/4*|0-.25|; high bin p .9 .6, y 1 1 -> 2/4*|1-.75|: .25
    # label 1: low bin p .2 .3, y 0 1 -> 2/4*|.5-.25|; high bin p .6 .8, y 1 0 -> 2/4*|.5-.7|: .225
    assert ece(Y, P, n_bins=2) == pytest.approx((0.25 + 0.225) / 2)
    # 10 bins: every probability sits alone in its bin, so ECE = mean |y - p| per label
    assert ece(Y, P, n_bins=10) == pytest.approx((1.0 / 4 + 2.1 / 4) / 2)


def test_ece_bins_are_closed_on_the_left():
    # p = 0.3 belongs to [0.3, 0.4) together with 0.35; p = 1.0 belongs to the last bin
    y = np.array([[1], [0], [1]])
    p = np.array([[0.3], [0.35], [1.0]])
    # bin 3: mean y .5, mean p .325 -> 2/3 * .175; bin 9: |1 - 1| = 0
    assert ece(y, p) == pytest.approx(2 / 3 * 0.175)


def test_ece_of_perfectly_calibrated_bins_is_zero():
    y = np.array([[1], [0], [0], [0], [1], [1], [1], [0]])
    p = np.array([[0.25]] * 4 + [[0.75]] * 4)
    assert ece(y, p) == pytest.approx(0.0)


def test_binary_cross_entropy_by_hand():
    expected = -np.mean(Y * np.log(P) + (1 - Y) * np.log(1 - P))
    assert binary_cross_entropy(Y, P) == pytest.approx(expected)
    assert binary_cross_entropy([[1]], [[0.5]]) == pytest.approx(np.log(2))


def test_agrees_with_scikit_learn_on_random_data():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 6)) < 0.2).astype(int)
    s = rng.normal(size=(300, 6)) + y
    s[:50, 0] = s[50:100, 0]  # ties
    np.testing.assert_allclose(per_class_auroc(y, s), roc_auc_score(y, s, average=None), atol=1e-12)
    assert macro_auroc(y, s) == pytest.approx(roc_auc_score(y, s, average="macro"), abs=1e-12)
    np.testing.assert_allclose(
        per_class_auprc(y, s), average_precision_score(y, s, average=None), atol=1e-12
    )


# ---------------------------------------------------------------------------------------------
# bad input and degenerate classes
# ---------------------------------------------------------------------------------------------


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"shape \(4, 2\).*shape \(4, 3\)"):
        macro_auroc(Y, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shape"):
        brier(Y, P[:3])


def test_bad_values_are_errors():
    with pytest.raises(ValueError, match="only 0 and 1"):
        macro_auroc(Y * 2, P)
    bad = P.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fmax(Y, bad)
    with pytest.raises(ValueError, match="probabilities"):
        brier(Y, P + 0.5)
    with pytest.raises(ValueError, match="n_bins"):
        ece(Y, P, n_bins=0)


def test_degenerate_class_raises_naming_it_unless_skipped():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])  # class 1 all 0, class 2 all 1
    s = np.array([[0.9, 0.1, 0.5], [0.2, 0.1, 0.5], [0.8, 0.3, 0.5], [0.1, 0.2, 0.5]])
    with pytest.raises(ValueError, match=r"class index\(es\) \[1, 2\]"):
        macro_auroc(y, s)
    assert macro_auroc(y, s, skip_degenerate=True) == pytest.approx(1.0)
    auc = per_class_auroc(y, s)
    assert auc[0] == pytest.approx(1.0) and np.isnan(auc[1:]).all()
    assert np.isnan(macro_auroc(y[:, 1:], s[:, 1:], skip_degenerate=True))


# ---------------------------------------------------------------------------------------------
# bootstrap and evaluate
# ---------------------------------------------------------------------------------------------


def test_bootstrap_with_given_ids_uses_exactly_those_resamples():
    y = np.array([[1], [0], [1], [0], [1], [0]])
    s = np.array([[0.9], [0.1], [0.2], [0.3], [0.8], [0.7]])
    ids = np.array([[0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 2, 3], [4, 5, 4, 5, 0, 1]])
    values = [macro_auroc(y[i], s[i]) for i in ids]
    ci = bootstrap_ci(macro_auroc, y, s, ids=ids)
    assert ci["point"] == pytest.approx(macro_auroc(y, s))
    assert ci["mean"] == pytest.approx(np.mean(values))
    assert ci["lower"] == pytest.approx(np.percentile(values, 5))
    assert ci["upper"] == pytest.approx(np.percentile(values, 95))


def test_drawn_bootstrap_is_seeded_and_keeps_every_class():
    rng = np.random.default_rng(1)
    y = np.zeros((66, 3), dtype=int)  # a small fold: class 2 has a single positive
    y[rng.choice(66, 20, replace=False), 0] = 1
    y[rng.choice(66, 8, replace=False), 1] = 1
    y[5, 2] = 1
    s = rng.random((66, 3)) + 0.5 * y
    seen = []

    def recording_auroc(a, b):
        seen.append(a.sum(axis=0))
        return macro_auroc(a, b)

    a = bootstrap_ci(recording_auroc, y, s, n=30, seed=7)
    assert len(seen) == 31  # 30 resamples + the point estimate
    assert min(c.min() for c in seen) > 0
    assert a == bootstrap_ci(macro_auroc, y, s, n=30, seed=7)
    assert a != bootstrap_ci(macro_auroc, y, s, n=30, seed=8)
    assert a["lower"] <= a["mean"] <= a["upper"]


def test_bootstrap_rejects_bad_ids():
    with pytest.raises(ValueError, match="ids must index"):
        bootstrap_ci(macro_auroc, Y, P, ids=np.array([[0, 1, 2, 4]]))
    with pytest.raises(ValueError, match="integer array"):
        bootstrap_ci(macro_auroc, Y, P, ids=np.array([0, 1, 2, 3]))


def test_evaluate_flat_dict():
    m = evaluate(Y, P, prefix="val/", classes=["NORM", "MI"])
    assert m["val/macro_auroc"] == pytest.approx(0.75)
    assert m["val/auroc/NORM"] == pytest.approx(1.0) and m["val/auroc/MI"] == pytest.approx(0.5)
    assert m["val/macro_auprc"] == pytest.approx(macro_auprc(Y, P))
    assert m["val/fmax"] == pytest.approx(fmax(Y, P))
    assert m["val/brier"] == pytest.approx(1.67 / 8)
    assert m["val/ece"] == pytest.approx(ece(Y, P))
    assert m["val/n_samples"] == 4 and m["val/auroc_skipped_classes"] == 0
    assert not any(k.endswith("/lower") for k in m)
    json.dumps(m)  # plain Python numbers only
    with pytest.raises(ValueError, match="classes"):
        evaluate(Y, P, classes=["NORM"])


def test_evaluate_skips_and_counts_a_class_missing_from_a_small_fold():
    rng = np.random.default_rng(2)
    y = (rng.random((66, 3)) < 0.3).astype(int)
    y[:, 2] = 0  # a rare class absent from this fold
    p = np.clip(0.3 * y + rng.random((66, 3)) * 0.7, 0, 1)
    m = evaluate(y, p, bootstrap=20, seed=0)
    assert m["test/auroc_skipped_classes"] == 1 and np.isnan(m["test/auroc/2"])
    assert m["test/macro_auroc"] == pytest.approx(macro_auroc(y[:, :2], p[:, :2]))
    assert m["test/macro_auroc/lower"] <= m["test/macro_auroc/mean"] <= m["test/macro_auroc/upper"]
    assert m["test/fmax/lower"] <= m["test/fmax/upper"]


# ---------------------------------------------------------------------------------------------
# the published PTB-XL benchmark (task "all", xresnet1d101), from its own arrays
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer(shared):
    root = shared / "ptbxl-benchmark-peer"
    if not (root / "y_test.npy").is_file():
        pytest.skip("benchmark peer arrays are absent")
    arrays = {f.stem: np.load(f) for f in root.glob("*.npy")}
    arrays["test_csv"] = pd.read_csv(root / "test_results_xresnet1d101.csv", index_col=0)
    arrays["val_csv"] = pd.read_csv(root / "val_results_xresnet1d101.csv", index_col=0)
    return arrays


def test_peer_test_macro_auroc_and_bootstrap(peer):
    published = peer["test_csv"]["macro_auc"]
    ci = bootstrap_ci(
        macro_auroc,
        peer["y_test"],
        peer["y_test_pred_xresnet1d101"],
        ids=peer["test_bootstrap_ids"],
    )
    for q in ("point", "mean", "lower", "upper"):
        assert ci[q] == pytest.approx(published[q], abs=1e-9), q


def test_peer_validation_macro_auroc_and_fmax(peer):
    published = peer["val_csv"].loc["point"]
    y, p = peer["y_val"], peer["y_val_pred_xresnet1d101"]
    assert macro_auroc(y, p) == pytest.approx(published["macro_auc"], abs=1e-9)
    assert fmax(y, p) == pytest.approx(published["Fmax"], abs=1e-9)


def test_peer_arrays_agree_with_scikit_learn(peer):
    y, p = peer["y_test"], peer["y_test_pred_xresnet1d101"]
    np.testing.assert_allclose(per_class_auroc(y, p), roc_auc_score(y, p, average=None), atol=1e-12)
    np.testing.assert_allclose(
        per_class_auprc(y, p), average_precision_score(y, p, average=None), atol=1e-12
    )


def test_peer_naive_baseline_is_chance(peer):
    # the naive model predicts each class's training prevalence for every record: all ties
    y, p = peer["y_test"], peer["y_test_pred_naive"]
    np.testing.assert_allclose(per_class_auroc(y, p), 0.5)
    np.testing.assert_allclose(
        per_class_auprc(y, p), y.mean(axis=0)
    )  # AP of a constant = prevalence
    assert macro_auroc(y, p) == pytest.approx(roc_auc_score(y, p, average="macro"))

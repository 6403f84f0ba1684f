"""ecgrisk.calibration: per-label temperature scaling on synthetic logits with a planted scale."""

from __future__ import annotations

import numpy as np
import pytest

from ecgrisk.calibration import apply_temperature, fit_calibration, fit_temperature, prob_to_logit
from ecgrisk.metrics import binary_cross_entropy, ece, per_class_auroc

PLANTED = np.array([3.0, 1.0, 0.5])  # over-confident, calibrated, under-confident


def _synthetic(n: int, seed: int):
    """Labels drawn from sigmoid(true logit); the model reports true logit * planted scale."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.0, 2.0, size=(n, PLANTED.size))
    y = (rng.random((n, PLANTED.size)) < 1 / (1 + np.exp(-true_logit))).astype(int)
    return true_logit * PLANTED, y


def test_recovers_a_planted_temperature():
    logits, y = _synthetic(20000, seed=0)
    t = fit_temperature(logits, y)
    assert t.shape == (3,)
    np.testing.assert_allclose(t, PLANTED, rtol=0.08)


def test_fitted_temperature_is_the_bce_minimum():
    logits, y = _synthetic(3000, seed=1)
    t = fit_temperature(logits, y)

    def nll(c, temp):
        return binary_cross_entropy(y[:, c], apply_temperature(logits[:, c], np.array([temp])))

    for c in range(3):
        best = nll(c, t[c])
        assert best <= nll(c, t[c] * 1.02) and best <= nll(c, t[c] / 1.02)


def test_calibration_helps_held_out_data_and_keeps_the_ranking():
    fit_logits, fit_y = _synthetic(5000, seed=2)
    logits, y = _synthetic(5000, seed=3)
    t = fit_temperature(fit_logits, fit_y)
    raw = apply_temperature(logits, np.ones(3))
    cal = apply_temperature(logits, t)
    assert ece(y, cal) < ece(y, raw)
    assert binary_cross_entropy(y, cal) < binary_cross_entropy(y, raw)
    # the over-confident label is where calibration matters most
    assert ece(y[:, :1], cal[:, :1]) < 0.5 * ece(y[:, :1], raw[:, :1])
    np.testing.assert_allclose(per_class_auroc(y, cal), per_class_auroc(y, raw), atol=1e-12)


def test_degenerate_labels_get_temperature_one():
    logits, y = _synthetic(500, seed=4)
    y[:, 1] = 0
    y[:, 2] = 1
    t = fit_temperature(logits, y)
    assert t[1] == 1.0 and t[2] == 1.0
    assert t[0] > 0 and t[0] != 1.0


def test_temperatures_stay_positive_for_anti_correlated_logits():
    logits, y = _synthetic(2000, seed=5)
    t = fit_temperature(-logits, y)  # the best slope would be negative; T can only grow huge
    assert np.all(t > 0) and np.all(np.isfinite(t))
    assert np.all(t >= 100)


def test_apply_temperature_by_hand():
    p = apply_temperature(np.array([[2.0, -1.0], [0.0, 4.0]]), np.array([2.0, 0.5]))
    expected = 1 / (1 + np.exp(-np.array([[1.0, -2.0], [0.0, 8.0]])))
    np.testing.assert_allclose(p, expected)
    assert apply_temperature(np.array([0.0, 2.0]), np.array([2.0])).shape == (2,)


def test_calibrated_probabilities_keep_both_tails_as_scipy_does():
    from scipy.special import expit

    z = np.array([[-700.0, -300.0, -40.0, -1e-9, 0.0, 1e-9, 3.0, 40.0, 800.0]])
    p = apply_temperature(z, np.ones(z.shape[1]))
    np.testing.assert_allclose(p, expit(z), rtol=1e-12, atol=0)  # relative: 4e-18 is not 0
    assert p[0, 2] > 0 and p[0, -1] == 1.0 and p[0, 4] == 0.5


def test_prob_to_logit_round_trips_and_stays_finite():
    p = np.array([[0.0, 0.25, 0.5, 1.0]])
    z = prob_to_logit(p)
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(z[0, 1:3], [np.log(1 / 3), 0.0], atol=1e-12)
    np.testing.assert_allclose(apply_temperature(z, np.ones(4)), np.clip(p, 1e-7, 1 - 1e-7))


def test_bad_input_is_an_error():
    logits, y = _synthetic(50, seed=6)
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(logits, y[:40])
    with pytest.raises(ValueError, match="only 0 and 1"):
        fit_temperature(logits, y * 2)
    inf = logits.copy()
    inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="prob_to_logit"):
        fit_temperature(inf, y)
    with pytest.raises(ValueError, match="3 labels"):
        apply_temperature(logits, np.ones(2))
    with pytest.raises(ValueError, match="> 0"):
        apply_temperature(logits, np.array([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="probabilities"):
        prob_to_logit(np.array([1.5]))


def test_fit_calibration_recovers_a_planted_temperature_and_shift():
    # max-aggregation over windows shifts logits upwards; the bias must undo it
    rng = np.random.default_rng(7)
    true_logit = rng.normal(-1.5, 1.5, size=(20000, 2))
    y = (rng.random(true_logit.shape) < 1 / (1 + np.exp(-true_logit))).astype(int)
    observed = (true_logit - np.array([-1.0, 0.5])) * np.array([2.0, 0.5])  # z = (l - b) * T
    temps, bias = fit_calibration(observed, y)
    np.testing.assert_allclose(temps, [2.0, 0.5], rtol=0.08)
    np.testing.assert_allclose(bias, [-1.0, 0.5], atol=0.08)
    calibrated = apply_temperature(observed, temps, bias)
    plain = apply_temperature(observed, fit_temperature(observed, y))
    assert ece(y, calibrated) < 0.02 < ece(y, plain)
    np.testing.assert_allclose(per_class_auroc(y, calibrated), per_class_auroc(y, observed), atol=1e-12)


def test_fit_calibration_degenerate_label_is_identity_and_bad_bias_refused():
    z = np.array([[0.5, 1.0], [1.0, -1.0], [2.0, 0.0]])
    y = np.array([[1, 0], [1, 1], [1, 0]])
    temps, bias = fit_calibration(z, y)
    assert temps[0] == 1.0 and bias[0] == 0.0
    with pytest.raises(ValueError, match="bias"):
        apply_temperature(z, temps, [0.0, np.nan])


def test_a_shift_alone_keeps_the_temperature_at_one_and_is_the_bce_minimum():
    rng = np.random.default_rng(3)
    true_logit = rng.normal(0.0, 2.0, size=(20000, 2))
    y = (rng.random(true_logit.shape) < 1 / (1 + np.exp(-true_logit))).astype(int)
    observed = true_logit - np.array([0.7, -0.4])  # logits off by a shift only
    temps, shift = fit_calibration(observed, y, temperature=False)
    np.testing.assert_array_equal(temps, 1.0)
    np.testing.assert_allclose(shift, [0.7, -0.4], atol=0.06)
    best = binary_cross_entropy(y[:, 0], apply_temperature(observed[:, 0], [1.0], [shift[0]]))
    for step in (-0.05, 0.05):  # a 1-D convex loss: nudging the shift only raises it
        assert binary_cross_entropy(
            y[:, 0], apply_temperature(observed[:, 0], [1.0], [shift[0] + step])) > best

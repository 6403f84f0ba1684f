"""The one place evaluation windows are cut: starts and record positions for records' lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgrisk.windowing import aggregate_windows, evaluation_windows


def test_evaluation_windows_match_a_hand_computation():
    # 1000 samples: starts 0, 125, ..., 750 (750 + 250 = 1000); 200 and 250 fit one window at 0
    starts, positions = evaluation_windows([1000, 200, 250], window=250, stride=125)
    np.testing.assert_array_equal(starts, [0, 125, 250, 375, 500, 625, 750, 0, 0])
    np.testing.assert_array_equal(positions, [0, 0, 0, 0, 0, 0, 0, 1, 2])
    assert starts.dtype == positions.dtype == np.int64


def test_evaluation_windows_leave_a_short_tail_and_take_no_records():
    # 260 samples at stride 125: only 0 fits (125 + 250 > 260); the last 10 samples are not seen
    starts, positions = evaluation_windows([260, 500], window=250, stride=125)
    np.testing.assert_array_equal(starts, [0, 0, 125, 250])
    np.testing.assert_array_equal(positions, [0, 1, 1, 1])
    starts, positions = evaluation_windows([], window=250, stride=125)
    assert starts.shape == positions.shape == (0,)


def test_aggregate_windows_max_mean_and_duplicates():
    positions = np.array([0, 0, 1, 1, 1])
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5], [1.0, 0.0], [-1.0, 4.0]])
    k = torch.tensor([0, 1, 2, 3, 4, 4])  # window 4 seen twice (DDP padding)
    logits_dup = torch.cat([logits, logits[4:5]])
    out, seen = aggregate_windows(k, logits_dup, positions, 2, "max")
    np.testing.assert_allclose(out.numpy(), [[2.0, 1.0], [1.0, 4.0]])
    assert seen.all()
    mean, _ = aggregate_windows(k, logits_dup, positions, 2, "mean")
    p = torch.sigmoid(logits)
    expect = torch.stack([p[:2].mean(0), p[2:].mean(0)])
    np.testing.assert_allclose(torch.sigmoid(mean).numpy(), expect.numpy(), atol=1e-6)


@pytest.mark.parametrize("how", ["max", "mean"])
def test_aggregate_windows_reports_records_without_windows(how):
    # windows 0 and 1 belong to record 0; records 1 and 2 were never evaluated
    _, seen = aggregate_windows(torch.tensor([0, 1]), torch.zeros(2, 3), np.array([0, 0, 1, 2]), 3, how)
    assert seen.tolist() == [True, False, False]

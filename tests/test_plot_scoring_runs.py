"""scripts/plot_scoring_runs.py on hand-made bench_scoring results: the points it reads, its
labels, the figure it writes, and refusal of files that are not results."""

from __future__ import annotations

import json

import pytest
from script_support import load_script

plot_runs = load_script("plot_scoring_runs")


def _result(path, model_rates, shares, speedups):
    medians = [{"mode": "model", "n": n, "ecg_per_s": r} for n, r in model_rates.items()]
    medians += [{"mode": "pipeline", "n": n, "ecg_per_s": 1.0} for n in model_rates]
    path.write_text(json.dumps({
        "medians": medians, "share_target": 0.7, "speedup_target": 5.0,
        "share_of_model_only": {str(n): s for n, s in shares.items()},
        "speedup_vs_naive": {str(n): s for n, s in speedups.items()}}))
    return path


def test_points_come_from_each_size_and_the_figure_is_written(tmp_path):
    a = _result(tmp_path / "bench_scoring_abc1234.json", {2000: 450.0, 19634: 470.0},
                {2000: 0.57, 19634: 0.68}, {2000: 4.7, 19634: 5.9})
    b = _result(tmp_path / "bench_scoring.json", {2000: 394.0}, {2000: 0.64}, {2000: 5.6})
    run = plot_runs.load(a)
    assert run["label"] == "abc1234"
    assert run["points"] == [(2000, 450.0, 0.57, 4.7), (19634, 470.0, 0.68, 5.9)]
    assert (run["share_target"], run["speedup_target"]) == (0.7, 5.0)
    assert plot_runs.load(b)["label"] == "latest"
    out = tmp_path / "runs.png"
    plot_runs.main([str(a), str(b), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_refuses_what_is_not_a_result(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json: not a bench_scoring result"):
        plot_runs.main([str(bad), "--out", str(tmp_path / "x.png")])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"medians": []}))
    with pytest.raises(SystemExit, match="other.json: not a bench_scoring result .no share_of_model_only"):
        plot_runs.main([str(other), "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()

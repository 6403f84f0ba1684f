"""scripts/compare_preference.py on hand-made benchmark results: effective overrides, the
guard's choice per arm, refusal of files that are not results."""

from __future__ import annotations

import json

import pytest
from script_support import load_script

compare = load_script("compare_preference")


def _result(path, scenario, overrides, arms, queries=50):
    rows = [{"arm": "reference: n clean labels", "judgements": 200, "seed": "mean",
             "guard_auroc": None, "gap_closed": 0.4, "gap_closed_lower": 0.3,
             "gap_closed_upper": 0.5, "kept": "-"}]
    for arm, (guard, gap) in arms.items():
        for n in (50, 200):
            rows.append({"arm": arm, "judgements": n, "seed": "mean", "guard_auroc": guard,
                         "gap_closed": gap, "gap_closed_lower": gap - 0.1,
                         "gap_closed_upper": gap + 0.1, "kept": 7})
            rows.append({**rows[-1], "seed": 0})
    path.write_text(json.dumps({"meta": {"scenario": scenario, "overrides": overrides,
                                         "queries": queries, "seeds": 3,
                                         "command": f"python bench {' '.join(overrides)}"},
                                "rows": rows}))
    return path


def test_rows_name_what_differs_and_the_guard_picks_per_arm(tmp_path):
    shared = ["guard.against=kept", "refine.lr=3e-4"]
    a = _result(tmp_path / "a.json", "scarce", [*shared, "refine.beta=0.1"],
                {"dpo/u": (0.879, 0.41), "dpo/r": (0.878, 0.30)})
    b = _result(tmp_path / "b.json", "scarce", [*shared, "refine.beta=1.0"],
                {"dpo/u": (0.876, 0.45), "dpo/r": (0.880, 0.20)})
    # lr given twice: Hydra keeps the last, so this run differs in lr, not in beta
    c = _result(tmp_path / "c.json", "scarce", [*shared, "refine.beta=0.1", "refine.lr=1e-3"],
                {"dpo/u": (0.870, 0.00)})
    out = tmp_path / "cmp.md"
    compare.main([str(a), str(b), str(c), "--at", "200", "--out", str(out)])
    lines = out.read_text().splitlines()
    assert "Shared overrides: `queries_per_round=50 guard.against=kept`. Runs:" in lines
    rows = [line for line in lines if line.startswith("| scarce |")]
    assert len(rows) == 5  # the yardstick (no guard) is left out; the 50-judgement rows too
    # the guard's best per arm is bold, whatever the report half says
    assert "| scarce | dpo/u | `refine.lr=3e-4 refine.beta=0.1` | **0.8790** | 0.41 [0.31, 0.51] | 7 of 12 |" in rows
    assert "| scarce | dpo/u | `refine.lr=3e-4 refine.beta=1.0` | 0.8760 | 0.45 [0.35, 0.55] | 7 of 12 |" in rows
    assert "| scarce | dpo/r | `refine.lr=3e-4 refine.beta=1.0` | **0.8800** | 0.20 [0.10, 0.30] | 7 of 12 |" in rows
    assert "| scarce | dpo/u | `refine.lr=1e-3 refine.beta=0.1` | 0.8700 | 0.00 [-0.10, 0.10] | 7 of 12 |" in rows
    # a run that leaves a swept key unset says so
    d = _result(tmp_path / "d.json", "scarce", shared, {"dpo/r": (0.8, 0.1)}, queries=25)
    compare.main([str(a), str(d), "--at", "200", "--out", str(out)])
    assert "| scarce | dpo/r | `queries_per_round=25 refine.beta=default` | 0.8000 |" in out.read_text()


def test_refuses_what_it_cannot_compare(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json: not a benchmark_preference result"):
        compare.main([str(bad)])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match="other.json: not a benchmark_preference result"):
        compare.main([str(other)])
    a = _result(tmp_path / "a.json", "house", ["refine.beta=0.1"], {"dpo/u": (0.88, 0.2)})
    with pytest.raises(SystemExit, match="no arm was read at 1000 judgements"):
        compare.main([str(a), "--at", "1000"])

"""scripts/review_band_groups.py: the band over all records against the band within groups."""

import json

import numpy as np
import pandas as pd
from script_support import load_script


def test_groups_hold_every_fitted_group_to_alpha_in_sample(ptbxl_root, tmp_path, monkeypatch):
    script = load_script("review_band_groups")
    monkeypatch.setattr(script.conformal, "MIN_GROUP", 40)
    db = pd.read_csv(ptbxl_root / "ptbxl_database.csv")
    rng = np.random.default_rng(0)
    n, c = len(db), 3
    y = rng.random((n, c)) < 0.3
    # men's probabilities are noisier, so a band fitted over all leaves them more misread
    noise = np.where((db["sex"] == 0).to_numpy()[:, None], 0.45, 0.2)
    p = np.clip(y + rng.normal(0, 1, (n, c)) * noise, 0.001, 0.999)
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    pd.DataFrame({"record": db["ecg_id"], **{f"true/{j}": y[:, j].astype(int) for j in range(c)},
                  **{f"prob/{j}": p[:, j] for j in range(c)}}).to_csv(run / "predictions" / "val.csv",
                                                                      index=False)
    assert script.main([str(run), "--root", str(ptbxl_root), "--by", "sex",
                        "--out", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    over_all, by_groups = out["rows"]
    assert (over_all["fit"], by_groups["fit"]) == ("over all", "by groups")
    assert over_all["worst_group"] == by_groups["worst_group"] == "sex=male"
    assert over_all["worst_group_in_sample"] > 0.1 >= by_groups["worst_group_in_sample"]
    assert by_groups["low"] <= over_all["low"] and by_groups["flagged"] >= over_all["flagged"]
    assert "| by groups |" in (tmp_path / "out.md").read_text()

"""scripts/summarise_sweep.py on a hand-made sweep: settings, seed means, unfinished runs."""

from __future__ import annotations

import json

import pytest
from script_support import load_script

sweep = load_script("summarise_sweep")


def _run(root, n, overrides, metrics=None):
    run = root / str(n)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))


def test_seeds_of_one_setting_are_averaged_and_rows_named_by_what_varies(tmp_path):
    common = ["data.task=all", "'data.val_folds=[8]'"]
    values = {("0.1", 0): 0.74, ("0.1", 1): 0.76, ("1.0", 0): 0.70, ("1.0", 1): 0.69}
    for n, ((mult, seed), auc) in enumerate(values.items()):
        _run(tmp_path, n, [*common, f"finetune.encoder_lr_mult={mult}", f"seed={seed}"],
             {"val/macro_auroc": auc, "val/macro_auroc/lower": auc - 0.01, "val/macro_auroc/upper": auc + 0.02})
    _run(tmp_path, 9, [*common, "finetune.encoder_lr_mult=0.3", "seed=0"])  # killed: no metrics

    sweep.main([str(tmp_path)])
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["varying"] == ["finetune.encoder_lr_mult"]
    assert s["shared"] == {"data.task": "all", "data.val_folds": "[8]"}
    best, second, killed = s["rows"]
    assert best["setting"] == {"finetune.encoder_lr_mult": "0.1"} and best["seeds"] == 2
    assert best["mean"] == pytest.approx(0.75) and best["std"] == pytest.approx(0.0141421, abs=1e-6)
    assert (best["lower"], best["upper"]) == (pytest.approx(0.74), pytest.approx(0.77))
    assert second["mean"] == pytest.approx(0.695) and (second["min"], second["max"]) == (0.69, 0.70)
    assert killed["seeds"] == 0 and killed["unfinished"] == 1 and "mean" not in killed
    md = (tmp_path / "summary.md").read_text()
    assert md.index("| 0.1 | 0.750 | 0.014 |") < md.index("| 1.0 | 0.695 |")
    assert f"Command: `python scripts/summarise_sweep.py {tmp_path}`" in md


def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no runs"):
        sweep.main([str(tmp_path)])

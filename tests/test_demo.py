"""``make demo`` as a newcomer meets it: offline, from the sample the package ships."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score


def test_the_demo_runs_offline_on_the_shipped_sample_and_reports_what_its_files_hold(
        tmp_path, monkeypatch, capsys):
    import ecgrisk.data.download as download
    from ecgrisk import demo
    from ecgrisk.data.ptbxl import PTBXL

    def offline(*args, **kwargs):
        raise download.DownloadError("cannot reach physionet.org (the test runs offline)")

    monkeypatch.setattr(download, "download_ptbxl", offline)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECGRISK_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ECGRISK_CACHE", str(tmp_path / "cache"))
    demo.main([])
    said = " ".join(capsys.readouterr().out.split())  # rich wraps lines at the terminal width

    assert "cannot reach physionet.org" in said and "the real PTB-XL sample shipped" in said
    (out,) = (tmp_path / "runs" / "demo").iterdir()
    for rel in ("pretrain/encoder.pt", "finetune/model.pt", "finetune/metrics.json",
                "refine/model.pt", "refine/feedback.db", "refine/metrics.json", "report/index.md"):
        assert (out / rel).exists(), rel

    root = tmp_path / "data" / "ptbxl-demo-sample"
    headers = sorted((root / "records100").rglob("*.hea"))
    tables = {name: pd.read_csv(out / name) for name in ("scores.csv", "scores_shipped.csv")}
    for name, scores in tables.items():
        assert len(scores) == len(headers) == 400 and scores["error"].isna().all(), name

    # the shipped bundle's AUROC the demo prints, recomputed from its CSV and PTB-XL's labels
    ds = PTBXL(root, task="superdiagnostic")
    risk = tables["scores_shipped.csv"]
    by_id = {str(int(r.split("/")[-1].split("_")[0])): i for i, r in enumerate(risk["record"])}
    val = [i for i, f in enumerate(ds.folds) if f == 9]
    probs = risk[[f"prob/{c}" for c in ds.classes]].to_numpy()[[by_id[ds.record_ids[i]] for i in val]]
    expected = np.mean([roc_auc_score(ds.labels[val][:, c], probs[:, c])
                        for c in range(len(ds.classes))])
    printed = re.search(r"on the sample's (\d+) fold-9 records \(never trained on\): "
                        r"macro AUROC (\d\.\d{3})", said)
    assert printed and int(printed[1]) == len(val) == 76
    assert float(printed[2]) == pytest.approx(expected, abs=5e-4)
    assert expected > 0.85  # the bundle scores fold 9 of full PTB-XL at 0.93
    # the highest-risk ECG is listed with the model's reading beside the cardiologists' statements
    first = risk.loc[risk["risk"].idxmax()]
    assert (f"{first['record'].split('/')[-1]} risk {first['risk']:.3f} ({first['risk_band']}) "
            f"model: {first['reading']}") in said


def test_the_demo_answers_help_and_refuses_options_it_does_not_have(tmp_path, monkeypatch, capsys):
    from ecgrisk import demo

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        demo.main(["--help"])
    assert done.value.code == 0 and "usage: python -m ecgrisk.demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        demo.main(["--records", "5"])
    assert refused.value.code == 2 and "unrecognized arguments: --records 5" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither started a run

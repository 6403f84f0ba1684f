"""scripts/ship_bundle.py on a pretraining run: the encoder is copied byte for byte, loads by its
shipped name, and its card's figures are the run's and the label-efficiency benchmark's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from script_support import load_script

from ecgrisk.bundle_files import resolve
from ecgrisk.config import compose
from ecgrisk.data.synthetic import make_synthetic_ptbxl
from ecgrisk.files import file_sha256
from ecgrisk.pretrain.app import train


@pytest.fixture(scope="module")
def ship():
    return load_script("ship_bundle")


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ship")
    root = make_synthetic_ptbxl(tmp / "ptbxl", n_records=40, progress=False)
    run = tmp / "run"
    metrics = train(compose("pretrain", [
        f"data.root={root}", f"data.cache_dir={tmp / 'cache'}", f"output_dir={run}", "ssl=cpc",
        "model=xresnet1d18", "model.kwargs.base_channels=8", "data.batch_size=16",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false"]))
    return run, metrics


def _label_efficiency(path: Path, sha: str) -> Path:
    row = {"seeds": 3, "ci_lower": 0.70, "ci_upper": 0.80}
    path.write_text(json.dumps({
        "meta": {"command": "python scripts/benchmark_label_efficiency.py ...", "finetune_epochs": 30,
                 "seeds": [0, 1, 2], "started": "2026-12-02 08:00:00"},
        "encoders": [{"init": "cpc", "sha256": sha}],
        "tasks": {"superdiagnostic": {"fold": 9, "summary": [
            {**row, "init": "random", "mode": "linear", "fraction": 0.01, "macro_auroc": 0.712},
            {**row, "init": "cpc", "mode": "linear", "fraction": 0.01, "macro_auroc": 0.775}]}}}))
    return path


def test_an_encoder_ships_with_a_card_read_from_its_run(ship, pretrain_run, tmp_path, monkeypatch):
    import ecgrisk.shipped

    run, metrics = pretrain_run
    monkeypatch.setattr(ship, "SHIPPED_DIR", tmp_path)
    monkeypatch.setattr(ecgrisk.shipped, "SHIPPED_DIR", tmp_path)
    sha = file_sha256(run / "encoder.pt")
    le = _label_efficiency(tmp_path / "le.json", sha)
    target = ship.main([str(run), "--name", "tiny-cpc", "--label-efficiency", str(le)])
    assert target == tmp_path / "tiny-cpc.pt" and file_sha256(target) == sha
    assert resolve("tiny-cpc", "encoder") == target
    assert torch.load(target, weights_only=True)["meta"]["objective"] == "cpc"
    card = (tmp_path / "tiny-cpc.md").read_text()
    assert sha in card and "model.pretrained=tiny-cpc" in card
    n = metrics["train/records"]
    assert f"{n:,} unlabeled ECGs: ptbxl (`{pretrain_run[0].parent / 'ptbxl'}`, {n:,} records, weight 1)" in card
    assert "training on the CPU" in card
    assert f"loss {metrics['train/loss_start']:.3f} -> {metrics['train/loss_end']:.3f}" in card
    # the benchmark's row for this encoder beside random init, difference computed
    assert ("| superdiagnostic (fold 9) | linear | 1% | 0.775 (0.700-0.800), 3 seed(s) | "
            "0.712 (0.700-0.800), 3 seed(s) | +0.063 |") in card
    assert "CC BY 4.0" in card


def test_an_encoder_card_refuses_a_benchmark_that_did_not_use_it(ship, pretrain_run, tmp_path,
                                                                   monkeypatch):
    run, _ = pretrain_run
    monkeypatch.setattr(ship, "SHIPPED_DIR", tmp_path)
    le = _label_efficiency(tmp_path / "le.json", "0" * 64)
    with pytest.raises(SystemExit, match="no encoder in it has this file's digest"):
        ship.main([str(run), "--name", "tiny-cpc", "--label-efficiency", str(le)])


def test_a_directory_without_a_model_is_refused(ship, tmp_path):
    with pytest.raises(SystemExit, match="neither model.pt nor encoder.pt"):
        ship.main([str(tmp_path), "--name", "x"])


def test_a_fine_tuning_run_ships_as_a_bundle_with_its_card(ship, tmp_path, monkeypatch):
    from ecgrisk.bundle import Bundle
    from ecgrisk.finetune.app import train as finetune

    root = make_synthetic_ptbxl(tmp_path / "ptbxl", n_records=60, progress=False)
    run = tmp_path / "ft"
    metrics = finetune(compose("finetune", [
        f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={run}",
        "data.task=superdiagnostic", "model=xresnet1d18", "model.kwargs.base_channels=8",
        "data.batch_size=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "bootstrap=10"]))
    monkeypatch.setattr(ship, "SHIPPED_DIR", tmp_path)
    target = ship.main([str(run), "--name", "tiny-superdiagnostic"])
    bundle = Bundle.load(target)
    assert bundle.classes == metrics["classes"]
    card = (tmp_path / "tiny-superdiagnostic.md").read_text()
    assert file_sha256(target) in card and "CC BY 4.0" in card
    # scored on the test fold when the data has one (this synthetic copy does), else fold 9
    split = "test" if metrics.get("test/records") else "val"
    assert f"| macro AUROC | {metrics[f'{split}/macro_auroc']:.4f}" in card
    # a run a script started is reproduced by the benchmark script; one from the command line by
    # its own command (which names the encoder it started from, if any)
    assert ("## Reproduce\n`python scripts/benchmark_ptbxl.py --root <PTB-XL 1.0.1> --models "
            "xresnet1d18 --tasks superdiagnostic") in card
    (run / ".hydra" / "overrides.yaml").write_text("- data.task=superdiagnostic\n"
                                                   "- model.pretrained=cpc-xresnet1d101\n")
    ship.main([str(run), "--name", "tiny-superdiagnostic"])
    assert ("## Reproduce\n`ecgrisk-finetune data.task=superdiagnostic model.pretrained=cpc-xresnet1d101`, "
            "then `python scripts/ship_bundle.py <run> --name tiny-superdiagnostic`.") in \
        (tmp_path / "tiny-superdiagnostic.md").read_text()
    # a run older than the review band (per-statement sets instead) ships with the band fitted
    # on its validation predictions, and without the sets
    import dataclasses

    import pandas as pd

    from ecgrisk.conformal import fit_review

    old = {k: v for k, v in bundle.extra.items() if k != "review"} | {"conformal": {"alpha": 0.1}}
    dataclasses.replace(Bundle.load(run / "model.pt"), extra=old).save(run / "model.pt")
    shipped = Bundle.load(ship.main([str(run), "--name", "tiny-superdiagnostic"]))
    val = pd.read_csv(run / "predictions" / "val.csv")
    want = fit_review(val.filter(like="true/").to_numpy(), val.filter(like="prob/").to_numpy(), 0.1)
    assert "conformal" not in shipped.extra and shipped.extra["review"]["low"] == pytest.approx(want.low)


def test_a_folder_source_needs_its_attribution_before_the_encoder_ships(ship, pretrain_run, tmp_path,
                                                                        monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pretrain_run[0], run)
    metrics = json.loads((run / "metrics.json").read_text())
    # as if pooled with a folder of the user's files
    metrics.update({"train/sources": ["ptbxl", "folder"], "train/source_weights": [1.0, 2.0],
                    "train/records_per_source": [metrics["train/records"] - 3, 3]})
    (run / "metrics.json").write_text(json.dumps(metrics))
    cfg = (run / ".hydra" / "config.yaml").read_text()
    (run / ".hydra" / "config.yaml").write_text(cfg.replace(
        "  sources: null", "  sources:\n  - {source: ptbxl, root: a}\n  - {source: folder, root: b}"))
    monkeypatch.setattr(ship, "SHIPPED_DIR", tmp_path)
    with pytest.raises(SystemExit, match=r"source\(s\) \['folder'\].*--source-attribution 'folder=...'"):
        ship.main([str(run), "--name", "pooled"])
    assert not (tmp_path / "pooled.pt").exists()
    ship.main([str(run), "--name", "pooled", "--source-attribution", "folder=Clinic X, CC BY 4.0"])
    card = (tmp_path / "pooled.md").read_text()
    assert "- Clinic X, CC BY 4.0" in card and "folder (`b`, 3 records, weight 2)" in card


def test_a_shipped_encoders_card_takes_later_benchmarks_without_its_run(ship, pretrain_run, tmp_path,
                                                                          monkeypatch):
    run, _ = pretrain_run
    monkeypatch.setattr(ship, "SHIPPED_DIR", tmp_path)
    ship.main([str(run), "--name", "tiny-cpc"])
    before = (tmp_path / "tiny-cpc.md").read_text()
    assert "Not yet measured" in before
    sha = file_sha256(tmp_path / "tiny-cpc.pt")
    first = _label_efficiency(tmp_path / "a.json", sha)
    second = json.loads(first.read_text())
    second["tasks"] = {"all": second["tasks"]["superdiagnostic"]}
    (tmp_path / "b.json").write_text(json.dumps(second))
    ship.main(["--refresh-card", "tiny-cpc", "--label-efficiency", str(first), str(tmp_path / "b.json")])
    after = (tmp_path / "tiny-cpc.md").read_text()
    assert "Not yet measured" not in after
    assert "| superdiagnostic (fold 9) | linear | 1% | 0.775" in after and "| all (fold 9) | linear | 1% | 0.775" in after
    # everything outside the section is the card as shipped
    section = "\n## What it gives\n"
    assert after.split(section)[0] == before.split(section)[0]
    assert after.split("\n## Intended use")[1] == before.split("\n## Intended use")[1]
    assert "+0.063 |\n\n## Intended use" in after
    with pytest.raises(SystemExit, match="no shipped file 'nope'"):
        ship.main(["--refresh-card", "nope", "--label-efficiency", str(first)])
    with pytest.raises(SystemExit, match="no encoder in it has this file's digest"):
        ship.main(["--refresh-card", "tiny-cpc", "--label-efficiency", str(_label_efficiency(tmp_path / "c.json", "0" * 64))])


def test_a_shipped_bundles_card_takes_its_subgroup_figures(ship, tmp_path, monkeypatch):
    import shutil

    from ecgrisk.bundle import Bundle

    for suffix in (".pt", ".md"):
        shutil.copy(resolve("ptbxl-superdiagnostic").with_suffix(suffix), tmp_path / f"sd{suffix}")
    monkeypatch.setattr(ship, "SHIPPED_DIR", tmp_path)
    bundle = Bundle.load(tmp_path / "sd.pt")
    shipped = (tmp_path / "sd.md").read_text()
    if "\n## Performance by subgroup\n" in shipped:  # the card as it was before the section
        head, _, rest = shipped.partition("\n## Performance by subgroup\n")
        shipped = head + "\n## " + rest.split("\n## ", 1)[1]
    (tmp_path / "sd.md").write_text(shipped)
    before = shipped
    group = {"macro_auroc/lower": 0.92, "macro_auroc/upper": 0.94, "brier": 0.08, "ece": 0.02}
    evaluation = {"labels": "PTB-XL x (superdiagnostic)", "models": [f"{bundle.name} {bundle.version}"],
                  "scored_and_labelled": 2156, "bootstrap": 200, "min_group": 30, "groups": [
                      {"by": "all", "group": "all", "n": 2156, "macro_auroc": 0.93, **group},
                      {"by": "sex", "group": "female", "n": 1038, "macro_auroc": 0.934, **group},
                      {"by": "device", "group": "AT-6     6", "n": 218, "macro_auroc": 0.935, **group},
                      {"by": "age:40,60,80", "group": "missing", "n": 11}]}
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(evaluation))
    ship.main(["--refresh-card", "sd", "--subgroups", str(path)])
    after = (tmp_path / "sd.md").read_text()
    section = after.split("\n## Performance by subgroup\n")[1].split("\n## ")[0]
    assert "| sex | female | 1,038 | 0.934 (0.920-0.940) | 0.0800 | 0.0200 |" in section
    assert "| device | AT-6 6 | 218 |" in section and "missing" not in section
    # placed before the limits, and the rest of the card is as shipped
    assert after.replace("\n## Performance by subgroup\n" + section, "") == before
    assert "0.0200 |\n\n## Intended use and limits\n" in after
    ship.main(["--refresh-card", "sd", "--subgroups", str(path)])  # rewritten, not added twice
    assert (tmp_path / "sd.md").read_text() == after
    evaluation["models"] = ["another 1"]
    path.write_text(json.dumps(evaluation))
    with pytest.raises(SystemExit, match="evaluates \\['another 1'\\], not this bundle"):
        ship.main(["--refresh-card", "sd", "--subgroups", str(path)])


def test_a_shipped_bundles_review_band_is_refitted_on_its_own_validation_scores(
        ship, ptbxl_root, tmp_path, monkeypatch):
    import shutil

    import pandas as pd

    from ecgrisk.bundle import Bundle
    from ecgrisk.conformal import fit_review
    from ecgrisk.scoring.evaluate import join_scores
    from ecgrisk.scoring.job import score_files

    for suffix in (".pt", ".md"):
        shutil.copy(resolve("ptbxl-superdiagnostic").with_suffix(suffix), tmp_path / f"sd{suffix}")
    monkeypatch.setattr(ship, "SHIPPED_DIR", tmp_path)
    old = Bundle.load(tmp_path / "sd.pt")
    db = pd.read_csv(ptbxl_root / "ptbxl_database.csv")
    manifest = tmp_path / "records.csv"
    pd.DataFrame({"path": [str(ptbxl_root / f) for f in db.filename_lr[db.strat_fold.isin([8, 9])]]}
                 ).to_csv(manifest, index=False)
    scores = tmp_path / "scores.csv"
    score_files([str(manifest)], tmp_path / "sd.pt", scores, workers=0, progress=False)

    import ecgrisk.conformal

    monkeypatch.setattr(ecgrisk.conformal, "MIN_GROUP", 20)  # the subset's fold 9 is small
    ship.main(["--refresh-review", "sd", "--scores", str(scores), "--labels", str(ptbxl_root),
               "--task", "superdiagnostic", "--by", "sex"])
    new = Bundle.load(tmp_path / "sd.pt")  # the digest is the new file's own
    fold9 = join_scores(scores, ptbxl_root, "superdiagnostic", ["fold=9"])  # fold 8 left out
    sex = [fold9.labels.columns["sex"][k] for k in fold9.keys]
    want = fit_review(fold9.y, fold9.p, 0.1, {"sex": sex})
    assert new.extra["review"] == want.to_dict() and len(want.groups) == 2  # both >= 20 ECGs
    # the widest of the bands fitted over all and in each group
    each = [fit_review(fold9.y[m], fold9.p[m], 0.1).low
            for m in (np.array(sex) == v for v in sorted(set(sex)))]
    assert want.low == min([fit_review(fold9.y, fold9.p, 0.1).low, *each])
    assert new.extra["review"]["n"] == len(fold9.keys) and "conformal" not in new.extra
    assert new.version.startswith(old.version.split("+review-")[0] + "+review-")
    for k, v in old.model.state_dict().items():  # the same weights and calibration
        torch.testing.assert_close(new.model.state_dict()[k], v, rtol=0, atol=0)
    assert (new.temperature == old.temperature).all() and (new.bias == old.bias).all()
    card = (tmp_path / "sd.md").read_text()
    assert f"SHA-256 `{file_sha256(tmp_path / 'sd.pt')}`; bundle `{new.name}` version `{new.version}`." in card
    review = card.split("\n## Which ECGs need review\n")[1].split("\n## ")[0]
    low = new.extra["review"]["low"]
    assert f"lies in the band {low:.3f}-{1 - low:.3f}" in review and "split-conformal" not in review
    assert f"within each group of fold 9 of at least 20 ECGs too: {', '.join(want.groups)}" in review
    # scores that are not this bundle's own are refused
    with pytest.raises(SystemExit, match="the scores come from .*, not from"):
        ship.main(["--refresh-review", "sd", "--scores", str(scores), "--labels", str(ptbxl_root),
                   "--task", "superdiagnostic"])


def test_an_ensemble_ships_with_a_card_read_from_its_own_validation_scores(
        ship, ptbxl_root, tmp_path, monkeypatch):
    import pandas as pd
    from test_ensemble import _member

    import ecgrisk.conformal
    import ecgrisk.shipped
    from ecgrisk.bundle import Bundle
    from ecgrisk.cli import main as cli_main
    from ecgrisk.metrics import bootstrap_ci, macro_auroc
    from ecgrisk.preprocess import Scaler
    from ecgrisk.scoring.evaluate import join_scores
    from ecgrisk.scoring.job import score_files

    monkeypatch.setattr(ecgrisk.conformal, "MIN_GROUP", 20)  # the subset's fold 9 is small
    a = _member(tmp_path / "a.pt", 0, "xresnet1d18", Scaler(0.01, 0.2), np.ones(5), np.zeros(5))
    b = _member(tmp_path / "b.pt", 1, "inception1d", Scaler(0.0, 0.15), np.full(5, 2.0), np.zeros(5))
    db = pd.read_csv(ptbxl_root / "ptbxl_database.csv")
    manifest = tmp_path / "fold9.csv"
    pd.DataFrame({"path": [str(ptbxl_root / f) for f in db.filename_lr[db.strat_fold == 9]]}
                 ).to_csv(manifest, index=False)

    def scored(bundle, name):
        score_files([str(manifest)], bundle, tmp_path / name, workers=0, progress=False)
        return tmp_path / name

    assert cli_main(["ensemble", str(a), str(b), "--out", str(tmp_path / "e.pt")]) == 0
    labels = ["--labels", str(ptbxl_root), "--task", "superdiagnostic"]
    assert cli_main(["recalibrate", str(scored(tmp_path / "e.pt", "e.csv")), *labels, "--only",
                     "fold=9", "--model", str(tmp_path / "e.pt"), "--by", "sex",
                     "--out", str(tmp_path / "final.pt")]) == 0
    final = scored(tmp_path / "final.pt", "final.csv")
    compare = load_script("compare_scores")
    compare.main([str(scored(a, "a.csv")), str(final), *labels, "--bootstrap", "20",
                  "--out", str(tmp_path / "cmp")])
    monkeypatch.setattr(ship, "SHIPPED_DIR", tmp_path / "shipped")
    monkeypatch.setattr(ecgrisk.shipped, "SHIPPED_DIR", tmp_path / "shipped")
    (tmp_path / "shipped").mkdir()
    with pytest.raises(SystemExit, match="not an ensemble recalibrated"):
        ship.main(["--ensemble", str(tmp_path / "e.pt"), "--name", "ens", "--scores",
                   str(tmp_path / "e.csv"), *labels])
    ship.main(["--ensemble", str(tmp_path / "final.pt"), "--name", "ens", "--scores", str(final),
               *labels, "--compare", str(tmp_path / "cmp.json")])

    target = tmp_path / "shipped" / "ens.pt"
    assert file_sha256(target) == file_sha256(tmp_path / "final.pt") == file_sha256(resolve("ens"))
    bundle = Bundle.load("ens")
    card = (tmp_path / "shipped" / "ens.md").read_text()
    fold9 = join_scores(final, ptbxl_root, "superdiagnostic", ["fold=9"])
    auroc = bootstrap_ci(macro_auroc, fold9.y, fold9.p, n=100)
    assert (f"| macro AUROC | {auroc['point']:.4f} (90% CI {auroc['lower']:.4f}-"
            f"{auroc['upper']:.4f}) |") in card
    members = card.split("\n## Members\n")[1].split("\n## ")[0]
    assert "- `xresnet1d18-tiny` version `0`" in members and "- `inception1d-tiny` version `1`" in members
    assert "inception1d (" in members and "random initialisation" in members
    r = bundle.extra["recalibration"]
    assert f"Brier {r['brier_before']:.4f} -> {r['brier_after']:.4f}" in card
    low = bundle.extra["review"]["low"]
    assert f"lies in the band {low:.3f}-{1 - low:.3f}" in card and "--by sex" in card
    assert "| `a.csv` | xresnet1d18-tiny 0 |" in card and "| `final.csv` |" in card

"""Refinement pools beyond the validation fold: training-fold records the base never saw, and a
clinic's own folder of ECG files judged in the review app; the embedding cache."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from script_support import load_script

from ecgrisk.bundle import Bundle
from ecgrisk.config import compose
from ecgrisk.data.folder import ECGFolder
from ecgrisk.feedback.records import Verdict
from ecgrisk.feedback.store import FeedbackStore
from ecgrisk.finetune.app import train
from ecgrisk.refine.app import refine

TINY = ["model=xresnet1d18", "model.kwargs.base_channels=8", "data.batch_size=32",
        "trainer.enable_progress_bar=false", "bootstrap=0", "early_stopping_patience=null"]


@pytest.fixture(scope="module")
def scarce(ptbxl_no_test_fold, tmp_path_factory):
    """Folds 1-9 of a synthetic PTB-XL; a tiny base fine-tuned on 30% of folds 1-8 by patient."""
    tmp, root = tmp_path_factory.mktemp("pools"), ptbxl_no_test_fold
    db = pd.read_csv(root / "ptbxl_database.csv")
    train(compose("finetune", [f"data.root={root}", f"data.cache_dir={tmp / 'cache'}",
                               f"output_dir={tmp / 'base'}", "trainer.max_epochs=1",
                               "data.train_fraction=0.3", *TINY]))
    return tmp, root, db


def _cfg(tmp, root, out, *extra):
    return compose("refine", [f"data.root={root}", f"data.cache_dir={tmp / 'cache'}",
                              f"output_dir={out}", f"base={tmp / 'base' / 'model.pt'}",
                              "progress=false", "bootstrap=0", *extra])


def test_folds_pool_asks_only_about_records_the_base_never_trained_on(scarce):
    tmp, root, db = scarce
    trained = set(Bundle.load(tmp / "base" / "model.pt").extra["train_records"])
    labelled = set(map(str, db.ecg_id))  # every synthetic record carries a superclass
    folds_1_8 = {str(i) for i, f in zip(db.ecg_id, db.strat_fold, strict=True) if f <= 8}
    assert trained and trained < folds_1_8 and labelled >= folds_1_8
    m = refine(_cfg(tmp, root, tmp / "run", "pool=folds", "rounds=2", "queries_per_round=10",
                    "report_each_round=true"))
    assert m["pool/records"] == len(folds_1_8 - trained)
    # guard and report are the two halves of fold 9 (the test fold is absent here)
    n_val = int((db.strat_fold == 9).sum())
    assert m["report/split"] == "validation half"
    assert m["guard/records"] + m["report/records"] == n_val
    assert "round_1/report/macro_auroc" in m and "round_1/guard_reason" in m
    with FeedbackStore(tmp / "run" / "feedback.db") as store:
        asked = {v.ecg_id for v in store.verdicts()}
    assert len(asked) == 20 and asked <= folds_1_8 - trained


def test_a_bundle_without_its_training_list_counts_folds_1_8_as_seen(scarce, tmp_path):
    tmp, root, _ = scarce
    bundle = Bundle.load(tmp / "base" / "model.pt")
    old = dataclasses.replace(bundle, extra={k: v for k, v in bundle.extra.items()
                                             if k != "train_records"})
    old.save(tmp_path / "old.pt")
    cfg = _cfg(tmp, root, tmp_path / "run", "pool=folds", f"base={tmp_path / 'old.pt'}")
    with pytest.raises(ValueError, match="no record of folds .* left that the base"):
        refine(cfg)


def test_pool_embeddings_are_computed_once_and_read_back(scarce, monkeypatch):
    from ecgrisk.data.datamodule import build_datamodule
    from ecgrisk.refine import pools
    from ecgrisk.refine.app import data_for_bundle

    tmp, root, _ = scarce
    bundle = Bundle.load(tmp / "base" / "model.pt")
    cfg = _cfg(tmp, root, tmp / "unused", "pool=folds")
    dm = build_datamodule(data_for_bundle(cfg.data, bundle), 0, scaler=bundle.scaler,
                          progress=False)
    dm.setup()
    first = pools.prepare_sets(bundle, dm, cfg.pool, cache_dir=tmp / "emb")
    assert len(list((tmp / "emb" / "embeddings").glob("*.pt"))) == 2  # fold 9 and the pool

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded again instead of reading the cache")

    monkeypatch.setattr(pools, "embed_windows", no_embedding)
    again = pools.prepare_sets(bundle, dm, cfg.pool, cache_dir=tmp / "emb")
    for a, b in ((first.pool, again.pool), (first.guard, again.guard)):
        assert a.record_ids == b.record_ids
        torch.testing.assert_close(a.embeddings, b.embeddings, rtol=0, atol=0)
        np.testing.assert_array_equal(a.positions, b.positions)
    # another model's embeddings are not these
    other = dataclasses.replace(bundle, temperature=bundle.temperature * 2)
    with pytest.raises(AssertionError, match="embedded again"):
        pools.prepare_sets(other, dm, cfg.pool, cache_dir=tmp / "emb")


def test_folder_pool_uses_the_review_apps_ids_and_the_store_its_judgements(scarce, tmp_path):
    tmp, root, db = scarce
    clinic = tmp_path / "clinic"
    for rel in db.filename_lr[:12]:
        dst = clinic / "export" / rel.split("/")[-1]
        dst.parent.mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".dat"):
            shutil.copy(root / f"{rel}{ext}", f"{dst}{ext}")
    (clinic / "export" / "broken.hea").write_text("not a header\n")
    ids = ECGFolder(clinic).record_ids  # the ids the review app's queue gives these files
    assert len(ids) == 13
    with FeedbackStore(tmp_path / "clinic.db") as store:
        store.add_many([Verdict(ecg_id=i, reading={"NORM": 1}, marks={"NORM": "wrong"},
                                missed=["MI"], annotator="dr-a") for i in ids[:6]])

    cfg = _cfg(tmp, root, tmp_path / "run", "pool=folder", f"pool.root={clinic}",
               "feedback=store", f"feedback.store={tmp_path / 'clinic.db'}", "refine=bce",
               "rounds=1", "queries_per_round=4")
    m = refine(cfg)
    assert m["pool/records"] == 12  # the broken file is left out, the rest are asked about
    assert m["feedback/count"] == 6 and m["feedback/skipped"] == 0
    simulated = _cfg(tmp, root, tmp_path / "run2", "pool=folder", f"pool.root={clinic}")
    with pytest.raises(ValueError, match="no labels for a simulated cardiologist"):
        refine(simulated)


@pytest.mark.parametrize("scenario", ["house", "scarce"])
def test_preference_benchmark_reports_gap_closed_against_its_oracle(scarce, tmp_path, scenario,
                                                                   monkeypatch):
    tmp, root, _ = scarce
    bench = load_script("benchmark_preference")
    trained_on = []  # the set each head of the oracle's recipe was trained on, call by call
    oracle = bench.oracle
    monkeypatch.setattr(bench, "oracle", lambda bundle, sets, *a, **k: (
        trained_on.append(sets.pool) or oracle(bundle, sets, *a, **k)))
    bench.main(["--root", str(root), "--scenario", scenario, "--judgements", "10", "20",
                "--seeds", "2", "--arms", "bce/uncertainty,bce/random", "--bootstrap", "20",
                "--base", str(tmp / "base" / "model.pt"), "--work", str(tmp_path / "work"),
                "--out", str(tmp_path / "out"), f"data.cache_dir={tmp / 'cache'}"])
    res = json.loads((tmp_path / "out" / f"preference_{scenario}.json").read_text())
    md = (tmp_path / "out" / f"preference_{scenario}.md").read_text()
    assert "Targets at 200 judgements: not measured." in md  # only 10 and 20 were asked for
    assert (tmp_path / "out" / f"preference_{scenario}.png").stat().st_size > 10_000
    means = [r for r in res["rows"] if r["seed"] == "mean"]
    yardsticks = [bench.REFERENCE, bench.REPLAY, bench.UNCERTAIN]
    k = 2 * len(yardsticks)
    assert [(r["arm"], r["judgements"]) for r in means] == [
        (arm, n) for arm in [*yardsticks, "bce/uncertainty", "bce/random"] for n in (10, 20)]
    base, oracle = res["base"]["auroc"], res["oracle"]["auroc"]
    for r in means[:k]:  # the yardsticks: the oracle's head on n clean random labels (+ replay)
        assert r["gap_closed"] == pytest.approx((r["auroc"] - base) / (oracle - base))
    # the base's own records (house: with the standard labels it learned) changed the head
    assert means[2]["auroc"] != means[0]["auroc"]
    # the same with the base's most uncertain pool ECGs: other records, another head
    assert means[4]["auroc"] != means[2]["auroc"]
    # calls: the oracle on the whole pool; per yardstick, n = 10, 20 x seeds 0, 1; own alone x 2
    from ecgrisk.feedback.acquisition import select
    from ecgrisk.refine.policy import BernoulliPolicy

    assert len(trained_on) == 1 + 3 * 4 + 2
    pool, b = trained_on[0], Bundle.load(tmp / "base" / "model.pt")
    top = select(BernoulliPolicy(b.model, b.temperature, b.bias, b.aggregation).probs(pool), 20,
                 rule="uncertainty")
    own = trained_on[13].record_ids  # the last calls: the base's records alone
    for call, n in zip(range(9, 13), (10, 10, 20, 20), strict=True):
        # the uncertain yardstick: the base's records and its n most uncertain, every seed
        assert trained_on[call].record_ids == own + [pool.record_ids[i] for i in sorted(top[:n])]
    # the random one draws other ECGs per seed
    assert trained_on[5].record_ids[len(own):] != trained_on[6].record_ids[len(own):]
    trained = Bundle.load(tmp / "base" / "model.pt").extra["train_records"]
    assert res["meta"]["own"] == len(trained) > 0
    assert f"base's own {len(trained)} training records" in md
    alone = res["own_alone"]  # the head on those records alone, no judgement
    assert alone["gap_closed"] == pytest.approx((alone["auroc"] - base) / (oracle - base))
    assert f"gap closed {alone['gap_closed']:.2f}" in md
    assert bench.parse_args(["--root", "r", "--scenario", "scarce", "--arms", ""]).arms == []
    assert "pg-replay/uncertainty" in bench.parse_args(["--root", "r", "--scenario", "house"]).arms
    # an arm's name spells its overrides; every method and rule it names exists
    from ecgrisk.feedback.acquisition import RULES
    from ecgrisk.refine.refiners import REFINERS

    assert bench.arm_overrides("ipo-weighted/uncertainty") == [
        "refine=ipo", "refine.weighting=uncertainty", "ask.rule=uncertainty"]
    for arm in bench.ARMS:
        method, *_, rule = bench.arm_overrides(arm)
        assert method.split("=")[1] in REFINERS and rule.split("=")[1] in RULES
    with pytest.raises(SystemExit):
        bench.parse_args(["--root", "r", "--scenario", "house", "--arms", "bce-replay/sometimes"])
    for r in means[k:]:
        seeds = [s for s in res["rows"] if s["arm"] == r["arm"] and s["judgements"] == r["judgements"]
                 and s["seed"] != "mean"]
        assert len(seeds) == 2
        assert r["auroc"] == pytest.approx(np.mean([s["auroc"] for s in seeds]))
        # each seed row carries its own run's guard AUROC and kept rounds; the mean row theirs
        assert r["guard_auroc"] == pytest.approx(np.mean([s["guard_auroc"] for s in seeds]))
        assert r["kept"] == sum(s["kept"] for s in seeds)
        assert r["gap_closed"] == pytest.approx((r["auroc"] - base) / (oracle - base))
        assert r["auroc_lower"] <= r["auroc"] <= r["auroc_upper"]
    assert res["meta"]["queries"] == 10 and res["meta"]["rounds"] == 2
    assert res["base"]["gap_closed"] == pytest.approx(0.0) and res["oracle"]["gap_closed"] == 1.0


def test_config_value_reads_a_bundles_stored_run_config():
    """The one reader of a bundle's stored config: a dotted key, else the default (absent key,
    null value, no config, unreadable YAML)."""
    from ecgrisk.bundle import config_value

    config = "data:\n  min_likelihood: 80\n  root: null\ntrainer:\n  precision: bf16-mixed\n"
    assert config_value(config, "data.min_likelihood", 0) == 80
    assert config_value(config, "trainer.precision", "32-true") == "bf16-mixed"
    assert config_value(config, "data.root", "r") == "r"
    assert config_value(config, "data.min_likelihood.deeper", 0) == 0
    assert config_value(config, "model.name") is None
    assert config_value("", "data.min_likelihood", 0) == 0
    assert config_value("data: [unclosed", "data.min_likelihood", 0) == 0


@pytest.mark.parametrize("folds,said", [([9], "overlap the validation folds [9]"),
                                        ([8, 10], "overlap the test folds [10]")])
def test_a_folds_pool_never_asks_about_the_folds_it_is_guarded_or_reported_on(folds, said):
    # found in review: pool.folds=[10] was taken, then trained on and reported on
    from types import SimpleNamespace

    from ecgrisk.refine.pools import _fold_pool

    cache = SimpleNamespace(folds=np.array([1, 8, 9, 10, 10]), record_ids=["a", "b", "c", "d", "e"])
    dm = SimpleNamespace(caches=[cache], folds={"train": (1, 8), "val": (9,), "test": (10,)})
    bundle = SimpleNamespace(extra={"train_records": ["a"]}, name="base", version="1")
    with pytest.raises(ValueError, match=re.escape(said)):
        _fold_pool(bundle, dm, folds, embed=None)

"""``ecgrisk-refine``: the policy, the guard, DPO, and whole rounds on the shared PTB-XL subset."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch

from ecgrisk.bundle import Bundle
from ecgrisk.config import compose
from ecgrisk.feedback.records import Verdict
from ecgrisk.feedback.store import FeedbackStore
from ecgrisk.models import create_encoder
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.refine.app import refine
from ecgrisk.refine.loop import FeedbackData, RoundContext, candidate_readings
from ecgrisk.refine.losses import bernoulli_logprob
from ecgrisk.refine.policy import (
    BernoulliPolicy,
    evaluate_policy,
    guard_verdict,
    guarded_update,
)
from ecgrisk.refine.pools import prepare_sets
from ecgrisk.refine.refiners import REFINERS, preference_refine
from ecgrisk.refine.windows import WindowSet

CLASSES = ["CD", "HYP", "MI", "NORM", "STTC"]


@pytest.fixture(scope="module")
def base(tmp_path_factory, ptbxl_root):
    """A 1-epoch tiny fine-tune on the shared subset: (tmp dir, model.pt path)."""
    from ecgrisk.finetune.app import train

    tmp = tmp_path_factory.mktemp("refine")
    train(compose("finetune", [
        f"data.root={ptbxl_root}", f"data.cache_dir={tmp / 'cache'}", f"output_dir={tmp / 'ft'}",
        "model=xresnet1d18", "model.kwargs.base_channels=8", "data.batch_size=64",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "bootstrap=0",
        "early_stopping_patience=null"]))
    return tmp, tmp / "ft" / "model.pt"


def _cfg(base, ptbxl_root, out, *extra):
    tmp, model = base
    return compose("refine", [f"data.root={ptbxl_root}", f"data.cache_dir={tmp / 'cache'}",
                              f"output_dir={out}", f"base={model}", "progress=false",
                              "bootstrap=10", *extra])


# --------------------------------------------------------------------------- unit checks


def _tiny_policy(num_classes=3, temperature=(1.0, 2.0, 0.5), bias=(0.0, -1.0, 0.5)):
    torch.manual_seed(0)
    enc = create_encoder("xresnet1d18", base_channels=8)
    model = ECGClassifier(enc, num_classes, head="linear", dropout=0.0)
    return BernoulliPolicy(model, np.asarray(temperature), np.asarray(bias), "max", "head"), enc.embed_dim


def test_policy_logits_are_calibrated_window_max():
    policy, dim = _tiny_policy()
    emb = torch.randn(5, dim)
    # record 0 has windows 0, 2, 4; record 1 has windows 1, 3
    ws = WindowSet(["a", "b"], np.zeros((2, 3)), np.array([0, 1, 0, 1, 0]), emb)
    with torch.no_grad():
        head = policy.model.head(emb)
        expected = torch.stack([head[[0, 2, 4]].max(0).values, head[[1, 3]].max(0).values])
        expected = expected / torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([0.0, -1.0, 0.5])
        torch.testing.assert_close(policy.logits(ws), expected)
        torch.testing.assert_close(policy.logits(ws, np.array([1])), expected[[1]])
    np.testing.assert_allclose(ws.record_embeddings()[1], emb[[1, 3]].mean(0).numpy(), rtol=1e-6)
    # only the head trains by default
    assert {id(p) for p in policy.parameters()} == {id(p) for p in policy.model.head.parameters()}


def _guard_metrics(auroc, brier=0.10, ece=0.05):
    return {"val/macro_auroc": auroc, "val/brier": brier, "val/ece": ece}


def test_guard_holds_auroc_brier_and_ece_within_tolerance_and_says_why():
    base = _guard_metrics(0.803)
    tol = dict(tolerance=0.005, brier_tolerance=0.002, ece_tolerance=0.01)
    assert guard_verdict(_guard_metrics(0.800), base, **tol) == ""
    assert guard_verdict(_guard_metrics(0.900, 0.101, 0.059), base, **tol) == ""
    assert guard_verdict(_guard_metrics(0.797), base, **tol) == \
        "macro AUROC 0.7970 < base 0.8030 - 0.005"
    # better ranking does not excuse worse probabilities
    assert guard_verdict(_guard_metrics(0.900, 0.103), base, **tol) == \
        "Brier 0.1030 > base 0.1000 + 0.002"
    both = guard_verdict(_guard_metrics(0.790, 0.10, 0.07), base, **tol)
    assert both.startswith("macro AUROC") and "ECE 0.0700 > base 0.0500 + 0.01" in both
    assert "undefined" in guard_verdict(_guard_metrics(float("nan")), base, **tol)
    with pytest.raises(ValueError, match="brier_tolerance"):
        guard_verdict(base, base, 0.005, -0.1, 0.01)


def test_candidate_readings_show_two_different_readings():
    probs = np.array([[0.9, 0.1, 0.6], [0.5, 0.5, 0.5]])
    a, b = candidate_readings("threshold", probs, probs, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(a, [[1, 0, 1], [1, 1, 1]])
    assert b is None
    base = np.array([[0.9, 0.9, 0.6], [0.5, 0.5, 0.5]])
    a, b = candidate_readings("versions", probs, base, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(b[0], [1, 1, 1])  # the base's reading where it differs
    assert (a[1] != b[1]).any()  # a policy sample where base and current agree


def _logprob_margin(policy, ws, data):
    """Mean ``log pi(chosen) - log pi(rejected)`` over the pairs."""
    with torch.no_grad():
        logits = policy.logits(ws, data.record)
        return float((bernoulli_logprob(logits, torch.from_numpy(data.chosen))
                      - bernoulli_logprob(logits, torch.from_numpy(data.rejected))).mean())


def test_dpo_increases_the_log_prob_margin_of_chosen_over_rejected():
    policy, dim = _tiny_policy()
    rng = np.random.default_rng(0)
    ws = WindowSet([str(i) for i in range(12)], np.zeros((12, 3)), np.repeat(np.arange(12), 2),
                   torch.randn(24, dim))
    chosen = rng.integers(0, 2, (12, 3)).astype(np.float32)
    rejected = chosen.copy()
    rejected[:, 0] = 1 - chosen[:, 0]
    rejected[::2, 2] = 1 - chosen[::2, 2]
    data = FeedbackData(np.arange(12), chosen, rejected, np.zeros(12, bool), np.zeros(0, int),
                        np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), 12)
    with torch.no_grad():
        ref_logits = policy.logits(ws)
    before = _logprob_margin(policy, ws, data)
    cfg = compose("refine", ["refine=dpo", "refine.lr=1e-2", "refine.steps=30"]).refine
    ctx = RoundContext(ws, ref_logits, data, None, ws.record_embeddings(), seed=0)
    stats = preference_refine(policy, ctx, cfg)
    after = _logprob_margin(policy, ws, data)
    assert after > before + 0.5, (before, after)
    # the implicit reward beta * (log pi - log pi_ref) now prefers the chosen reading
    assert stats["reward_accuracy"] > 0.5 and stats["margin"] > 0


@pytest.mark.parametrize("method", ["bce", "dpo", "pg"])
def test_replay_fits_the_bases_own_records_beside_the_judgements(method):
    """refine.replay adds BCE on the base's own records to any refiner: with them labelled
    positive for the first statement while every judgement says it is absent, the head raises
    that statement on them with replay and lowers it without; without the records, replay is
    a clear error."""
    dim = _tiny_policy()[1]
    rng = np.random.default_rng(0)
    pool = WindowSet([str(i) for i in range(12)], np.zeros((12, 3)), np.repeat(np.arange(12), 2),
                     torch.from_numpy(rng.standard_normal((24, dim)).astype(np.float32)))
    own_labels = np.zeros((16, 3))
    own_labels[:, 0] = 1
    own = WindowSet([f"o{i}" for i in range(16)], own_labels, np.repeat(np.arange(16), 2),
                    torch.from_numpy(rng.standard_normal((32, dim)).astype(np.float32)))
    absent = np.zeros((12, 3), np.float32)
    present = absent.copy()
    present[:, 0] = 1
    # bce: verdicts "absent" on every statement; dpo: the reading without the first statement
    # preferred; pg: a reward for leaving it out
    data = (FeedbackData(np.zeros(0, int), np.zeros((0, 3), np.float32),
                         np.zeros((0, 3), np.float32), np.zeros(0, bool), np.arange(12), absent,
                         np.ones((12, 3), np.float32), 12) if method == "bce" else
            FeedbackData(np.arange(12), absent, present, np.zeros(12, bool), np.zeros(0, int),
                         np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), 12))
    reward = (lambda emb, samples: -samples[..., 0]) if method == "pg" else None
    refiner = REFINERS[method]
    moved = {}
    for replay in (0.0, 2.0):
        policy = _tiny_policy()[0]
        with torch.no_grad():
            ref_logits = policy.logits(pool)
            first = policy.logits(own)[:, 0].mean()
        cfg = compose("refine", [f"refine={method}", "refine.lr=1e-2", "refine.steps=40",
                                 f"refine.replay={replay}"]).refine
        stats = refiner(policy, RoundContext(pool, ref_logits, data, reward,
                                             pool.record_embeddings(), seed=0, own=own), cfg)
        with torch.no_grad():
            moved[replay] = float(policy.logits(own)[:, 0].mean() - first)
        assert ("replay" in stats) == (replay > 0)
    # the judgements pull the first statement down everywhere; replay holds the own records up
    assert moved[0.0] < 0 < moved[2.0] and moved[2.0] > moved[0.0] + 0.3, moved
    cfg = compose("refine", [f"refine={method}", "refine.replay=1.0"]).refine
    with pytest.raises(ValueError, match="base's own training records"):
        refiner(_tiny_policy()[0], RoundContext(pool, ref_logits, data, reward,
                                                pool.record_embeddings(), seed=0), cfg)


# --------------------------------------------------------------------------- on real data


@pytest.fixture(scope="module")
def prepared(base, ptbxl_root):
    from ecgrisk.data.datamodule import build_datamodule
    from ecgrisk.refine.app import data_for_bundle

    tmp, model = base
    bundle = Bundle.load(model)
    cfg = _cfg(base, ptbxl_root, tmp / "unused")
    dm = build_datamodule(data_for_bundle(cfg.data, bundle), 0, scaler=bundle.scaler,
                          progress=False)
    dm.setup()
    return bundle, dm, prepare_sets(bundle, dm, "val_half", seed=0, batch_size=64)


def test_replay_embeds_the_bases_own_training_records_or_says_why_not(prepared):
    import dataclasses

    bundle, dm, sets = prepared
    trained = set(bundle.extra["train_records"])
    own = prepare_sets(bundle, dm, "val_half", seed=0, batch_size=64, own=True).own
    assert set(own.record_ids) == trained and len(own) == len(trained)
    assert not trained & (set(sets.pool.record_ids) | set(sets.guard.record_ids))
    cache = dm.caches[0]
    rows = [cache.record_ids.index(r) for r in own.record_ids[:5]]
    np.testing.assert_array_equal(own.labels[:5], cache.labels[rows])  # labels from `data`
    # a base that learned under a stricter likelihood rule replays its records as it learned
    # them (the house-style scenario), not as `data` labels them now
    from ecgrisk.data.ptbxl import PTBXL

    strict = dataclasses.replace(bundle, config=bundle.config.replace(
        "min_likelihood: 0", "min_likelihood: 80"))
    assert "min_likelihood: 80" in strict.config
    relabelled = prepare_sets(strict, dm, "val_half", seed=0, batch_size=64, own=True).own
    house = PTBXL(dm.sources[0].root, min_likelihood=80)
    rows = [house.record_ids.index(r) for r in relabelled.record_ids]
    np.testing.assert_array_equal(relabelled.labels, house.labels[rows])
    assert relabelled.labels.sum() < own.labels.sum()
    unlisted = dataclasses.replace(bundle, extra={})
    with pytest.raises(ValueError, match="does not list them"):
        prepare_sets(unlisted, dm, "val_half", seed=0, batch_size=64, own=True)
    elsewhere = dataclasses.replace(bundle, extra={"train_records": ["not-here"]})
    with pytest.raises(ValueError, match="none of the base's 1 training records"):
        prepare_sets(elsewhere, dm, "val_half", seed=0, batch_size=64, own=True)


def test_guard_rejects_a_worse_refinement_and_keeps_the_base(prepared, ptbxl_split_sizes):
    bundle, _, sets = prepared
    sizes = ptbxl_split_sizes["superdiagnostic"]  # val 72 = 36 + 36, test 64 on the shared subset
    assert len(sets.pool) == sizes["val"] // 2 and len(sets.guard) == sizes["val"] - len(sets.pool)
    assert len(sets.report) == sizes["test"] and sets.report_split == "test fold"
    assert not set(sets.pool.record_ids) & set(sets.guard.record_ids)
    policy = BernoulliPolicy(bundle.model, bundle.temperature, bundle.bias, bundle.aggregation)
    base_val, _ = evaluate_policy(policy, sets.guard, "val/", CLASSES)
    before = policy.snapshot()
    with torch.no_grad():  # a "refinement" that flips every statement's evidence
        last = policy.model.head[-1]
        last.weight.neg_()
        last.bias.neg_()
    guard = compose("refine").guard
    reason, worse = guarded_update(policy, before, sets.guard, base_val, guard, CLASSES)
    assert worse["val/macro_auroc"] < base_val["val/macro_auroc"] - 0.005
    assert reason.startswith("macro AUROC")
    for k, v in policy.model.state_dict().items():
        torch.testing.assert_close(v, before["model"][k], rtol=0, atol=0)


def _sharpen(policy: BernoulliPolicy, factor: float) -> None:
    """Multiply the head's logits by ``factor``: ranking kept, confidence changed."""
    with torch.no_grad():
        last = policy.model.head[-1]
        last.weight.mul_(factor)
        last.bias.mul_(factor)


def test_recalibrating_guard_judges_a_rescaled_refinement_by_its_own_calibration():
    from omegaconf import OmegaConf

    policy, dim = _tiny_policy()
    torch.manual_seed(1)
    n, classes = 300, ["a", "b", "c"]
    emb, positions = torch.randn(2 * n, dim), np.repeat(np.arange(n), 2)
    unlabelled = WindowSet([f"r{i}" for i in range(n)], np.zeros((n, 3)), positions, emb)
    # labels drawn from the policy's own probabilities: it is calibrated on them by construction
    labels = (np.random.default_rng(0).random((n, 3)) < policy.probs(unlabelled)).astype(float)
    guard = WindowSet(unlabelled.record_ids, labels, positions, emb)
    base_val, _ = evaluate_policy(policy, guard, "val/", classes)
    reference = BernoulliPolicy(copy.deepcopy(policy.model), policy.temperature.numpy(),
                                policy.bias.numpy(), "max", "head")
    reference.recalibrate(guard)

    plain = compose("refine").guard
    assert plain.recalibrate is False
    before = policy.snapshot()
    _sharpen(policy, 4.0)
    reason, worse = guarded_update(policy, before, guard, base_val, plain, classes)
    assert worse["val/macro_auroc"] == pytest.approx(base_val["val/macro_auroc"])
    assert reason and "AUROC" not in reason and ("Brier" in reason or "ECE" in reason)
    for k, v in policy.model.state_dict().items():
        torch.testing.assert_close(v, before["model"][k], rtol=0, atol=0)

    _sharpen(policy, 4.0)
    reason, kept = guarded_update(policy, before, guard, base_val,
                                  OmegaConf.merge(plain, {"recalibrate": True}), classes)
    assert reason == ""
    assert kept["val/brier"] <= base_val["val/brier"] + 1e-9  # refitted in-sample: never worse
    # the refit undoes the rescaling: the same probabilities as the unscaled model refitted
    np.testing.assert_allclose(policy.probs(guard), reference.probs(guard), atol=2e-3)
    np.testing.assert_allclose(policy.calibration()[0], 4.0 * reference.calibration()[0],
                               rtol=0.02)
    # a refused round restores the calibration as well as the weights
    snap = policy.snapshot()
    _sharpen(policy, -1.0)
    reason, _ = guarded_update(policy, snap, guard, base_val,
                               OmegaConf.merge(plain, {"recalibrate": True}), classes)
    assert reason.startswith("macro AUROC")
    np.testing.assert_array_equal(policy.calibration()[0], snap["temperature"].numpy())


def test_guard_against_kept_holds_each_round_against_the_last_kept_one(base, ptbxl_root,
                                                                       tmp_path, monkeypatch):
    import ecgrisk.refine.refiners as rf

    # a base with every statement's evidence reversed; the "refiner" reverses it each round, so
    # round 1 mends the base and round 2 undoes the mend, back to exactly the base's metrics
    bundle = Bundle.load(base[1])
    _sharpen(BernoulliPolicy(bundle.model, bundle.temperature, bundle.bias), -1.0)
    bundle.save(tmp_path / "reversed.pt")
    monkeypatch.setitem(rf.REFINERS, "dpo", lambda policy, ctx, cfg: _sharpen(policy, -1.0) or {})
    lenient = ["guard.tolerance=0", "guard.brier_tolerance=1", "guard.ece_tolerance=1"]
    runs = {against: refine(_cfg((base[0], tmp_path / "reversed.pt"), ptbxl_root,
                                 tmp_path / against, "rounds=2", "queries_per_round=8",
                                 f"guard.against={against}", *lenient))
            for against in ("base", "kept")}
    for m in runs.values():
        assert m["round_1/accepted"] is True
        assert m["round_1/val/macro_auroc"] > m["base/val/macro_auroc"]
    assert runs["base"]["round_2/accepted"] is True  # no worse than the base: kept
    assert runs["base"]["val/macro_auroc"] == pytest.approx(runs["base"]["base/val/macro_auroc"])
    assert runs["kept"]["round_2/accepted"] is False  # worse than round 1: refused
    assert runs["kept"]["round_2/guard_reason"].startswith("macro AUROC") and \
        "< kept" in runs["kept"]["round_2/guard_reason"]
    assert runs["kept"]["val/macro_auroc"] == pytest.approx(runs["kept"]["round_1/val/macro_auroc"])
    with pytest.raises(ValueError, match="guard.against"):
        refine(_cfg(base, ptbxl_root, tmp_path / "bad", "guard.against=best"))


def test_refine_run_keeps_the_base_when_every_round_is_rejected(base, ptbxl_root, tmp_path,
                                                                monkeypatch):
    import ecgrisk.refine.refiners as rf

    def harmful(policy, ctx, cfg):
        with torch.no_grad():
            policy.model.head[-1].weight.neg_()
        return {"loss": 0.0}

    monkeypatch.setitem(rf.REFINERS, "dpo", harmful)
    monkeypatch.setattr("ecgrisk.conformal.MIN_GROUP", 8)  # groups of this small guard half count
    metrics = refine(_cfg(base, ptbxl_root, tmp_path / "run", "rounds=2",
                          "queries_per_round=8"))
    assert metrics["round_1/accepted"] is False and metrics["round_2/accepted"] is False
    assert metrics["rounds/accepted"] == 0
    assert metrics["report/macro_auroc"] == metrics["base/report/macro_auroc"]
    assert metrics["round_1/guard_reason"].startswith("macro AUROC")
    refined, original = Bundle.load(tmp_path / "run" / "model.pt"), Bundle.load(base[1])
    for k, v in refined.model.state_dict().items():
        torch.testing.assert_close(v, original.model.state_dict()[k], rtol=0, atol=0)
    assert refined.extra["refine"]["accepted_rounds"] == []
    # the review band refitted on the guard half (half the validation fold the base's was fitted on)
    band, base_band = refined.extra["review"], original.extra["review"]
    assert band["alpha"] == base_band["alpha"] and band["n"] == base_band["n"] // 2
    # ... within the groups the base's fine-tuning named (review_by: age bands, sex, device)
    assert {g.split("=")[0] for g in band["groups"]} == {"age", "sex", "device"}
    # no round kept: the refined model's reliability diagram is the base's, point for point
    curves = refined.extra["refine"]["reliability"]
    assert (tmp_path / "run" / "reliability.png").is_file()
    assert curves["base, test fold"] == curves["refined, test fold"]


def test_command_line_round_writes_the_run_directory(base, ptbxl_root, ptbxl_split_sizes, tmp_path,
                                                     monkeypatch):
    from ecgrisk.refine.app import main

    tmp, model = base
    out = tmp_path / "run"
    # the documented command line, run in-process (a subprocess would double the test's time)
    argv = ["ecgrisk-refine", "data=ptbxl", f"data.root={ptbxl_root}", f"base={model}",
            "feedback=simulated", "refine=dpo", "rounds=1", "queries_per_round=16",
            f"data.cache_dir={tmp / 'cache'}", f"output_dir={out}", "progress=false",
            "bootstrap=10", f"hydra.run.dir={tmp_path / 'hydra'}"]
    monkeypatch.setattr(sys, "argv", argv)
    main()

    with FeedbackStore(out / "feedback.db") as store:
        verdicts = store.verdicts()
    assert len(verdicts) == 16 and {v.annotator for v in verdicts} == {"sim-1"}
    queries = [json.loads(line) for line in (out / "queries" / "round_1.jsonl").open()]
    assert [q["ecg_id"] for q in queries] == [v.ecg_id for v in verdicts]

    refined, original = Bundle.load(out / "model.pt"), Bundle.load(model)
    assert refined.base == str(model.resolve()) and refined.version != original.version
    assert refined.version.startswith(original.version + "+refine.")
    assert refined.classes == CLASSES
    np.testing.assert_array_equal(refined.temperature, original.temperature)
    Bundle.load(out / "checkpoints" / "round_1.pt")

    m = json.loads((out / "metrics.json").read_text())
    for key in ("base/report/macro_auroc", "report/macro_auroc", "report/brier", "report/ece",
                "reward/pair_accuracy", "round_1/val/macro_auroc", "round_1/accepted",
                "round_1/reward/pair_accuracy", "round_1/refine/loss",
                "report/macro_auroc/lower"):
        assert key in m, key
    assert m["feedback/count"] == 16 and m["round_1/queries"] == 16
    sizes = ptbxl_split_sizes["superdiagnostic"]
    assert m["pool/records"] == sizes["val"] // 2 and m["report/records"] == sizes["test"]
    assert m["report/split"] == "test fold"
    assert m["pool/records"] + m["guard/records"] == sizes["val"]
    # 16 ECGs, 20 % held out by ECG -> 3 ECGs whose pairs score the reward model
    assert m["round_1/reward/heldout_pairs"] > 0 and 0.0 <= m["reward/pair_accuracy"] <= 1.0


def test_store_feedback_reads_judgements_imported_from_jsonl(base, ptbxl_root, prepared,
                                                              tmp_path):
    _, dm, _ = prepared
    val_ids, test_ids = dm.record_ids("val"), dm.record_ids("test")
    labels = dm.labels("val")
    records = [Verdict(ecg_id=rid, reading=dict(zip(CLASSES, labels[i].tolist(), strict=True)),
                       marks={c: "right" for c, y in zip(CLASSES, labels[i], strict=True) if y},
                       annotator="dr-a") for i, rid in enumerate(val_ids[:10])]
    records.append(Verdict(ecg_id=test_ids[0], reading={"NORM": 1}, marks={"NORM": "wrong"},
                           annotator="dr-a"))
    src = tmp_path / "batch.jsonl"
    src.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    with FeedbackStore(tmp_path / "real.db") as real:
        real.import_file(src)

    out = tmp_path / "run"
    metrics = refine(_cfg(base, ptbxl_root, out, "feedback=store",
                          f"feedback.store={tmp_path / 'real.db'}", "pool=val", "refine=pg",
                          "refine.algo=ppo", "refine.steps=3", "rounds=2",
                          "queries_per_round=4"))
    # round 1 copies the 10 judgements about validation ECGs; round 2 finds nothing new
    assert metrics["rounds/completed"] == 1 and "round_2/accepted" not in metrics
    assert metrics["feedback/count"] == 10 and metrics["feedback/skipped"] == 1
    with FeedbackStore(out / "feedback.db") as store:
        got = store.verdicts()
    assert sorted(r.content_key() for r in got) == sorted(r.content_key() for r in records[:10])
    assert "round_1/refine/clip_fraction" in metrics and "round_1/refine/kl" in metrics

    with pytest.raises(FileNotFoundError, match="no-such.db"):
        refine(_cfg(base, ptbxl_root, tmp_path / "run2", "feedback=store",
                    f"feedback.store={tmp_path / 'no-such.db'}"))
    # a store with nothing about this pool is an error, not a refined copy of the base
    with FeedbackStore(tmp_path / "other.db") as other:
        other.add_many(records[10:])
    with pytest.raises(ValueError, match=r"holds no judgements about the \d+ ECGs of this pool "
                                         r"\(1 are about other ECGs\)"):
        refine(_cfg(base, ptbxl_root, tmp_path / "run3", "feedback=store",
                    f"feedback.store={tmp_path / 'other.db'}", "pool=val"))

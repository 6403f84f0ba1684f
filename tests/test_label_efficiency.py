"""scripts/benchmark_label_efficiency.py on a tiny synthetic PTB-XL copy without its test fold (as
the full data here): fold-9 scores named as such, given encoders checked before anything
trains, finished runs reused on a rerun, and the targets computed as documented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from script_support import load_script

from ecgrisk.bundle import save_encoder
from ecgrisk.models import create_encoder


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark_label_efficiency")


@pytest.fixture(scope="module")
def work(ptbxl_no_test_fold, tmp_path_factory):
    """A synthetic PTB-XL whose database lists folds 1-9 only, and a fresh encoder file of the
    architecture the quick settings ask for (xresnet1d18, width 8)."""
    tmp, root = tmp_path_factory.mktemp("label_efficiency"), ptbxl_no_test_fold
    save_encoder(tmp / "contrastive.pt", create_encoder("xresnet1d18", base_channels=8))
    return tmp, root


def _argv(tmp: Path, root: Path, encoder: Path, runs: Path, *more: str) -> list[str]:
    return ["--root", str(root), "--quick", "--tasks", "superdiagnostic", "--objectives", "masked",
            "--encoder", f"contrastive={encoder}", "--fractions", "0.1", "1.0", "--seeds", "0",
            "--bootstrap", "10", "--batch-size", "32", "--cache-dir", str(tmp / "cache"),
            "--runs-dir", str(runs), "--out", str(tmp / "out"), "--name", "le", *more]


@pytest.fixture(scope="module")
def first(bench, work):
    tmp, root = work
    argv = _argv(tmp, root, tmp / "contrastive.pt", tmp / "runs")
    return bench.main(argv), argv


def _means(runs: list[dict]) -> dict[tuple, float]:
    groups: dict[tuple, list[float]] = {}
    for r in runs:
        groups.setdefault((r["init"], r["mode"], r["fraction"]), []).append(r["macro_auroc"])
    return {k: float(np.mean(v)) for k, v in groups.items()}


def test_every_run_is_scored_on_fold_9_and_the_tables_say_so(first, work):
    tmp, _ = work
    result, _ = first
    saved = json.loads((tmp / "out" / "le.json").read_text())
    # as text: a NaN (a bootstrap bound on a tiny split) is never == another NaN object
    assert json.dumps(saved["runs"], sort_keys=True) == json.dumps(result["runs"], sort_keys=True)
    task = saved["tasks"]["superdiagnostic"]
    assert task["split"] == "val" and task["fold"] == 9 and task["scored_on"].startswith("fold 9 (validation")
    assert saved["meta"]["inits"] == ["random", "masked", "contrastive"]
    assert [e["source"] for e in saved["encoders"]] == ["given", "pretrained here"]
    runs = saved["runs"]
    assert len(runs) == 2 * 2 * 3  # fractions x modes x inits, one seed
    assert {(r["init"], r["mode"], r["fraction"]) for r in runs} == {
        (i, m, f) for i in ("random", "masked", "contrastive") for m in ("linear", "full") for f in (0.1, 1.0)}
    for r in runs:
        assert r["split"] == "val" and r["fold"] == 9 and r["records"] > 0 and r["status"] == "trained"
        assert 0.0 <= r["lower"] <= r["macro_auroc"] <= r["upper"] <= 1.0
    small = [r["train_records"] for r in runs if r["fraction"] == 0.1]
    large = [r["train_records"] for r in runs if r["fraction"] == 1.0]
    assert max(small) < min(large)
    md = (tmp / "out" / "le.md").read_text()
    assert "## superdiagnostic: scored on fold 9 (validation; the epoch and the calibration were chosen on it)" in md
    assert "test fold" not in md.lower()
    assert (tmp / "out" / "le.png").stat().st_size > 10_000
    assert not list((tmp / "out").glob(".*tmp"))  # written atomically, no leftovers


def test_targets_follow_the_documented_formula_from_the_runs(first, work):
    tmp, _ = work
    saved = json.loads((tmp / "out" / "le.json").read_text())
    means = _means(saved["runs"])
    mid, low = saved["tasks"]["superdiagnostic"]["targets"]
    best = max(v for (init, _, frac), v in means.items() if init != "random" and frac == 0.1)
    ref = means[("random", "full", 1.0)]
    assert mid["best"]["macro_auroc"] == pytest.approx(best)
    assert mid["reference"]["macro_auroc"] == pytest.approx(ref)
    assert mid["threshold"] == pytest.approx(0.97 * ref)
    assert mid["ratio"] == pytest.approx(best / ref)
    assert mid["passed"] == (best >= 0.97 * ref)
    assert "passed" not in low  # fraction 0.01 was not run
    md = (tmp / "out" / "le.md").read_text()
    assert "Targets (fold 9 macro AUROC" in md
    line = next(x for x in md.splitlines() if x.startswith("- **10% vs random init on 100%**"))
    assert f"{best:.3f}" in line and f"{0.97 * ref:.3f}" in line
    assert line.endswith("**PASS**" if mid["passed"] else "**FAIL**")
    assert "not measured" in next(x for x in md.splitlines() if x.startswith("- **1%"))


def test_the_1_percent_target_compares_the_best_pretrained_with_the_best_random_init(bench):
    def row(init, mode, auroc):
        return {"init": init, "mode": mode, "fraction": 0.01, "macro_auroc": auroc, "ci_lower": auroc - 0.02,
                "ci_upper": auroc + 0.02, "seeds": 3}

    rows = [row("random", "linear", 0.70), row("random", "full", 0.60), row("masked", "linear", 0.74),
            row("cpc", "full", 0.76), row("cpc", "linear", 0.72)]
    low = bench.targets(rows)[1]
    assert (low["best"]["init"], low["best"]["mode"]) == ("cpc", "full")
    assert low["margin"] == pytest.approx(0.06) and low["passed"]  # over random linear, its best
    assert low["per_mode"]["linear"] == {"best": "masked", "margin": pytest.approx(0.04)}
    rows[1] = row("random", "full", 0.72)
    assert not bench.targets(rows)[1]["passed"]  # margin 0.04 over random full
    rows = [row("random", "linear", 0.65), row("random", "full", 0.70), row("cpc", "linear", 0.74),
            row("cpc", "full", 0.70)]
    low = bench.targets(rows)[1]  # a weak frozen random encoder is not the baseline
    assert (low["best"]["mode"], low["reference"]["mode"]) == ("linear", "full")
    assert low["margin"] == pytest.approx(0.04) and not low["passed"]
    assert low["per_mode"]["linear"]["margin"] == pytest.approx(0.09)


def test_a_rerun_with_the_same_runs_dir_reuses_every_run(bench, first, work, monkeypatch):
    tmp, _ = work
    result, argv = first

    def refuse(cfg):
        raise AssertionError("trained again")

    monkeypatch.setattr(bench, "finetune_train", refuse)
    monkeypatch.setattr(bench, "pretrain_train", refuse)
    again = bench.main(argv)
    assert [r["status"] for r in again["runs"]] == ["reused"] * len(result["runs"])
    assert [r["macro_auroc"] for r in again["runs"]] == [r["macro_auroc"] for r in result["runs"]]
    assert again["encoders"][1]["status"] == "reused"
    assert again["tasks"] == json.loads(json.dumps(result["tasks"]))


def test_a_runs_dir_made_with_other_settings_is_refused(bench, first, work, monkeypatch):
    tmp, root = work
    monkeypatch.setattr(bench, "finetune_train", lambda cfg: pytest.fail("trained into a foreign run"))
    argv = _argv(tmp, root, tmp / "contrastive.pt", tmp / "runs", "--finetune-epochs", "2")
    with pytest.raises(SystemExit, match="other settings.*trainer.max_epochs"):
        bench.main(argv)


@pytest.mark.parametrize("spec, names", [
    ({"name": "inception1d", "nb_filters": 8}, ("inception1d(nb_filters=8)", "xresnet1d18(")),
    ({"name": "xresnet1d18", "base_channels": 16}, ("base_channels=16", "base_channels=8")),
])
def test_an_encoder_of_another_architecture_fails_before_anything_trains(bench, work, tmp_path,
                                                                         monkeypatch, spec, names):
    tmp, root = work
    path = tmp_path / "other.pt"
    save_encoder(path, create_encoder(**spec))
    monkeypatch.setattr(bench, "finetune_train", lambda cfg: pytest.fail("fine-tuning started"))
    monkeypatch.setattr(bench, "pretrain_train", lambda cfg: pytest.fail("pretraining started"))
    with pytest.raises(SystemExit) as e:
        bench.main(_argv(tmp, root, path, tmp_path / "runs"))
    assert all(n in str(e.value) for n in names), str(e.value)
    assert not (tmp_path / "runs").exists()


def test_the_pooling_is_no_part_of_the_architecture_an_encoder_must_match(bench):
    spec = {"name": "xresnet1d18", "base_channels": 8}
    assert bench.architecture({**spec, "pooling": "stages"}) == bench.architecture(spec)
    assert bench.architecture({**spec, "base_channels": 16}) != bench.architecture(spec)


def test_inits_runs_only_the_named_ones_reusing_the_sweeps_runs(bench, first, work, monkeypatch):
    tmp, root = work
    result, _ = first
    monkeypatch.setattr(bench, "finetune_train", lambda cfg: pytest.fail("trained again"))
    monkeypatch.setattr(bench, "pretrain_train", lambda cfg: pytest.fail("trained again"))
    only = bench.main(_argv(tmp, root, tmp / "contrastive.pt", tmp / "runs", "--inits", "random",
                            "--name", "le-random"))
    assert {r["init"] for r in only["runs"]} == {"random"} and only["meta"]["inits"] == ["random"]
    want = {(r["mode"], r["fraction"]): r["macro_auroc"] for r in result["runs"] if r["init"] == "random"}
    assert {(r["mode"], r["fraction"]): r["macro_auroc"] for r in only["runs"]} == want
    with pytest.raises(SystemExit, match=r"--inits \['cpc'\]: not among"):
        bench.main(_argv(tmp, root, tmp / "contrastive.pt", tmp / "runs", "--inits", "cpc"))


def test_no_train_summarises_the_finished_runs_and_names_the_rest(bench, first, work, monkeypatch):
    tmp, root = work
    result, _ = first
    monkeypatch.setattr(bench, "finetune_train", lambda cfg: pytest.fail("--no-train trained"))
    monkeypatch.setattr(bench, "pretrain_train", lambda cfg: pytest.fail("--no-train trained"))
    argv = _argv(tmp, root, tmp / "contrastive.pt", tmp / "runs", "--seeds", "0", "1", "--no-train",
                 "--name", "le-so-far")
    so_far = bench.main(argv)
    assert [r["macro_auroc"] for r in so_far["runs"]] == [r["macro_auroc"] for r in result["runs"]]
    assert len(so_far["meta"]["missing"]) == len(result["runs"]) and all(
        m.endswith("-s1") for m in so_far["meta"]["missing"])
    md = (tmp / "out" / "le-so-far.md").read_text()
    assert f"Not finished, left out ({len(result['runs'])} of {2 * len(result['runs'])} runs" in md
    with pytest.raises(SystemExit, match="no finished fine-tuning run"):
        bench.main([*argv[:-2], "--name", "none", "--fractions", "0.5"])


@pytest.fixture
def earlier(bench, first, work, monkeypatch, tmp_path) -> Path:
    """The first benchmark's JSON where a fresh checkout would hold it, with training forbidden."""
    monkeypatch.setattr(bench, "finetune_train", lambda cfg: pytest.fail("trained again"))
    monkeypatch.setattr(bench, "pretrain_train", lambda cfg: pytest.fail("trained again"))
    path = tmp_path / "earlier.json"
    path.write_text((work[0] / "out" / "le.json").read_text())
    return path


def test_recorded_takes_runs_whose_directories_are_gone_from_an_earlier_json(bench, first, work,
                                                                             earlier, tmp_path):
    tmp, root = work
    result, _ = first
    masked = f"masked={tmp / 'runs' / 'pretrain-masked' / 'encoder.pt'}"  # the same encoder file
    argv = _argv(tmp, root, tmp / "contrastive.pt", tmp_path / "fresh-checkout", "--encoder",
                 masked, "--no-train", "--recorded", str(earlier), "--name", "le-recorded")
    again = bench.main(argv)
    assert {r["status"] for r in again["runs"]} == {"recorded in earlier.json"}
    assert _means(again["runs"]) == _means(result["runs"]) and not again["meta"]["missing"]
    assert json.loads(json.dumps(again["tasks"])) == json.loads(json.dumps(result["tasks"]))
    md = (tmp / "out" / "le-recorded.md").read_text()
    assert "Taken from earlier results (`--recorded`, their run directories gone): " \
           f"{len(result['runs'])} runs recorded in earlier.json." in md

    # another encoder under the same name is not the one those runs used: they are left out
    other = tmp_path / "other-contrastive.pt"
    save_encoder(other, create_encoder("xresnet1d18", base_channels=8))
    mixed = bench.main(_argv(tmp, root, other, tmp_path / "fresh-checkout", "--encoder", masked,
                             "--no-train", "--recorded", str(earlier), "--name", "le-other"))
    assert "contrastive" not in {r["init"] for r in mixed["runs"]}
    assert mixed["meta"]["missing"] and all("ft-contrastive-" in m for m in mixed["meta"]["missing"])
    with pytest.raises(SystemExit, match="made with other settings.*finetune_epochs"):
        bench.main([*argv, "--finetune-epochs", "2"])


def test_an_encoder_whose_file_is_gone_keeps_its_recorded_runs_and_trains_nothing(bench, first, work,
                                                                                 earlier, tmp_path):
    tmp, root = work
    result, _ = first
    # no --encoder masked=...: the masked encoder exists only as the earlier JSON's record of it
    again = bench.main(_argv(tmp, root, tmp / "contrastive.pt", tmp_path / "fresh-checkout",
                             "--objectives", "contrastive", "--inits", "masked", "--recorded",
                             str(earlier), "--fractions", "0.1", "0.5", "1.0", "--name", "le-gone"))
    before = {(r["mode"], r["fraction"]): r["macro_auroc"] for r in result["runs"] if r["init"] == "masked"}
    assert {(r["mode"], r["fraction"]): r["macro_auroc"] for r in again["runs"]} == before
    assert {r["status"] for r in again["runs"]} == {"recorded in earlier.json"}
    assert sorted(again["meta"]["missing"]) == [
        str(tmp_path / "fresh-checkout" / "superdiagnostic" / f"ft-masked-{m}-f0.5-s0") + " (encoder file not given)"
        for m in ("full", "linear")]
    [enc] = again["encoders"][1:]
    recorded = next(e for e in result["encoders"] if e["init"] == "masked")
    assert enc["source"] == "recorded in earlier.json" and enc["sha256"] == recorded["sha256"]
    assert f"- masked: recorded in earlier.json: `{recorded['encoder']}`" in (tmp / "out" / "le-gone.md").read_text()


def test_the_later_recorded_json_names_the_encoder_as_it_does_the_runs(bench, first, work, earlier,
                                                                        tmp_path):
    tmp, root = work
    older = json.loads(earlier.read_text())  # an earlier masked encoder, none of its runs kept
    for e in older["encoders"]:
        if e["init"] == "masked":
            e["sha256"] = "0" * 64
    older["runs"] = [r for r in older["runs"] if r["init"] != "masked"]
    (tmp_path / "older.json").write_text(json.dumps(older))

    def masked_runs(*recorded: Path) -> list[dict]:
        out = bench.main(_argv(tmp, root, tmp / "contrastive.pt", tmp_path / "fresh-checkout",
                               "--objectives", "contrastive", "--inits", "masked", "--no-train",
                               "--recorded", *map(str, recorded), "--name", "le-order"))
        return out["runs"]

    assert len(masked_runs(tmp_path / "older.json", earlier)) == sum(
        r["init"] == "masked" for r in first[0]["runs"])
    with pytest.raises(SystemExit, match="no finished fine-tuning run"):
        masked_runs(earlier, tmp_path / "older.json")


def test_discriminative_mode_slows_only_a_pretrained_encoder(bench, work):
    tmp, root = work
    runs = tmp / "runs-discriminative"
    argv = _argv(tmp, root, tmp / "contrastive.pt", runs, "--modes", "discriminative",
                 "--encoder-lr-mult", "0.25", "--fractions", "0.1", "--objectives", "contrastive",
                 "--name", "le-discriminative")
    result = bench.main(argv)
    assert [(r["init"], r["mode"]) for r in result["runs"]] == [("contrastive", "discriminative")]
    stamp = json.loads((runs / "superdiagnostic" / "ft-contrastive-discriminative-f0.1-s0"
                        / bench.STAMP).read_text())
    assert "finetune.mode=full" in stamp["overrides"]
    assert stamp["overrides"][-1] == "finetune.encoder_lr_mult=0.25"
    assert not (runs / "superdiagnostic" / "ft-random-discriminative-f0.1-s0").exists()
    assert result["meta"]["encoder_lr_mult"] == 0.25


def test_selftrained_mode_is_taught_by_the_discriminative_run_of_its_seed(bench, work):
    tmp, root = work
    runs = tmp / "runs-selftrained"
    argv = _argv(tmp, root, tmp / "contrastive.pt", runs, "--modes", "discriminative", "selftrained",
                 "--encoder-lr-mult", "0.25", "--fractions", "0.1", "1.0", "--objectives", "contrastive",
                 "--inits", "contrastive", "--name", "le-selftrained")
    result = bench.main(argv)
    # no random-init and no 100% selftrained runs: nothing is left out for a teacher to label
    assert [(r["mode"], r["fraction"]) for r in result["runs"]] == [
        ("discriminative", 0.1), ("selftrained", 0.1), ("discriminative", 1.0)]
    task = runs / "superdiagnostic"
    student, teacher = task / "ft-contrastive-selftrained-f0.1-s0", task / "ft-contrastive-discriminative-f0.1-s0"
    stamp = json.loads((student / bench.STAMP).read_text())
    assert "finetune.encoder_lr_mult=0.25" in stamp["overrides"]
    assert stamp["teacher_sha256"] == bench.file_sha256(teacher / "model.pt")
    m = json.loads((student / "metrics.json").read_text())
    assert m["train/teacher"] == str(teacher / "model.pt")
    assert m["train/records"] == json.loads((teacher / "metrics.json").read_text())["train/records"]
    selftrained = next(r for r in result["runs"] if r["mode"] == "selftrained")
    assert selftrained["train_records"] == m["train/records"]
    md = (tmp / "out" / "le-selftrained.md").read_text()
    assert "| selftrained | contrastive | 0.1 |" in md and "their teacher (the discriminative run" in md
    (teacher / "model.pt").unlink()  # a finished student keeps its result without its teacher
    again = bench.main(argv)
    assert [r["status"] for r in again["runs"]] == ["reused"] * 3 and not again["meta"]["missing"]


def test_a_selftrained_run_whose_teacher_is_missing_is_listed_not_trained(bench, work):
    tmp, root = work
    runs = tmp / "runs-no-teacher"
    argv = _argv(tmp, root, tmp / "contrastive.pt", runs, "--modes", "discriminative", "selftrained",
                 "--fractions", "0.1", "--objectives", "contrastive", "--inits", "contrastive",
                 "--name", "le-no-teacher")
    teacher = runs / "superdiagnostic" / "ft-contrastive-discriminative-f0.1-s0"
    bench.main([*argv, "--modes", "discriminative"])
    (teacher / "model.pt").unlink()  # its metrics stay: the run counts, but can teach nobody
    result = bench.main(argv)
    assert [(r["mode"], r["status"]) for r in result["runs"]] == [("discriminative", "reused")]
    assert result["meta"]["missing"] == [
        str(runs / "superdiagnostic" / "ft-contrastive-selftrained-f0.1-s0") + " (its teacher has not finished)"]

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from ecgrisk.bundle import Bundle
from ecgrisk.bundle_files import BundleError
from ecgrisk.config import compose
from ecgrisk.finetune.app import train
from ecgrisk.hardware import resolve_precision
from ecgrisk.overrides import check_overrides

SMALL_MODEL = ["model=xresnet1d18", "model.kwargs.base_channels=8"]
TINY = ["data.batch_size=32",
        "trainer.enable_progress_bar=false", "bootstrap=10", "early_stopping_patience=null"]


def _cfg(tmp_path, ptbxl_root, *extra, out="run", model=SMALL_MODEL):
    return compose("finetune", [f"data.root={ptbxl_root}", f"data.cache_dir={tmp_path / 'cache'}",
                                f"output_dir={tmp_path / out}", *model, *TINY, *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, ptbxl_root):
    tmp = tmp_path_factory.mktemp("ft")
    cfg = _cfg(tmp, ptbxl_root, "trainer.max_epochs=2")
    return tmp, train(cfg)


def test_run_directory_holds_everything(finished_run, ptbxl_split_sizes):
    tmp, metrics = finished_run
    sizes = ptbxl_split_sizes["superdiagnostic"]  # val 72, test 64 on the shared subset
    run = tmp / "run"
    for f in (".hydra/config.yaml", "metrics.json", "model.pt", "curves.png", "reliability.png",
              "predictions/test.csv", "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (run / f).is_file(), f
    saved = json.loads((run / "metrics.json").read_text())
    for k in ("val/macro_auroc", "test/macro_auroc", "test/macro_auprc", "test/fmax", "test/brier",
              "test/ece", "test/auroc/NORM", "test/macro_auroc/lower", "test/macro_auroc/upper",
              "train/wall_s", "train/samples_per_s"):
        assert k in saved, k
    assert saved["test/records"] == sizes["test"] and saved["val/records"] == sizes["val"]
    assert (saved["train/folds"], saved["val/folds"], saved["test/folds"]) == ([1, 2, 3, 4, 5, 6, 7, 8], [9], [10])
    assert 0.0 <= saved["test/macro_auroc"] <= 1.0
    assert saved["test/macro_auroc/lower"] <= saved["test/macro_auroc"] <= saved["test/macro_auroc/upper"]
    preds = pd.read_csv(run / "predictions" / "test.csv")
    assert len(preds) == sizes["test"] and preds["record"].is_unique
    assert {"prob/NORM", "true/NORM"} <= set(preds.columns)
    # the review band, measured on validation halves it was not fitted on
    assert saved["val/review/alpha"] == 0.1 and saved["val/review/records"] > 0
    assert 0.0 <= saved["val/review/unreviewed_misread"] <= saved["val/review/misread"]
    extra = Bundle.load(run / "model.pt").extra
    assert extra["review"]["alpha"] == 0.1 and extra["review"]["n"] == sizes["val"]
    assert 0.0 <= extra["review"]["low"] <= 0.5 and "conformal" not in extra
    assert {"uncalibrated, test", "calibrated, test"} <= set(extra["reliability"])


def test_bundle_is_weights_only_and_predicts_like_the_checkpoint(finished_run):
    tmp, metrics = finished_run
    run = tmp / "run"
    raw = torch.load(run / "model.pt", weights_only=True)
    assert raw["meta"]["classes"] == ["CD", "HYP", "MI", "NORM", "STTC"]
    bundle = Bundle.load(run / "model.pt")
    best = metrics["train/best_checkpoint"]
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]  # ckpts too
    model_state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    for k, v in bundle.model.state_dict().items():
        torch.testing.assert_close(v, model_state[k], rtol=0, atol=0)
    assert len(bundle.temperature) == 5 and (bundle.temperature > 0).all()
    assert bundle.preprocessing.fs == 100 and bundle.window_s == 2.5 and bundle.stride_s == 1.25


def test_altered_bundle_is_refused(finished_run, tmp_path):
    run = finished_run[0] / "run"
    obj = torch.load(run / "model.pt", weights_only=True)
    k = next(iter(obj["state_dict"]))
    obj["state_dict"][k] = obj["state_dict"][k] + 1
    torch.save(obj, tmp_path / "tensors.pt")
    with pytest.raises(BundleError, match="altered"):
        Bundle.load(tmp_path / "tensors.pt")
    obj = torch.load(run / "model.pt", weights_only=True)
    obj["meta"]["classes"] = ["NORM", "CD", "HYP", "MI", "STTC"]
    torch.save(obj, tmp_path / "meta.pt")
    with pytest.raises(BundleError, match="altered"):
        Bundle.load(tmp_path / "meta.pt")


class _NotWeightsOnly:
    pass


def test_bundle_that_needs_pickle_is_refused(tmp_path):
    torch.save({"meta": {}, "state_dict": {}, "x": _NotWeightsOnly()}, tmp_path / "evil.pt")
    with pytest.raises(BundleError, match="weights_only"):
        Bundle.load(tmp_path / "evil.pt")


class _Interrupt(L.Callback):
    """Stops training after two epochs, as a killed job would leave it (last.ckpt at epoch 2),
    noting at each epoch's start which epoch the newest last.ckpt holds (None: none yet)."""

    def __init__(self):
        self.last_seen = []

    def on_train_epoch_start(self, trainer, pl_module):
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        saved = torch.load(last, weights_only=True)["epoch"] if last.is_file() else None
        self.last_seen.append(saved)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            trainer.should_stop = True


def test_resume_continues_from_checkpoint(tmp_path, ptbxl_root, monkeypatch):
    import ecgrisk.finetune.app as ft

    make, stop = ft.make_trainer, _Interrupt()
    monkeypatch.setattr(ft, "make_trainer", lambda cfg, out, cbs: make(cfg, out, cbs + [stop]))
    # validation only after the third epoch: the first run stops before it ever validates, so
    # only the every-epoch last.ckpt can carry it on
    common = ["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=3"]
    first = train(_cfg(tmp_path, ptbxl_root, *common, out="first"))
    assert first["train/epochs"] == 2
    # written after every epoch while training runs, not only when it ends
    assert stop.last_seen == [None, 0]  # at epoch 1's start: epoch 0, just finished
    monkeypatch.setattr(ft, "make_trainer", make)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    # saved at the end of epoch 1 (the second): two epochs done, none validated
    assert torch.load(last, weights_only=True)["epoch"] == 1
    metrics = train(_cfg(tmp_path, ptbxl_root, *common, f"resume={last}", out="resumed"))
    # the third epoch only, on top of the restored two (optimizer and one-cycle state included)
    log = pd.read_csv(tmp_path / "resumed" / "logs" / "metrics.csv")
    trained = log.dropna(subset=["train/loss_epoch"])["epoch"].astype(int)
    assert sorted(trained.unique()) == [2]
    assert metrics["train/epochs"] == 3
    # the training time counts the first run's two epochs too, as its checkpoint recorded them
    ckpt_clock = torch.load(last, weights_only=True)["callbacks"]["ResumeState"]["wall_s"]
    assert 0 < ckpt_clock <= first["train/wall_s"]
    assert metrics["train/resumed_wall_s"] == pytest.approx(ckpt_clock)
    assert metrics["train/wall_s"] > ckpt_clock
    assert first["train/resumed_wall_s"] == 0.0


def test_resume_into_the_same_run_directory_keeps_the_logged_history(tmp_path, ptbxl_root,
                                                                    monkeypatch):
    import ecgrisk.finetune.app as ft
    from ecgrisk.runs import logged_metrics

    make = ft.make_trainer
    monkeypatch.setattr(ft, "make_trainer", lambda cfg, out, cbs: make(cfg, out, cbs + [_Interrupt()]))
    train(_cfg(tmp_path, ptbxl_root, "trainer.max_epochs=3"))
    monkeypatch.setattr(ft, "make_trainer", make)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    train(_cfg(tmp_path, ptbxl_root, "trainer.max_epochs=3", f"resume={last}"))  # same output_dir
    log = logged_metrics(tmp_path / "run" / "logs")
    trained = log.dropna(subset=["train/loss_epoch"])["epoch"].astype(int)
    assert sorted(trained.unique()) == [0, 1, 2]  # the killed run's epochs are still there
    assert (tmp_path / "run" / "logs" / "history-0.csv").is_file()


def test_a_resumed_run_that_logged_nothing_new_keeps_its_log_as_metrics_csv(tmp_path):
    # found in a walkthrough: resumed after its last epoch (stopped in its final test), a run
    # set its log aside as history-0.csv and ended without a logs/metrics.csv
    from ecgrisk.runs import logged_metrics, settle_logs

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "history-0.csv").write_text("epoch,train/loss_epoch\n0,1.0\n")
    (logs / "history-1.csv").write_text("epoch,train/loss_epoch\n1,0.5\n")
    settle_logs(logs)
    assert sorted(f.name for f in logs.iterdir()) == ["history-0.csv", "metrics.csv"]
    assert logged_metrics(logs)["epoch"].tolist() == [0, 1]
    settle_logs(logs)  # a run that logged: nothing moves
    assert sorted(f.name for f in logs.iterdir()) == ["history-0.csv", "metrics.csv"]


def test_override_changes_what_runs(tmp_path, ptbxl_root):
    cfg = _cfg(tmp_path, ptbxl_root, "data.task=rhythm", "trainer.fast_dev_run=true",
               model=["model=inception1d", "model.kwargs.depth=3", "model.kwargs.nb_filters=8"])
    assert cfg.model.name == "inception1d" and cfg.data.task == "rhythm"
    metrics = train(cfg)
    bundle = Bundle.load(tmp_path / "run" / "model.pt")
    assert bundle.model.encoder.spec["name"] == "inception1d"
    assert "SR" in bundle.classes and "NORM" not in bundle.classes
    assert metrics["test/n_classes"] == len(bundle.classes)


def test_linear_probe_keeps_encoder_frozen(tmp_path, ptbxl_root):
    from ecgrisk.finetune.app import build_classifier
    from ecgrisk.finetune.module import ClassifierModule

    cfg = _cfg(tmp_path, ptbxl_root)
    module = ClassifierModule(build_classifier(cfg.model, 5), mode="linear")
    assert not any(p.requires_grad for p in module.model.encoder.parameters())
    assert all(p.requires_grad for p in module.model.head.parameters())
    partial = ClassifierModule(build_classifier(cfg.model, 5), mode="partial", partial_blocks=1)
    flags = [p.requires_grad for p in partial.model.encoder.parameters()]
    assert any(flags) and not all(flags)


@pytest.mark.slow
def test_ddp_two_cpu_processes_gather_the_whole_evaluation_set(tmp_path, ptbxl_root,
                                                              ptbxl_split_sizes):
    """Lightning DDP over 2 gloo CPU processes: both ranks train, metrics cover every record."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "ecgrisk.finetune", f"data.root={ptbxl_root}",
           f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={out}", *SMALL_MODEL, *TINY,
           "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2
    per_rank = m["train/samples_per_rank"]
    assert len(per_rank) == 2 and all(n > 0 for n in per_rank)
    n_test = ptbxl_split_sizes["superdiagnostic"]["test"]
    assert m["test/records"] == n_test and m["test/windows"] == n_test * 7
    preds = pd.read_csv(out / "predictions" / "test.csv")
    assert len(preds) == n_test and preds["record"].is_unique
    assert np.isfinite(preds.filter(like="prob/").to_numpy()).all()


@pytest.mark.parametrize("logger,module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_tensorboard_and_mlflow_loggers_by_config(tmp_path, ptbxl_root, logger, module, monkeypatch):
    pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # mlflow's default store is ./mlflow.db
    cfg = _cfg(tmp_path, ptbxl_root, f"logger={logger}", "trainer.max_epochs=1",
               "+trainer.limit_train_batches=2")
    train(cfg)
    if logger == "tensorboard":
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    else:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs = mlflow.search_runs(experiment_names=["ecgrisk"])
        assert len(runs) == 1 and runs["metrics.val/macro_auroc"].notna().all()
    assert (tmp_path / "run" / "logs" / "metrics.csv").is_file()  # CSV is always kept


def test_partial_blocks_out_of_range_is_refused(tmp_path, ptbxl_root):
    from ecgrisk.finetune.app import build_classifier
    from ecgrisk.finetune.module import ClassifierModule

    cfg = _cfg(tmp_path, ptbxl_root)
    for n in (0, 99):
        with pytest.raises(ValueError, match="partial_blocks"):
            ClassifierModule(build_classifier(cfg.model, 5), mode="partial", partial_blocks=n)


def test_scoring_reproduces_the_runs_own_calibrated_predictions(finished_run, ptbxl_root):
    """Scoring a test-fold record gives the probabilities fine-tuning wrote for it: same
    windows, same autocast (the bundle's precision), same calibration."""
    from ecgrisk.data.ptbxl import PTBXL
    from ecgrisk.io import read_ecg
    from ecgrisk.scoring.predict import predict_proba

    tmp, bundle_metrics = finished_run
    bundle = Bundle.load(tmp / "run" / "model.pt")
    # the default trainer's (precision auto: bf16-mixed where bf16 is native), stored in the bundle
    assert bundle.precision == resolve_precision("auto") == bundle_metrics["train/precision"]
    preds = pd.read_csv(tmp / "run" / "predictions" / "test.csv", dtype={"record": str}).head(16)
    path = dict(zip(PTBXL(ptbxl_root).record_ids, PTBXL(ptbxl_root).paths, strict=True))
    for _, row in preds.iterrows():
        ecg = read_ecg(path[str(row["record"])])
        got = predict_proba(bundle, ecg.signal, ecg.fs)
        want = [row[f"prob/{c}"] for c in bundle.classes]
        # exact: in fp32 these differ by up to 0.012 (a median 0.003) from what was calibrated
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_every_stage_pooling_trains_a_bundle_that_scores_as_the_run_did(tmp_path, ptbxl_root):
    from ecgrisk.data.ptbxl import PTBXL
    from ecgrisk.io import read_ecg
    from ecgrisk.scoring.predict import predict_proba

    train(_cfg(tmp_path, ptbxl_root, "trainer.fast_dev_run=true", "model.kwargs.pooling=stages",
               "model.head=linear", "finetune.aggregation=mean"))
    bundle = Bundle.load(tmp_path / "run" / "model.pt")
    encoder = bundle.model.encoder
    assert encoder.spec["pooling"] == "stages"
    assert encoder.embed_dim == 2 * 4 * 8 == bundle.model.head[-1].in_features
    preds = pd.read_csv(tmp_path / "run" / "predictions" / "test.csv", dtype={"record": str}).head(4)
    path = dict(zip(PTBXL(ptbxl_root).record_ids, PTBXL(ptbxl_root).paths, strict=True))
    for _, row in preds.iterrows():
        ecg = read_ecg(path[str(row["record"])])
        np.testing.assert_allclose(predict_proba(bundle, ecg.signal, ecg.fs),
                                   [row[f"prob/{c}"] for c in bundle.classes], rtol=0, atol=1e-6)


def test_review_band_is_fitted_within_the_review_by_groups(tmp_path, ptbxl_root, monkeypatch,
                                                          caplog):
    """The bundle's band is fit_review's with the validation records' sex and device groups
    read from the database by hand; an attribute the records lack is left out, with a warning."""
    import ecgrisk.conformal as conformal

    monkeypatch.setattr(conformal, "MIN_GROUP", 8)  # this validation fold is small
    with caplog.at_level(logging.WARNING, logger="ecgrisk.groups"):
        metrics = train(_cfg(tmp_path, ptbxl_root, "trainer.max_epochs=1",
                             "review_by=[sex,height,device]"))
    assert "review_by 'height': ptbxl records carry ['age', 'device', 'sex', 'site']" in caplog.text
    preds = pd.read_csv(tmp_path / "run" / "predictions" / "val.csv")
    y, p = preds.filter(like="true/").to_numpy(), preds.filter(like="prob/").to_numpy()
    meta = pd.read_csv(ptbxl_root / "ptbxl_database.csv", index_col="ecg_id").loc[preds["record"]]
    groups = {"sex": meta["sex"].map({0: "male", 1: "female"}).to_numpy(),
              "device": meta["device"].str.strip().to_numpy()}
    want = conformal.fit_review(y, p, 0.1, groups)
    band = Bundle.load(tmp_path / "run" / "model.pt").extra["review"]
    assert band["groups"] == want.groups and any(g.startswith("device=") for g in band["groups"])
    assert band["low"] == pytest.approx(want.low)
    assert band["low"] <= conformal.fit_review(y, p, 0.1).low  # the widest band wins
    worst, share = metrics["val/review/worst_group"]
    assert metrics["val/review/by_group"][worst] == share == max(metrics["val/review/by_group"].values())


@pytest.mark.parametrize("app,override,said", [
    ("finetune", "finetune.lr=-1", "finetune.lr=-1: expected a positive number"),
    ("finetune", "trainer.max_epochs=abc", "trainer.max_epochs='abc': expected a positive whole number"),
    ("pretrain", "data.batch_size=0", "data.batch_size=0: expected a positive whole number"),
    ("refine", "rounds=1.5", "rounds=1.5: expected a positive whole number"),
    # found in a walkthrough: these two came after the data loaded, the second after the run
    # directory had its own feedback.db
    ("refine", "pool=folder", "pool=folder has no labels for a simulated cardiologist"),
    ("refine", "feedback=store feedback.store=/no/such.db", "feedback.store=/no/such.db: no such feedback store"),
    ("refine", "pool=folder feedback=store feedback.store=sqlite:///never.db", "pool=folder needs pool.root=PATH"),
    ("refine", "pool=folder pool.root=/no/such feedback=store feedback.store=sqlite:///never.db",
     "pool.root=/no/such: no such file, folder or record"),
])
def test_a_config_that_cannot_train_is_refused_before_any_work(tmp_path, app, override, said):
    # a negative learning rate trained to chance without a word; a word for a number failed
    # deep in Lightning without naming its key
    from ecgrisk.pretrain.app import train as pretrain
    from ecgrisk.refine.app import refine

    run = {"finetune": train, "pretrain": pretrain, "refine": refine}[app]
    extra = ["base=never-loaded.pt"] if app == "refine" else []
    with pytest.raises((ValueError, FileNotFoundError), match=said.replace("(", r"\(")):
        run(compose(app, [*override.split(), f"output_dir={tmp_path / 'run'}", *extra]))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("app,overrides,said", [
    ("finetune", ["finetune.weight_decay=abc"],
     "finetune.weight_decay='abc': expected a number (default: 0.01)"),
    ("finetune", ["data.crop_s=abc"], "data.crop_s='abc': expected a number (default: 2.5)"),
    ("finetune", ["finetune.pos_weight=1"], "finetune.pos_weight=1: expected true or false (default: False)"),
    ("finetune", ["data.train_folds=3"], "data.train_folds=3: expected a list, e.g. [a,b] (default: [1, 2, 3, 4, 5, 6, 7, 8])"),
    ("refine", ["reward.epochs=abc"], "reward.epochs='abc': expected a whole number (default: 100)"),
    ("pretrain", ["ssl=cpc", "ssl.steps=2.5"], "ssl.steps=2.5: expected a whole number (default: 4)"),
    # every job of a sweep, before the first runs (found in a walkthrough: job 0 trained first)
    ("finetune", ["finetune.lr=0.01,fast"], "finetune.lr='fast': expected a number (default: 0.01)"),
    ("finetune", ["data.taks=rhythm"],
     "data.taks=rhythm: no key 'data.taks' in this command's config; did you mean data.task?"),
    ("finetune", ["+data.taks=rhythm"],  # Hydra's own hint, which then trained on the default task
     "+data.taks=rhythm: the config has no 'data.taks', and nothing would read it; did you mean data.task?"),
    ("finetune", ["model=xresnet1d5"], "model=xresnet1d5: no such model; one of hybrid, inception1d, s4, "
     "vit1d, xresnet1d101, xresnet1d18, xresnet1d50 (did you mean xresnet1d50?)"),
    ("finetune", ["ssl=contrastive"],
     "ssl=contrastive: this command has no config group 'ssl' (its groups: data, logger, model, trainer)"),
    ("finetune", ["model=xresnet1d18,vit1d", "model.kwargs.base_channels=8"],
     "model.kwargs.base_channels=8: no key 'model.kwargs.base_channels' in this command's config "
     "(`--help` lists them) (with model=vit1d)"),
])
def test_an_override_the_config_cannot_take_is_refused_naming_it(app, overrides, said):
    with pytest.raises(ValueError) as err:
        check_overrides(app, overrides)
    assert str(err.value) == said


@pytest.mark.parametrize("overrides", [
    ["finetune.lr=3e-3", "data.train_fraction=1", "early_stopping_patience=null"],  # int for float; null
    ["trainer.devices=auto", "model=xresnet1d18", "model.kwargs.base_channels=32"],  # Lightning's own kinds; a group
    ["review_by=[]", "data.root=/data/ptb-xl", "+trainer.accumulate_grad_batches=2", "~risk_bands"],
    ["seed=0,1,2", "model=xresnet1d18,xresnet1d50", "finetune.lr=range(1,3)", "data.crop_s=${data.window_s}"],
    ["hydra.run.dir=x", "'a b'=1"],  # Hydra's own keys, and a syntax Hydra itself explains
])
def test_overrides_the_config_can_take_pass(overrides):
    check_overrides("finetune", overrides)


def test_help_lists_the_commands_own_config_groups():
    # found in a walkthrough: Hydra's --help offered ssl, pool and refine to ecgrisk-finetune
    from ecgrisk.overrides import help_text

    text = help_text("finetune", ["model=vit1d"])
    groups = text.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert [ln.split(":")[0] for ln in groups.splitlines() if ":" in ln] == ["data", "logger", "model", "trainer"]
    assert text.startswith("ecgrisk-finetune: Fine-tune") and "name: vit1d" in text
    assert "hydra:" not in text.split("== Config ==")[1]


def test_the_command_says_what_is_wrong_in_one_line(tmp_path):
    cmd = [sys.executable, "-m", "ecgrisk.finetune.app", "finetune.lr=-1", f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "ecgrisk-finetune: error: finetune.lr=-1: expected a positive number" in proc.stderr
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr  # where it was raised, on request
    # a run stopped so leaves no directory behind to pass for the newest run (walkthrough)
    missing = subprocess.run(cmd[:3] + ["model.pretrained=no-such-encoder",
                                        f"hydra.run.dir={tmp_path / 'runs' / 'x'}"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert missing.returncode == 2 and "no-such-encoder" in missing.stderr, missing.stderr
    assert (tmp_path / "runs").is_dir() and not (tmp_path / "runs" / "x").exists()
    # a misspelled key: one line, before Hydra's several (found in a walkthrough)
    typo = subprocess.run(cmd[:3] + ["finetune.lrr=1"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert typo.returncode == 2 and typo.stderr == (
        "ecgrisk-finetune: error: finetune.lrr=1: no key 'finetune.lrr' in this command's config; "
        "did you mean finetune.lr?\n")
    # what Hydra's parser refuses, Hydra explains; still the user's mistake: exit 2
    syntax = subprocess.run(cmd[:3] + ["'a b'=1"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert syntax.returncode == 2 and "override_grammar" in syntax.stderr, syntax.stderr


def test_a_job_of_a_sweep_that_fails_on_a_mistake_fails_alone(tmp_path):
    # found in a walkthrough: the first job's exit 2 ended the sweep before the second ran
    cmd = [sys.executable, "-m", "ecgrisk.finetune.app", "-m", "data=synthetic", "data.n_records=40",
           "model=xresnet1d18", "model.kwargs.base_channels=8", "trainer.max_epochs=1", "bootstrap=0",
           "trainer.enable_progress_bar=false", "finetune.lr=-1,0.01", f"hydra.sweep.dir={tmp_path / 's'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = "ecgrisk-finetune: error: finetune.lr=-1: expected a positive number"
    assert proc.stderr.count(line) == 2  # when the job failed, and again at the end beside its overrides
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "s" / "1" / "model.pt").is_file()
